"""ROS I/O benchmarks: message conversions and replay scheduling precision.

Targets (issue 2): PointCloud2 with 65k points -> (N,3) float32 under 1 ms; replay at 1x keeps each
message of a 200 Hz IMU stream within 5 ms of its schedule. Replay is measured by the real
``ros.replay.replay`` loop in this process: a bag written to a temp folder, real rclpy publishers, and
a listener in a child process that counts what arrives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

from . import fmt, pct, section, time_calls

N_POINTS = 65536


def _conversion_rows(quick: bool) -> List[list]:
    from rclpy.serialization import serialize_message

    from ..ros import conversions as conv
    from ..ros.bag_io import typestore

    iters = 50 if quick else 300
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 20, (N_POINTS, 4)).astype(np.float32)  # (N, 4)
    cloud = conv.xyzi_to_pointcloud2(pts, 1.0, ring=np.arange(N_POINTS) % 64)  # rclpy msg, point_step 20
    cloud_bag = typestore().deserialize_cdr(serialize_message(cloud), "sensor_msgs/msg/PointCloud2")  # rosbags msg
    pts_nan = pts.copy()
    pts_nan[::10, 0] = np.nan  # 10% invalid returns
    cloud_nan = conv.xyzi_to_pointcloud2(pts_nan, 1.0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    img_rgb = conv.rgb_to_image(rgb, encoding="rgb8")
    img_bgr = conv.rgb_to_image(rgb, encoding="bgr8")
    img_m16 = conv.array_to_image(rng.integers(0, 65536, (480, 640), dtype=np.uint16), "mono16")
    jpeg = conv.rgb_to_compressed(rgb, "jpeg")

    cases = [
        ("PointCloud2 65k pts -> (N,3) f32, rclpy msg", lambda: conv.pointcloud2_to_xyz(cloud), 1.0),
        ("PointCloud2 65k pts -> (N,3) f32, rosbags msg", lambda: conv.pointcloud2_to_xyz(cloud_bag), 1.0),
        (
            "PointCloud2 65k pts -> (N,3) zero-copy view",
            lambda: conv.pointcloud2_to_xyz(cloud, drop_invalid=False),
            1.0,
        ),
        ("PointCloud2 65k pts -> (N,4) x,y,z,i", lambda: conv.pointcloud2_to_xyzi(cloud), None),
        ("PointCloud2 65k pts, 10% NaN -> (N,4)", lambda: conv.pointcloud2_to_xyzi(cloud_nan), None),
        ("Image 640x480 rgb8 -> RGB", lambda: conv.image_to_rgb(img_rgb), None),
        ("Image 640x480 bgr8 -> RGB", lambda: conv.image_to_rgb(img_bgr), None),
        ("Image 640x480 mono16 -> RGB", lambda: conv.image_to_rgb(img_m16), None),
        ("CompressedImage 640x480 jpeg -> RGB", lambda: conv.compressed_to_rgb(jpeg), None),
        ("build PointCloud2 from (65k,4)", lambda: conv.xyzi_to_pointcloud2(pts), None),
        ("build Image from 640x480 RGB", lambda: conv.rgb_to_image(rgb), None),
    ]
    rows = []
    for name, fn, target in cases:
        ms = time_calls(fn, iters)
        ok = "" if target is None else ("yes" if pct(ms, 50) < target else "NO")
        rows.append([name, fmt(pct(ms, 50), 3), fmt(pct(ms, 99), 3), "" if target is None else f"< {target} ms", ok])
    return rows


def _write_bag(path: Path, seconds: float, heavy: bool) -> dict:
    """A rosbag2 mcap: 200 Hz Imu (+ 10 Hz 65k-point cloud and 30 Hz 640x480 image when heavy)."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..ros import conversions as conv
    from ..ros.bag_io import typestore
    from ..ros.inputs import INPUTS

    ts = typestore()
    rng = np.random.default_rng(0)
    t0 = 1_000_000_000
    events = [(t0 + int(i * 5e6), "/imu/data") for i in range(int(seconds * 200))]
    if heavy:
        events += [(t0 + int(i * 1e8) + 1, "/lidar/points") for i in range(int(seconds * 10))]
        events += [(t0 + int(i * 1e9 / 30) + 2, "/camera/image_raw") for i in range(int(seconds * 30))]
    cloud = serialize_message(conv.xyzi_to_pointcloud2(rng.normal(0, 20, (N_POINTS, 4)).astype(np.float32)))
    image = serialize_message(conv.rgb_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)))
    types = {"/" + INPUTS[k].topic: INPUTS[k].msgtype for k in ("imu", "lidar", "image")}  # ros/inputs.py
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {t: w.add_connection(t, m, typestore=ts) for t, m in types.items() if heavy or t == "/imu/data"}
        for t, topic in sorted(events):
            if topic == "/imu/data":
                raw = serialize_message(conv.imu_to_msg(t * 1e-9, rng.normal(0, 1, 3), rng.normal(0, 0.1, 3)))
            else:
                raw = cloud if topic == "/lidar/points" else image
            w.write(conns[topic], t, raw)
    return {t: sum(1 for _, topic in events if topic == t) for t in conns}  # topic -> messages written


