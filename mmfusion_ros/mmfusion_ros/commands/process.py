"""`mmfusion process BAG --out OUT`: a bag through the node's conversions and pipeline, without DDS,
into a new rosbag2 (mcap) bag of FusedPerception / Caption / EventArray / MarkerArray outputs.

Exit codes: 0 done, 1 bad options or parameters, 2 unreadable input bag, 3 no model bundle, 4 the input
is damaged midway (the output is a valid bag of the frames fused before the damage), 5 the output cannot be
written (exists, read-only location, disk full; nothing is left behind), 130 interrupted by ctrl-C (the
output holds the frames fused until then).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="input bag: rosbag2 folder (sqlite3 or mcap), .mcap/.db3 file, or ROS 1 .bag")
    p.add_argument("--out", required=True, help="output rosbag2 folder to create (mcap storage)")
    p.add_argument("--model", default=None, help="model bundle folder (default: model.dir from --params, "
                                                 "else the shipped mmfusion_small)")
    p.add_argument("--backend", default=None, choices=["auto", "onnxruntime", "tensorrt", "torch"],
                   help="inference backend (default: backend.type from --params)")
    p.add_argument("--params", default=None,
                   help="the node's params file (default: config/mmfusion.yaml from the package share dir)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="read bag topic FROM as TO (repeatable), e.g. /os1/points:=lidar/points")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                   help="process only these bag topics (default: every input topic in the bag)")
    p.add_argument("--extrinsics", default=None, metavar="YAML",
                   help="camera-LiDAR transform (config/extrinsics.yaml layout); default: the params file's perception.extrinsics_file, else the installed config/extrinsics.yaml")
    p.add_argument("--render", default=None, metavar="DIR", help="also write a PNG per fused frame into DIR")
    p.add_argument("--clock", default="log", choices=["log", "header"],
                   help="time that drives the collector: the bag's log time (like /clock on replay) or "
                        "the newest message header stamp (bags whose log times are not sensor times)")
    p.add_argument("--threads", type=int, default=None, help="backend intra-op threads (default: from --params)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_params_file() -> Path:
    """config/mmfusion.yaml of the installed package, else of this source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("mmfusion_ros")) / "config" / "mmfusion.yaml"
        if p.is_file():
            return p
    except Exception:  # noqa: BLE001 - not installed or AMENT_PREFIX_PATH unset
        pass
    return Path(__file__).resolve().parents[2] / "config" / "mmfusion.yaml"


#: exit codes (module docstring)
EXIT_OK, EXIT_OPTIONS, EXIT_BAG, EXIT_MODEL, EXIT_DAMAGED, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


def run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # ctrl-C before or after the read loop (which finishes the output itself)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _Stderr(logging.StreamHandler):
    """Log records to sys.stderr as it is when each is written (a caller, or a test, may swap it)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)


def _run(args) -> int:
    _log_to_stderr()
    from mmfusion_ros.ros import offline
    from mmfusion_ros.ros.params import ParamError

    try:
        params = Path(args.params) if args.params else default_params_file()
        values = offline.load_param_values(params if params.is_file() or args.params else None)
        opts = offline.OfflineOptions(
            bag=Path(args.bag), out=Path(args.out), model_dir=Path(args.model) if args.model else None,
            backend=args.backend, params_file=params, remaps=offline.parse_remaps(args.remap),
            topics=args.topics, extrinsics=Path(args.extrinsics) if args.extrinsics else None, render_dir=Path(args.render) if args.render else None, clock=args.clock,
            progress=not args.no_progress, intra_op_threads=args.threads)
        summary = offline.process_bag(opts, values)
    except offline.BagError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAG
    except offline.OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MODEL if "model" in str(e) or "manifest" in str(e) else EXIT_OPTIONS
    except (ParamError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_OPTIONS
    print(summary.table())
    if summary.read_error:
        print(f"error: {args.bag} is damaged: reading stopped after {summary.messages_read} messages "
              f"({summary.read_error}); {args.out} holds the {summary.frames} frames fused before it",
              file=sys.stderr)
        return EXIT_DAMAGED
    if summary.interrupted:
        print(f"interrupted: {args.out} holds the {summary.frames} frames fused until then", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
