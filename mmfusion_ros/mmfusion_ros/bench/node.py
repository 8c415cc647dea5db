"""Fusion node message building: how ros/messages.py fills float32[] fields, and what one frame's
output messages cost (FusedPerception with objects, Caption, EventArray), p50/p99.

Run alone with `python -m mmfusion_ros.bench.node [--quick]`.
"""

from __future__ import annotations

import sys
from typing import List

import numpy as np

from . import fmt, machine, pct, section, time_calls


def _result(n_objects: int):
    from mmfusion_ros.core.types import DetectedObject, Event, FusionResult, Modality

    rng = np.random.default_rng(0)
    emb = rng.standard_normal(384).astype(np.float32)
    emb /= np.linalg.norm(emb)
    objects = [DetectedObject(center=rng.uniform(-10, 10, 3), size=np.array([0.6, 0.6, 1.7]), yaw=0.3,
                              label="person", score=0.7, label_from_camera=True, point_count=100, track_id=i + 1)
               for i in range(n_objects)]
    events = [Event("person_approaching", 0.8, h) for h in (0.5, 1.0, 2.0)]
    return FusionResult(stamp=1.7e9, present=list(Modality)[:4], embedding=emb,
                        modality_weights=np.full(4, 0.25, np.float32), labels=[("person", 0.5)] * 5,
                        objects=objects, caption="a person walking nearby", caption_confidence=0.5, events=events,
                        timings_ms={"inference": 10.0}, frame_id="lidar")


def float32_fill(quick: bool) -> dict:
    """Three ways to put a (384,) float32 embedding into a float32[] field."""
    from mmfusion_msgs.msg import FusedPerception
    from mmfusion_ros.ros.messages import float32_array

    x = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    msg = FusedPerception()
    iters = 500 if quick else 5000

    def via_array():
        msg.fused_embedding = float32_array(x)

    def via_list():
        msg.fused_embedding = x.tolist()

    def via_ndarray():
        msg.fused_embedding = x

    rows = []
    base = None
    for name, fn in (("array.array('f') from bytes (used)", via_array), ("ndarray.tolist()", via_list),
                     ("the ndarray itself", via_ndarray)):
        ms = time_calls(fn, iters) * 1e3  # microseconds
        p50 = pct(ms, 50)
        base = base or p50
        rows.append([name, fmt(p50, 2), fmt(pct(ms, 99), 2), fmt(p50 / base, 1)])
    return section("Fusion node: filling a float32[384] message field", ["method", "p50 us", "p99 us", "x slower"],
                   rows, "rclpy keeps an array.array('f') as is; anything else is checked and copied element by element.")


def output_messages(quick: bool) -> dict:
    """What the worker builds per fused frame, by number of detected objects."""
    from rclpy.serialization import serialize_message

    from mmfusion_ros.ros import messages

    iters = 200 if quick else 2000
    rows = []
    for n in (0, 10, 50):
        r = _result(n)

        def build():
            for m in (messages.perception_msg(r), messages.caption_msg(r), messages.events_msg(r)):
                serialize_message(m)

        ms = time_calls(build, iters)
        rows.append([n, fmt(pct(ms, 50), 3), fmt(pct(ms, 99), 3)])
    return section("Fusion node: FusedPerception + Caption + EventArray per frame (built and serialised)",
                   ["objects", "p50 ms", "p99 ms"], rows,
                   "ros/messages.py, serialised to CDR as publish() does; markers are in the pipeline section.")


def run(quick: bool) -> List[dict]:
    return [float32_fill(quick), output_messages(quick)]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(machine())
    for s in run(quick):
        print(f"\n## {s['title']}\n" + " | ".join(s["columns"]))
        for row in s["rows"]:
            print(" | ".join(str(c) for c in row))
        print(s["notes"])