def _listen_main() -> None:
    """Child process (``python -c``): argv = expected count then topics. Prints "ready", then how many
    messages arrived: once all expected did, or 2 s after stdin closes (the player finished)."""
    import sys
    import threading

    import rclpy
    from rclpy.qos import QoSProfile

    from ..ros.replay import message_class

    types = {"/" + INPUTS[k].topic: INPUTS[k].msgtype for k in ("imu", "lidar", "image")}  # ros/inputs.py
    expected, topics = int(sys.argv[1]), sys.argv[2:]
    rclpy.init()
    node = rclpy.create_node("bench_replay_listener")
    counts = {t: 0 for t in topics}
    for t in topics:
        node.create_subscription(
            message_class(types[t]), t, lambda _m, t=t: counts.__setitem__(t, counts[t] + 1), QoSProfile(depth=1000)
        )
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    deadline = None
    while sum(counts.values()) < expected and (deadline is None or time.monotonic() < deadline):
        rclpy.spin_once(node, timeout_sec=0.05)
        if deadline is None and stop.is_set():
            deadline = time.monotonic() + 2.0
    print(" ".join(f"{t}={n}" for t, n in counts.items()), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _replay_rows(quick: bool) -> List[list]:
    import rclpy

    from ..ros.replay import ReplayOptions, replay

    seconds = 3.0 if quick else 10.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmfusion_bench_replay_") as tmp:
        for heavy in (False, True):
            bag = Path(tmp) / f"bag_{int(heavy)}"
            n_msgs = _write_bag(bag, seconds, heavy)
            topics = ["/imu/data"] + (["/lidar/points", "/camera/image_raw"] if heavy else [])
            # the listener is its own process, so it shares no GIL with the player being measured
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from mmfusion_ros.bench.ros_io import _listen_main; _listen_main()",
                    str(sum(n_msgs.values())),
                    *topics,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("replay benchmark listener failed to start")
                ctx = rclpy.Context()
                rclpy.init(context=ctx)
                try:
                    node = rclpy.create_node("bench_replay", context=ctx)
                    load = os.getloadavg()[0]
                    stats = replay(ReplayOptions(bag=bag, rate=1.0, wait_subscribers=20.0), node)
                    node.destroy_node()
                finally:
                    rclpy.shutdown(context=ctx)
                reply = child.communicate(input="", timeout=30)[0].split()
                received = {t: int(n) for t, n in (kv.split("=") for kv in reply)}
            finally:
                if child.poll() is None:
                    child.kill()
            imu = np.asarray(stats.lateness_by_topic["/imu/data"]) * 1e3  # ms, one per IMU message
            worst = np.asarray(stats.lateness).max() * 1e3
            name = "200 Hz Imu" + (" + 10 Hz 65k-pt cloud + 30 Hz 640x480 image" if heavy else " only")
            rows.append(
                [
                    name,
                    f"{seconds:.0f} s",
                    ", ".join(f"{t} {received.get(t, 0)}/{n}" for t, n in n_msgs.items()),
                    fmt(pct(imu, 50), 3),
                    fmt(pct(imu, 99), 3),
                    fmt(float(imu.max()), 3),
                    f"{np.mean(imu <= 5.0) * 100:.1f}%",
                    fmt(float(worst), 3),
                    f"{load:.1f}",
                    "yes" if imu.max() <= 5.0 else "NO",
                ]
            )
    return rows


def run(quick: bool) -> List[dict]:
    conv_rows = _conversion_rows(quick)
    replay_rows = _replay_rows(quick)
    return [
        section(
            "ROS message conversions (ros/conversions.py)",
            ["conversion", "p50 ms", "p99 ms", "target", "meets"],
            conv_rows,
            f"{50 if quick else 300} calls each after 3 warm-ups, single thread. Clouds: x,y,z,intensity float32 + "
            "uint16 ring (point_step 20); the (N,3) path copies the finite points out of a zero-copy strided view.",
        ),
        section(
            "Replay scheduling at 1x (ros/replay.py)",
            [
                "stream",
                "bag",
                "received / published",
                "IMU lateness p50 ms",
                "p99 ms",
                "max ms",
                "IMU within 5 ms",
                "any topic max ms",
                "load avg",
                "meets",
            ],
            replay_rows,
            "Lateness = publish time minus the message's due time (bag time / rate). Real rclpy publishers and a "
            "listener in a child process (FastDDS); the bag is read from mcap by rosbags while playing. 'load avg' is "
            "the machine's 1-minute load when the run started: other processes compete for the same cores.",
        ),
    ]


if __name__ == "__main__":
    from . import machine

    print(machine())
    for sec in run(quick=False):
        print(sec["title"])
        print(sec["columns"])
        for r in sec["rows"]:
            print(r)
        print(sec["notes"])
