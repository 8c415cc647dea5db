"""`mmfusion replay BAG`: publish a rosbag2 or ROS 1 bag onto live topics with its recorded timing.

Exit codes: 0 played, 2 unreadable bag or bad options (a clear message, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or mcap) or ROS 1 .bag file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start over at the end until interrupted")
    parser.add_argument("--start", type=float, default=0.0, help="seconds into the bag to start from")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of bag time to play (default: to the end)"
    )
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="bag topics to play (default: all)")
    parser.add_argument(
        "--remap", action="append", default=[], metavar="FROM:=TO", help="publish bag topic FROM as TO (repeatable)"
    )
    parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time (for use_sim_time)")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages (default 100)")
    parser.add_argument(
        "--qos",
        choices=["reliable", "sensor"],
        default="reliable",
        help="publisher QoS: reliable depth 100 (default) or sensor data (best effort)",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long until every topic has a subscriber before playing",
    )


def run(args: argparse.Namespace) -> int:
    from ..ros.replay import ReplayError, ReplayOptions, parse_remaps, play

    try:
        remaps = parse_remaps(args.remap)
    except ValueError as e:
        print(f"mmfusion replay: error: {e}", file=sys.stderr)
        return 2
    opts = ReplayOptions(
        bag=args.bag,
        rate=args.rate,
        loop=args.loop,
        start=args.start,
        duration=args.duration,
        topics=args.topics,
        remaps=remaps,
        clock=args.clock,
        clock_hz=args.clock_hz,
        qos=args.qos,
        wait_subscribers=args.wait_subscribers,
    )
    try:
        opts.validate()
    except ReplayError as e:
        print(f"mmfusion replay: error: {e}", file=sys.stderr)
        return 2

    return play(opts)
