"""`mmfusion eval --model CKPT_OR_BUNDLE --data DIR [--split test] [--json FILE]`: tables T1-T9.

Reliability diagrams (T6) are written next to the report (the folder of --json, else of --markdown, else
--figures); T8 reads the real recordings in --real-data (default ../shared/data when present)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint.pt or a bundle folder holding one")
    p.add_argument("--data", required=True, help="dataset folder written by `mmfusion sim dataset`")
    p.add_argument("--split", default="test", help="split to evaluate (test, heldout, val, train)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--markdown", help="also write the markdown tables here")
    p.add_argument("--upper-bound", help="checkpoint trained with --supervised-upper-bound (T2 ratio)")
    p.add_argument("--real-audio", help="folder of UrbanSound8K clips + labels.csv for real-audio zero-shot")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate only the first shards up to this many frames")
    p.add_argument("--text-cache", default=None, help="folder for the text-embedding cache")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--figures", help="folder for the reliability diagrams (default: next to --json / --markdown)")
    p.add_argument("--real-data", help="folder of real recordings for familiarity (T8; default ../shared/data)")
    p.add_argument("--tables", nargs="+", default=["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"],
                   help="tables to compute (default all)")


def run(args) -> int:
    from mmfusion_ros.train.data import DatasetError
    from mmfusion_ros.train.evaluate import Evaluator, to_markdown, write_json

    try:
        ev = Evaluator(args.model, text_cache=args.text_cache, threads=args.threads)
        figures = args.figures or (Path(args.json).parent if args.json else Path(args.markdown).parent if args.markdown else None)
        res = ev.run(args.data, args.split, upper_bound=args.upper_bound, max_samples=args.max_samples,
                     figures_dir=figures, real_data=args.real_data, tables=[t.upper() for t in args.tables],
                     log=lambda m: print(m, file=sys.stderr))
        if args.real_audio:
            if Path(args.real_audio, "labels.csv").is_file():
                res["real_audio"] = ev.real_audio(args.real_audio)
            else:
                print(f"warning: no labels.csv in {args.real_audio}; real-audio table skipped", file=sys.stderr)
    except (FileNotFoundError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = to_markdown(res)
    print(md)
    if args.json:
        write_json(res, args.json)
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0
