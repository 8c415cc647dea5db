"""`mmfusion sim`: write simulator scenario bags, a training dataset, or a preview picture.

  mmfusion sim --list
  mmfusion sim --scenario NAME --seconds S --seed K --out DIR       (rosbag2 mcap + sidecar JSON)
  mmfusion sim dataset --n N --seed K --out DIR [--workers 2]      (sharded .npz, docs/architecture.md)
  mmfusion sim preview --scenario NAME --out docs/img/sim_preview.png

Exit codes: 0 done, 2 bad options or config (a clear message, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODES = ("bag", "dataset", "preview")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", choices=MODES, default="bag",
                        help="bag (default): one scenario to a rosbag2; dataset: training shards; preview: a PNG")
    parser.add_argument("--list", action="store_true", help="name the scenarios with one-line descriptions")
    parser.add_argument("--scenario", default=None, help="scenario name (see --list)")
    parser.add_argument("--seconds", type=float, default=10.0, help="scenario length, seconds (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (bag, dataset) or PNG file (preview)")
    parser.add_argument("--config", default=None, help="sim YAML (default: built-in defaults = config/sim.yaml)")
    parser.add_argument("--n", type=int, default=1000, help="dataset: total samples (default 1000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes rendering scenes (dataset, default 2) or frames (bag, default 1: on a "
                             "2-core machine one process with a 2-thread ray caster is faster)")
    parser.add_argument("--frames-per-scene", type=int, default=40, help="dataset: frames per scene (default 40 = 8 s)")
    parser.add_argument("--no-progress", action="store_true", help="dataset: no progress bar")
    parser.add_argument("--ego-follows-class", action="store_true",
                        help="dataset: each object class gets its own robot reaction, as earlier datasets did (it "
                             "ties the IMU to the class: a shortcut; default: one reaction menu for all classes)")
    parser.add_argument("--view-variety", type=float, default=0.0,
                        help="dataset: share of training scenes whose focus object stands anywhere in the camera's "
                             "view at any heading (default 0: as before; 0.3 was measured in MODEL_CARD.md)")
    parser.add_argument("--no-lidar-sweeps", action="store_true",
                        help="dataset: do not keep each frame's LiDAR boxes (smaller, faster; `mmfusion eval` then "
                             "scores the event head without the node's track forecasts)")
    parser.add_argument("--no-tf", action="store_true", help="bag: leave out /tf_static")


def _error(msg: str) -> int:
    print(f"mmfusion sim: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..sim.config import load_config
    from ..sim.scenarios import SCENARIOS

    if args.list:
        width = max(len(k) for k in SCENARIOS)
        for name, info in SCENARIOS.items():
            print(f"{name:<{width}}  {info.description}")
        return 0
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError, TypeError) as e:
        return _error(f"bad config {args.config}: {e}")
    if args.out is None:
        return _error("--out is required")
    if args.workers is None:
        args.workers = 2 if args.mode == "dataset" else 1
    if args.mode == "dataset":
        from ..sim.dataset import DatasetConfig, write_dataset

        if args.n < 1 or args.workers < 1 or args.frames_per_scene < 1:
            return _error("--n, --workers and --frames-per-scene must be >= 1")
        dc = DatasetConfig(n=args.n, seed=args.seed, workers=args.workers, frames_per_scene=args.frames_per_scene,
                           ego_follows_class=args.ego_follows_class, lidar_sweeps=not args.no_lidar_sweeps,
                           view_variety=args.view_variety, sim=cfg)
        try:
            m = write_dataset(args.out, dc, progress=not args.no_progress)
        except (OSError, ValueError, RuntimeError) as e:
            return _error(f"dataset not written: {e}")
        print(f"wrote {m['n_samples']} samples ({m['split_samples']}) to {args.out} "
              f"at {m['samples_per_second']} samples/s with {args.workers} worker(s)")
        return 0
    if args.workers < 1:
        return _error("--workers must be >= 1")
    if args.scenario is None:
        return _error("--scenario NAME is required (see --list)")
    if args.scenario not in SCENARIOS:
        return _error(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}")
    if not args.seconds > 0:
        return _error(f"--seconds must be positive, got {args.seconds}")
    if args.mode == "preview":
        from ..sim.preview import write_preview

        write_preview(args.scenario, args.out, seed=args.seed, seconds=args.seconds, cfg=cfg)
        print(f"wrote {args.out}")
        return 0
    from ..sim.scenarios import make_scenario

    if args.out.exists():
        return _error(f"{args.out} already exists (rosbag2 writes a new folder)")
    scene = make_scenario(args.scenario, args.seconds, args.seed, cfg)
    info = write_bag(scene, args.out, seed=args.seed, tf_static=not args.no_tf, workers=args.workers)
    print(f"wrote {info['messages']} messages ({args.seconds:g} s of {args.scenario}) to {args.out} "
          f"in {info['wall_seconds']:.1f} s")
    return 0


def write_bag(scene, out: Path, seed: int, tf_static: bool = True, workers: int = 1) -> dict:
    """Render `scene` and write it as a bag (ros/sim_bag.py); see write_scene_bag."""
    from ..ros.sim_bag import write_scene_bag
    from ..sim.runner import SceneRunner
    from ..sim.world import CLOCK_HZ

    runner = SceneRunner(scene, seed=seed, nthreads=0 if workers <= 1 else 1)
    return write_scene_bag(runner, out, seed, imu_rate=CLOCK_HZ, tf_static=tf_static, workers=workers)

