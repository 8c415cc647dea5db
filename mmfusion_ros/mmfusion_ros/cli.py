"""The `mmfusion` command: one entry point, sub-commands loaded lazily.

Lazy loading keeps `mmfusion replay` from importing torch and `mmfusion sim` from importing rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: sub-command -> (module with add_arguments/run, one-line help)
COMMANDS = {
    "demo": ("mmfusion_ros.commands.demo", "simulate a scenario, run the node on it through DDS, write a report"),
    "sim": ("mmfusion_ros.commands.sim", "write simulator scenario bags or a training dataset"),
    "train": ("mmfusion_ros.commands.train", "train the model from simulator data or from robot bags"),
    "eval": ("mmfusion_ros.commands.evaluate", "evaluate a checkpoint on a dataset split (tables T1-T8)"),
    "calibrate": ("mmfusion_ros.commands.calibrate", "fit a bundle's calibrated confidences and event thresholds"),
    "caption-presence": ("mmfusion_ros.commands.caption_presence",
                         "fit the probe that picks which caption-memory entry a frame is captioned with"),
    "eval-kitti": ("mmfusion_ros.commands.eval_kitti", "check 3D perception on KITTI-layout frames"),
    "export": ("mmfusion_ros.commands.export", "export a checkpoint to ONNX model parts + manifest"),
    "towers": ("mmfusion_ros.commands.towers", "import pretrained OpenCLIP image and text towers as a bundle"),
    "build-engine": ("mmfusion_ros.commands.build_engine", "build TensorRT engines ahead of time"),
    "bench": ("mmfusion_ros.commands.bench", "benchmark backends, the pipeline and the ROS graph"),
    "replay": ("mmfusion_ros.commands.replay", "publish a bag onto live topics with its recorded timing"),
    "process": ("mmfusion_ros.commands.process", "run a bag through the pipeline without DDS into an output bag"),
}


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
