"""`mmfusion export --model CKPT --out DIR`: checkpoint -> ONNX parts + manifest.json + prompts.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint.pt (or a folder holding one); required unless --text-encoder")
    p.add_argument("--out", help="bundle folder to write (created); with --text-encoder: where the text encoder goes")
    p.add_argument("--thresholds", default=None, help="JSON file {event_type: threshold} (default: from the checkpoint, else 0.5)")
    p.add_argument("--text-cache", default=None, help="folder for the prompt text-embedding cache")
    p.add_argument("--text-encoder", action="store_true",
                   help="export all-MiniLM-L6-v2 to ONNX for the torch-free TextEncoder instead "
                        "(--out default ~/.cache/mmfusion_ros/text_encoder)")
    p.add_argument("--force", action="store_true", help="with --text-encoder: re-export even when present")
    p.add_argument("--label-orthogonal", action="store_true",
                   help="first rewrite the checkpoint (into OUT) so that its fusion's attention output is orthogonal to "
                        "the default class prompts' span: the fused embedding's zero-shot labels become the skill-weighted "
                        "mean's (model/fusion.py; needs a fixed-prior residual fusion)")
    p.add_argument("--familiarity-data", default=None, metavar="DATASET",
                   help="simulator dataset whose train split (bank) and val split (threshold) the familiarity "
                        "statistics are fitted on (default: the statistics the checkpoint's training fitted)")


def run(args) -> int:
    # --- text encoder branch (runtime engineer; export in model/text_export.py) ---
    if getattr(args, "text_encoder", False):
        return _run_text_export(args.out, force=args.force)
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
        src = args.model
        if args.label_orthogonal:
            from mmfusion_ros.model.export import label_orthogonal_checkpoint

            src = label_orthogonal_checkpoint(args.model, args.out, text_cache_dir=args.text_cache)
            print(f"wrote {src}: attention output orthogonal to the default prompts' span")
        man = export_bundle(src, args.out, event_thresholds=thr, text_cache_dir=args.text_cache)
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


def _run_text_export(out_dir: Optional[str] = None, force: bool = False) -> int:
    """`mmfusion export --text-encoder [--out DIR] [--force]`: export (model/), then check the runtime's
    TextEncoder (runtime/) against sentence-transformers: here, the layer that may import both."""
    from mmfusion_ros.model.text_export import META_FILE, TEXT_ENCODER_NAME, export_text_encoder

    try:
        out = export_text_encoder(out_dir, force=force)
    except (RuntimeError, OSError) as e:
        print(f"error: text encoder export failed: {e}", file=sys.stderr)
        return 1
    from mmfusion_ros.runtime.text_encoder import TextEncoder

    meta = json.loads((out / META_FILE).read_text())
    emb = TextEncoder(out)
    ids = np.asarray(meta["check_ids"], np.int64)  # (2, 5)
    (got,) = emb.session.run(["embedding"], {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})
    err = float(np.abs(got[:, :8] - np.asarray(meta["check_embedding_head"])).max())
    if err > 1e-4:
        print(f"error: exported text encoder differs from torch by {err:.2e}", file=sys.stderr)
        return 1
    print(f"text encoder {TEXT_ENCODER_NAME} ready in {out} (ONNX + tokenizer.json; check diff {err:.1e})")
    return 0
