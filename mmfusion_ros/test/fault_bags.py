"""Fault bags for tests: a simulated recording (`mmfusion sim`) rewritten the way real robots get it wrong.

Each builder copies every message of a clean bag into a new rosbag2 (mcap) bag with the same record (log)
times and a changed header stamp, value or chunk, so a test can compare frames kept against the clean bag.
Not a test module itself (no `test_` prefix): tests import it (pytest puts test/ on sys.path).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

DAY = 86400.0
SENSOR_TOPICS = ("camera/image_raw", "camera/camera_info", "lidar/points", "audio/audio", "imu/data")


def bag_time(ts, t: float):
    """Seconds -> a rosbags builtin_interfaces/Time of typestore `ts`."""
    ns = int(round(t * 1e9))
    return ts.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def bag_header(ts, t: float, frame_id: str):
    """A rosbags std_msgs/Header stamped t (seconds) in frame_id, for messages a test writes into a bag."""
    return ts.types["std_msgs/msg/Header"](stamp=bag_time(ts, t), frame_id=frame_id)


def sim_bag(out: Path, seconds: float = 4.0, scenario: str = "idle", seed: int = 0) -> Path:
    """`mmfusion sim --scenario SCENARIO --seconds SECONDS` into `out` (a rosbag2 folder)."""
    from mmfusion_ros.cli import main

    assert main(["sim", "--scenario", scenario, "--seconds", str(seconds), "--seed", str(seed), "--out", str(out),
                 "--workers", "1"]) == 0
    return out


def _set_stamp(ts, msg, t: float) -> None:
    ns = max(int(round(t * 1e9)), 0)
    msg.header.stamp = ts.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def rewrite(src: Path, dst: Path, fn: Callable[[str, float, float, object], Optional[object]]) -> Path:
    """Copy `src` into `dst`, passing each message through fn(topic, log_time_s, start_s, msg) -> msg or None
    (None: drop it). Only messages on SENSOR_TOPICS are deserialised; the rest are copied as they are."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.ros.bag_io import typestore

    ts = typestore()
    with AnyReader([Path(src)], default_typestore=ts) as r, \
            Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=ts) for c in r.connections}
        start = r.start_time * 1e-9
        for c, t, raw in r.messages():
            if c.topic.lstrip("/") in SENSOR_TOPICS:
                msg = fn(c.topic.lstrip("/"), t * 1e-9, start, r.deserialize(raw, c.msgtype))
                if msg is None:
                    continue
                raw = ts.serialize_cdr(msg, c.msgtype)
            w.write(conns[c.id], t, bytes(raw))
    return dst


def offset_stamps(src: Path, dst: Path, offsets: Dict[str, float]) -> Path:
    """Header stamps of the topics in `offsets` moved by that many seconds (a sensor clock off the recorder's)."""
    ts = _typestore()

    def fn(topic, t, start, msg):
        if topic in offsets:
            _set_stamp(ts, msg, _stamp(msg) + offsets[topic])
        return msg

    return rewrite(src, dst, fn)


def zero_stamps(src: Path, dst: Path, topics=SENSOR_TOPICS) -> Path:
    """Every header stamp of `topics` is 0 (a driver without a clock)."""
    ts = _typestore()

    def fn(topic, t, start, msg):
        if topic in topics:
            _set_stamp(ts, msg, 0.0)
        return msg

    return rewrite(src, dst, fn)


def restart_stamps(src: Path, dst: Path, at_fraction: float = 0.5, topics=SENSOR_TOPICS, forward: float = 0.0) -> Path:
    """From `at_fraction` of the recording on, header stamps restart at the recording's start (the sensor clock
    was reset; the record time goes on), or jump `forward` seconds ahead when forward != 0."""
    from rosbags.highlevel import AnyReader

    ts = _typestore()
    with AnyReader([Path(src)], default_typestore=ts) as r:
        start, end = r.start_time * 1e-9, r.end_time * 1e-9
    cut = start + at_fraction * (end - start)

    def fn(topic, t, start_, msg):
        if topic in topics and t >= cut:
            _set_stamp(ts, msg, _stamp(msg) + (forward if forward else -(cut - start)))
        return msg

    return rewrite(src, dst, fn)


