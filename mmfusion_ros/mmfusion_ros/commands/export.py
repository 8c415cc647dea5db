"""`mmfusion export --model CKPT --out DIR`: checkpoint -> ONNX parts + manifest.json + prompts.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint.pt (or a folder holding one); required unless --text-encoder")
    p.add_argument("--out", help="bundle folder to write (created); with --text-encoder: where the text encoder goes")
    p.add_argument("--thresholds", default=None, help="JSON file {event_type: threshold} (default: from the checkpoint, else 0.5)")
    p.add_argument("--text-cache", default=None, help="folder for the prompt text-embedding cache")
    p.add_argument("--text-encoder", action="store_true",
                   help="export all-MiniLM-L6-v2 to ONNX for the torch-free TextEncoder instead "
                        "(--out default ~/.cache/mmfusion_ros/text_encoder)")
    p.add_argument("--force", action="store_true", help="with --text-encoder: re-export even when present")
    p.add_argument("--familiarity-data", default=None, metavar="DATASET",
                   help="simulator dataset whose train split (bank) and val split (threshold) the familiarity "
                        "statistics are fitted on (default: the statistics the checkpoint's training fitted)")


def run(args) -> int:
    # --- text encoder branch (runtime engineer; logic in model/text_export.py) ---
    if getattr(args, "text_encoder", False):
        from mmfusion_ros.model.text_export import run_text_export

        return run_text_export(args.out, force=args.force)
    if not args.model or not args.out:
        print("error: --model and --out are required (or use --text-encoder)", file=sys.stderr)
        return 2
    from mmfusion_ros.model.export import export_bundle

    thr = None
    if args.thresholds:
        try:
            thr = json.loads(Path(args.thresholds).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: cannot read --thresholds {args.thresholds}: {e}", file=sys.stderr)
            return 2
    try:
        man = export_bundle(args.model, args.out, event_thresholds=thr, text_cache_dir=args.text_cache)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.familiarity_data:
        from mmfusion_ros.train.data import DatasetError, load_split
        from mmfusion_ros.train.familiarity import fit_from_splits, write_into_bundle

        try:
            spec = fit_from_splits(load_split(args.familiarity_data, "train"), load_split(args.familiarity_data, "val"),
                                   args.out, source=f"{args.familiarity_data}: train (bank), val (threshold)")
        except (DatasetError, ValueError) as e:
            print(f"error: --familiarity-data: {e}", file=sys.stderr)
            return 2
        write_into_bundle(args.out, spec)
        man["familiarity"] = spec
    fam = "familiarity statistics" if man.get("familiarity") else "NO familiarity statistics (not assessed at run time)"
    print(f"wrote bundle {args.out}: {len(man['parts'])} ONNX parts (opset {man['onnx_opset']}), manifest.json, "
          f"prompts.json, {fam}")
    return 0
