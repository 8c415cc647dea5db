"""`mmfusion train`: the training recipe on a simulator dataset, or binding from robot bags.

  mmfusion train --config config/train_tiny.yaml [--data DIR] [--out DIR] [--resume]
  mmfusion train --config ... --supervised-upper-bound        # LiDAR/audio/IMU trained with text
  mmfusion train --bags BAG_DIR [BAG_DIR ...] --init CKPT --out DIR
  torchrun --nproc_per_node 2 -m mmfusion_ros.cli train --config ...   # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training YAML (config/train_tiny.yaml, config/train_small.yaml)")
    p.add_argument("--data", help="dataset folder (overrides the config's `data`)")
    p.add_argument("--out", help="run folder (overrides the config's `out`)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt, skipping finished epochs")
    p.add_argument("--supervised-upper-bound", action="store_true",
                   help="bind LiDAR/audio/IMU to caption text instead of the camera (the upper-bound baseline)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    p.add_argument("--bags", nargs="+", help="bag folders/files: bind LiDAR/audio/IMU to the camera from co-located sensor data")
    p.add_argument("--init", help="checkpoint to start from (required with --bags)")
    p.add_argument("--epochs", type=int, default=3, help="with --bags: passes over the bag windows")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")


def run(args) -> int:
    if args.bags:
        if not args.init or not args.out:
            print("error: --bags needs --init CKPT and --out DIR", file=sys.stderr)
            return 2
        from mmfusion_ros.train.bags import train_from_bags

        try:
            train_from_bags(args.bags, args.init, args.out, epochs=args.epochs, seed=args.seed or 0,
                            batch_size=args.batch_size or 32)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if not args.config:
        print("error: give --config YAML (or --bags with --init)", file=sys.stderr)
        return 2
    from mmfusion_ros.train.config import TrainConfig
    from mmfusion_ros.train.data import DatasetError
    from mmfusion_ros.train.trainer import Trainer

    try:
        cfg = TrainConfig.from_yaml(args.config)
    except (OSError, ValueError) as e:
        print(f"error: bad config {args.config}: {e}", file=sys.stderr)
        return 2
    for k in ("data", "out", "seed", "device", "batch_size"):
        v = getattr(args, k)
        if v is not None:
            setattr(cfg, k, v)
    if args.supervised_upper_bound:
        cfg.supervised_upper_bound = True
    if not cfg.data:
        print("error: no dataset: set `data` in the config or pass --data DIR", file=sys.stderr)
        return 2
    try:
        cfg.validate()
        trainer = Trainer(cfg, resume=args.resume)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    finally:
        trainer.close()
    return 0
