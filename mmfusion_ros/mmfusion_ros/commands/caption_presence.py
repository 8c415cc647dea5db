"""`mmfusion caption-presence --model BUNDLE --data DS [--tune-data DS2:val]`: fit the bundle's caption presence probe.

Embeds DS's train split with the bundle's encoders, fits a per-class presence probe on it (modality
dropout, observable truth), chooses how the probe re-ranks the nearest caption-memory entries on DS's val
split (pooled with --tune-data), and writes BUNDLE/caption_presence.npz plus manifest.json "caption_presence" (train/caption_presence.py).
Run `mmfusion calibrate` after it: the caption confidences are calibrated on the captions it picks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder (manifest.json + checkpoint.pt + caption_memory.npz)")
    p.add_argument("--data", required=True, help="dataset folder written by `mmfusion sim dataset`")
    p.add_argument("--train-split", default="train", help="split the probe is fitted on (default train)")
    p.add_argument("--tune-split", default="val", help="split of --data its re-ranking is chosen on (default val)")
    p.add_argument("--tune-data", nargs="*", default=[],
                   help="more tuning frames: DIR:SPLIT of other datasets, pooled with --data's --tune-split")
    p.add_argument("--max-samples", type=int, default=0, help="use only the first shards up to this many frames per split")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe's initialisation and modality dropout")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--dry-run", action="store_true", help="fit and print, leave the bundle as it is")


def run(args) -> int:
    from mmfusion_ros.train import caption_presence as P
    from mmfusion_ros.train.data import DatasetError, load_split, read_manifest
    from mmfusion_ros.train.evaluate import Evaluator

    bundle = Path(args.model)
    if not (bundle / "manifest.json").is_file():
        print(f"error: {bundle} is not a bundle folder (no manifest.json)", file=sys.stderr)
        return 2
    if args.train_split == args.tune_split:
        print("error: --train-split and --tune-split must differ (the knobs are chosen on unseen frames)", file=sys.stderr)
        return 2
    try:
        ev = Evaluator(bundle, threads=args.threads)
        train = load_split(args.data, args.train_split, args.max_samples)
        tune_sets = [(str(args.data), args.tune_split)]
        for spec in args.tune_data:
            data, sep, split = spec.rpartition(":")
            if not sep or not data or not split:
                raise ValueError(f"--tune-data {spec!r}: expected DIR:SPLIT")
            tune_sets.append((data, split))
        tunes = [load_split(d, s, args.max_samples) for d, s in tune_sets]
        probe, figures = P.fit_for_bundle(ev, train, tunes, seed=args.seed)
        tuned_on = [{"data": d, "seed": read_manifest(d).get("seed"), "split": s, "frames": len(sp)}
                    for (d, s), sp in zip(tune_sets, tunes)]
    except (FileNotFoundError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = {"data": str(args.data), "seed": read_manifest(args.data).get("seed"), "train_split": args.train_split,
            "train_frames": len(train), "tuned_on": tuned_on, "probe_seed": args.seed,
            "checkpoint_sha256": ev.info.get("sha256"),
            "tune_caption_object_f1": {k: {m: round(float(v), 4) for m, v in r.items()} for k, r in figures.items()}}
    if args.dry_run:
        print("--dry-run: the bundle is not changed")
        return 0
    path = P.write_into_bundle(bundle, probe, info)
    print(f"wrote {bundle / P.FILE} and its entry in {path}; run `mmfusion calibrate` next (caption confidences)")
    return 0
