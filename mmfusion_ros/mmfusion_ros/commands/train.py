"""`mmfusion train`: the training recipe on a simulator dataset, or binding from robot bags.

  mmfusion train --config config/train_tiny.yaml [--data DIR] [--out DIR] [--resume]
  mmfusion train --config ... --supervised-upper-bound --init RUN/after_camera.pt --stages bind --out UB
                                   # the upper bound: same camera, LiDAR/audio/IMU trained with text
  mmfusion train --config ... --init RUN/last.pt --stages fusion caption events --out RUN2
                                   # retrain the named stages from scratch on top of RUN's encoders
  mmfusion train --config ... --init RUN/last.pt --calibrate-only --out RUN2   # new event thresholds only
  mmfusion train --bags BAG_DIR [BAG_DIR ...] --init CKPT --out DIR
  mmfusion train --config ... --towers TOWER_BUNDLE --data DIR --out RUN   # bind to a frozen OpenCLIP tower;
                                   # writes RUN/checkpoint.pt and the bundle RUN/bundle
  mmfusion train --bags BAG_DIR --init RUN/checkpoint.pt --out DIR   # a tower-bound checkpoint: camera = tower
  torchrun --nproc_per_node 2 -m mmfusion_ros.cli train --config ...   # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    p.add_argument("--init", help="checkpoint to start from (required with --bags); without --bags: a training "
                                  "checkpoint (e.g. RUN/after_camera.pt) whose finished stages are kept")
    p.add_argument("--stages", nargs="+", help="run only these stages (camera bind fusion caption events); with --init into a new --out "
                                       "they are retrained from scratch even if the checkpoint finished them")
    p.add_argument("--calibrate-only", action="store_true",
                   help="with --init: train nothing, recompute the event thresholds on val (config's "
                        "event_threshold_floor) and write OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int, default=3, help="with --bags: passes over the bag windows")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--towers", help="tower bundle (`mmfusion towers import`): bind LiDAR/audio/IMU, fusion, captions "
                                    "and events to its frozen image tower and text tower; exports OUT/bundle")


def bag_frames(bag: Path, rate_hz: float = 10.0):
    """SensorFrames of one bag, cut by the node's own Collector (ros/inputs.py: the same table of topics,
    conversions and selection rules as the live node and `mmfusion process`, the record time as clock)."""
    from mmfusion_ros.ros.inputs import bag_frames as frames
    from mmfusion_ros.ros.offline import load_param_values

    values = load_param_values(None, {"sync.rate_hz": rate_hz})
    bad = []
    yield from frames(bag, values, on_reject=lambda topic, e: bad.append(topic))
    if bad:
        print(f"{bag}: {len(bad)} messages could not be converted and were skipped", file=sys.stderr)


def run(args) -> int:
    if args.bags:
        if not args.init or not args.out:
            print("error: --bags needs --init CKPT and --out DIR", file=sys.stderr)
            return 2
        from mmfusion_ros.train.bags import concat_windows, train_on_windows, windows_from_frames

        try:
            tower = _tower_of(args.init, args.towers)
            parts = []
            for i, bag in enumerate(args.bags):
                w = windows_from_frames(bag_frames(Path(bag)), source=i, tower=tower)
                print(f"{bag}: {len(w['t'])} complete windows ({int(w['skipped'])} frames lacked a sensor)")
                parts.append(w)
            report = train_on_windows(concat_windows(parts), args.init, args.out, epochs=args.epochs,
                                      seed=args.seed or 0, batch_size=args.batch_size or 32)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        b, a = report["before"], report["after"]
        for k in ("lidar", "audio", "imu"):
            print(f"{k}->camera R@1 {100 * b[k + '->camera R@1']:.1f}% -> {100 * a[k + '->camera R@1']:.1f}%  "
                  f"R@5 {100 * b[k + '->camera R@5']:.1f}% -> {100 * a[k + '->camera R@5']:.1f}%  "
                  f"(gallery {int(a['gallery_size'])})")
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
    if args.towers:
        cfg.towers = args.towers
    if args.stages:
        cfg.stages = list(args.stages)
    if args.calibrate_only:
        if not args.init:
            print("error: --calibrate-only needs --init CKPT (a finished training checkpoint, e.g. RUN/last.pt)", file=sys.stderr)
            return 2
        cfg.stages = []
    resume = args.resume
    restart: list = []
    if args.init:
        import shutil

        out = Path(cfg.out)
        init = Path(args.init)
        if not init.is_file():
            print(f"error: --init {init} not found", file=sys.stderr)
            return 2
        if (out / "last.pt").exists() and not args.resume:
            print(f"error: {out}/last.pt exists; use --resume to continue it or another --out", file=sys.stderr)
            return 2
        if not (out / "last.pt").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(init, out / "last.pt")
            side = init.with_name(init.name + ".sha256")
            if side.is_file():
                shutil.copyfile(side, out / "last.pt.sha256")
            # a fresh run from --init: the stages named in --stages are retrained from scratch
            restart = list(args.stages or [])
        resume = True
    if not cfg.data:
        print("error: no dataset: set `data` in the config or pass --data DIR", file=sys.stderr)
        return 2
    try:
        cfg.validate()
        trainer = Trainer(cfg, resume=resume, restart_stages=[] if args.calibrate_only else restart,
                          calibrate=args.calibrate_only)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        final = trainer.fit()
    finally:
        trainer.close()
    if cfg.towers and final.is_file():
        from mmfusion_ros.model.export import export_bundle

        bundle = Path(cfg.out) / "bundle"
        man = export_bundle(final, bundle)
        print(f"wrote the bound bundle {bundle}: {', '.join(man['modalities'])} in the {man['embed_dim']}-d space of "
              f"{man['text_encoder'].replace(' text tower', '')}")
    return 0


def _tower_of(init, towers):
    """The TowerSide a --bags run binds to: the checkpoint's own towers (metadata), or --towers; None for a
    checkpoint with its own camera. A --towers that differs from the checkpoint's is an error."""
    from mmfusion_ros.model.checkpoint import load_checkpoint
    from mmfusion_ros.train.towers import TowerSide

    meta = load_checkpoint(init)[2].get("metadata", {}).get("towers") if init else None
    if towers and not meta:
        raise ValueError(f"--towers {towers}: --init {init} was not bound to a tower; bind one first with "
                         f"`mmfusion train --config ... --towers {towers} --data DIR`")
    if meta:
        side = TowerSide(towers or meta["bundle"])
        if side.image_sha256 != meta.get("camera_encoder_sha256"):
            raise ValueError(f"{side.image_file}: not the image tower --init {init} was bound to "
                             f"(sha256 differs from its metadata)")
        return side
    return None