def corrupt_values(src: Path, dst: Path, every: int = 3, topics=("lidar/points", "audio/audio", "imu/data"),
                   kind: str = "absurd") -> Path:
    """Every `every`-th message of each of `topics` made absurd: one LiDAR point at z=1e20, an audio chunk at
    1e30 (F32LE), an IMU acceleration of 1e12 m/s^2 (finite, so only plausibility bounds catch them)."""
    ts = _typestore()
    count: Dict[str, int] = {}

    def fn(topic, t, start, msg):
        if topic not in topics:
            return msg
        k = count.get(topic, 0)
        count[topic] = k + 1
        if k % every != every - 1:
            return msg
        msg = copy.deepcopy(msg)
        if topic == "lidar/points":
            data = np.array(msg.data, np.uint8)  # (bytes,)
            oz = next(f.offset for f in msg.fields if f.name == "z")
            data[oz:oz + 4] = np.frombuffer(np.float32(1e20).tobytes(), np.uint8)
            msg.data = data
        elif topic == "audio/audio":
            n = len(msg.data) // (2 * msg.channels) if msg.encoding == "S16LE" else len(msg.data) // (4 * msg.channels)
            msg.encoding = "F32LE"
            msg.data = np.full(n * msg.channels, 1e30, "<f4").view(np.uint8)
        elif topic == "imu/data":
            msg.linear_acceleration.x = 1e12
        return msg

    return rewrite(src, dst, fn)


def damage_chunk(src: Path, dst_dir: Path, at_fraction: float = 0.6) -> Path:
    """A copy of the bag folder whose .mcap has the records of the chunk at `at_fraction` of the file overwritten
    with garbage (a damaged chunk: the start of the bag reads, the reader fails on the way)."""
    import shutil
    import struct

    dst_dir = Path(dst_dir)
    shutil.copytree(src, dst_dir)
    mcap = next(dst_dir.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    i, chunks = 8, []  # after the magic: records are opcode (1 byte), length (u64 LE), body
    while i < len(data) - 9:
        op, n = data[i], struct.unpack_from("<Q", data, i + 1)[0]
        if op == 0x06:
            chunks.append(i)
        if op == 0x0F:  # data end
            break
        i += 9 + n
    at = min(chunks, key=lambda c: abs(c - at_fraction * len(data)))
    body = at + 9 + 8 + 8 + 8 + 4  # start/end time, uncompressed size, crc
    comp_len = struct.unpack_from("<I", data, body)[0]
    records = body + 4 + comp_len + 8
    data[records:records + 64] = b"\xff" * 64
    mcap.write_bytes(bytes(data))
    return dst_dir


def _typestore():
    from mmfusion_ros.ros.bag_io import typestore

    return typestore()


def repeat(src: Path, dst: Path, times: int = 3) -> Path:
    """The recording played `times` times back to back: record times and header stamps both go on (a longer
    clean bag without simulating it again)."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    with AnyReader([Path(src)], default_typestore=ts) as r:
        span = (r.end_time - r.start_time) * 1e-9 + 0.1
        with Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as w:
            conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=ts) for c in r.connections}
            for k in range(times):
                for c, t, raw in r.messages():
                    if c.topic.lstrip("/") in SENSOR_TOPICS:
                        msg = r.deserialize(raw, c.msgtype)
                        _set_stamp(ts, msg, _stamp(msg) + k * span)
                        raw = ts.serialize_cdr(msg, c.msgtype)
                    w.write(conns[c.id], t + int(round(k * span * 1e9)), bytes(raw))
    return dst
