"""`mmfusion replay`: bags published onto live topics, received by this test process over DDS."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.ros.replay import parse_remaps, remap_topic

ROS1_BAG = "ros1_bags/robot_localization_husky_imu.bag"


# ------------------------------------------------------------------------------------ pure helpers


def test_parse_remaps():
    r = parse_remaps(["/imu/data:=/robot/imu", "camera/image_raw:=cam/image"])
    assert r == {"/imu/data": "/robot/imu", "/camera/image_raw": "/cam/image"}
    assert remap_topic("/imu/data", r) == "/robot/imu" and remap_topic("/fix", r) == "/fix"
    assert parse_remaps(None) == {}
    for bad in ["/a", "/a:=", ":=/b", "/a:=/b:=/c", "/a b:=/c", "/a/:=/b"]:
        with pytest.raises(ValueError, match="remap|valid topic"):
            parse_remaps([bad])
    with pytest.raises(ValueError, match="remapped twice"):
        parse_remaps(["/a:=/b", "a:=/c"])


# ------------------------------------------------------------------------------------ ROS fixtures


class Listener:
    """A node in this process that records every message on the topics it is asked for."""

    made = 0

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        Listener.made += 1
        self.node = rclpy.create_node(f"replay_test_{os.getpid()}_{Listener.made}")
        self.received = {}
        self.lock = threading.Lock()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, topic, cls):
        from rclpy.qos import QoSProfile

        self.received[topic] = []

        def cb(msg, topic=topic):
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))

        self.node.create_subscription(cls, topic, cb, QoSProfile(depth=1000))

    def msgs(self, topic):
        with self.lock:
            return [m for _, m in self.received[topic]]

    def arrival_times(self, topic):
        with self.lock:
            return [t for t, _ in self.received[topic]]

    def wait_for(self, cond, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.02)
        return cond()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def ros():
    import rclpy

    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def listener(ros):
    lst = Listener()
    yield lst
    lst.close()


def run_replay(*args, timeout=60):
    """`python -m mmfusion_ros.cli replay ...` as its own process; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "mmfusion_ros.cli", "replay", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def stamp(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


# ---------------------------------------------------------------------------------- real ROS 1 bag


@pytest.mark.ros
def test_real_ros1_bag_imu_in_order_with_original_stamps(shared_data, listener):
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import Imu

    bag = shared_data / ROS1_BAG
    if not bag.is_file():
        pytest.skip(f"{bag} not found")
    start, duration, rate = 10.0, 6.0, 4.0
    with AnyReader([bag]) as reader:  # what the bag holds in that window, read independently
        conns = [c for c in reader.connections if c.topic == "/imu/data"]
        t0 = reader.start_time + int(start * 1e9)
        expected = []
        for c, _, raw in reader.messages(connections=conns, start=t0, stop=t0 + int(duration * 1e9) + 1):
            h = reader.deserialize(raw, c.msgtype).header.stamp
            expected.append((h.sec, h.nanosec))
    assert len(expected) > 100

    listener.listen("/imu/data", Imu)
    proc = run_replay(
        bag, "--rate", rate, "--start", start, "--duration", duration, "--topics", "/imu/data", "--wait-subscribers", 15
    )
    assert proc.returncode == 0, proc.stderr
    assert listener.wait_for(lambda: len(listener.msgs("/imu/data")) >= len(expected), timeout=10)
    got = [stamp(m) for m in listener.msgs("/imu/data")]
    assert got == expected  # every message, in order, with the stamps recorded on the robot
    arrivals = listener.arrival_times("/imu/data")
    assert arrivals[-1] - arrivals[0] > 0.8 * duration / rate  # paced at 4x, not dumped at once
    assert "/imu/data" in proc.stdout and str(len(expected)) in proc.stdout


# ----------------------------------------------------------------------------- rosbag2 round trips


def write_bag(path: Path, storage: str, relative_names: bool = False) -> dict:
    """A rosbag2 bag written with rosbags + the package typestore: 200 Hz IMU, 10 Hz audio, 5 Hz cloud.

    ``relative_names`` stores topics without the leading slash, as some writers (and `mmfusion sim`) do."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.ros.bag_io import typestore

    ts = typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    V3, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000 * 10**9
    contents = {"/imu/data": [], "/audio/audio": [], "/lidar/points": []}
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    def name(topic):
        return topic.lstrip("/") if relative_names else topic

    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {
            "/imu/data": w.add_connection(name("/imu/data"), "sensor_msgs/msg/Imu", typestore=ts),
            "/audio/audio": w.add_connection(name("/audio/audio"), "mmfusion_msgs/msg/AudioFrame", typestore=ts),
            "/lidar/points": w.add_connection(name("/lidar/points"), "sensor_msgs/msg/PointCloud2", typestore=ts),
        }
        events = [(t0 + i * 5_000_000, "/imu/data") for i in range(200)]
        events += [(t0 + i * 100_000_000 + 1, "/audio/audio") for i in range(10)]
        events += [(t0 + i * 200_000_000 + 2, "/lidar/points") for i in range(5)]
        for t, topic in sorted(events):
            hdr = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=topic.split("/")[1])
            if topic == "/imu/data":
                acc = rng.normal(0, 1, 3)
                msg = T["sensor_msgs/msg/Imu"](
                    header=hdr,
                    orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0),
                    orientation_covariance=np.zeros(9),
                    angular_velocity=V3(x=0.0, y=0.0, z=0.1),
                    angular_velocity_covariance=np.zeros(9),
                    linear_acceleration=V3(x=acc[0], y=acc[1], z=acc[2]),
                    linear_acceleration_covariance=np.zeros(9),
                )
                contents[topic].append((t, float(acc[0])))
            elif topic == "/audio/audio":
                data = rng.integers(0, 256, 3200, dtype=np.uint8)
                msg = T["mmfusion_msgs/msg/AudioFrame"](
                    header=hdr, sample_rate=16000, channels=1, encoding="S16LE", data=data
                )
                contents[topic].append((t, data.tobytes()))
            else:
                pts = rng.normal(0, 5, (100, 4)).astype(np.float32)
                fields = [
                    T["sensor_msgs/msg/PointField"](name=n, offset=4 * k, datatype=7, count=1)
                    for k, n in enumerate(["x", "y", "z", "intensity"])
                ]
                msg = T["sensor_msgs/msg/PointCloud2"](
                    header=hdr,
                    height=1,
                    width=100,
                    fields=fields,
                    is_bigendian=False,
                    point_step=16,
                    row_step=1600,
                    data=pts.view(np.uint8).reshape(-1),
                    is_dense=True,
                )
                contents[topic].append((t, pts))
            w.write(conns[topic], t, ts.serialize_cdr(msg, msg.__msgtype__))
    return contents


def to_stamp(t_ns):
    return (t_ns // 10**9, t_ns % 10**9)


@pytest.mark.ros
def test_mcap_round_trip_with_remap_and_clock(tmp_path, listener):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Imu, PointCloud2

    from mmfusion_msgs.msg import AudioFrame
    from mmfusion_ros.ros.conversions import audio_to_array, pointcloud2_to_xyzi

    bag = tmp_path / "bag_mcap"
    contents = write_bag(bag, "mcap")
    listener.listen("/robot/imu", Imu)
    listener.listen("/audio/audio", AudioFrame)
    listener.listen("/lidar/points", PointCloud2)
    listener.listen("/imu/data", Imu)
    listener.listen("/clock", Clock)
    proc = run_replay(bag, "--rate", 2, "--clock", "--remap", "/imu/data:=/robot/imu", "--wait-subscribers", 15)
    assert proc.returncode == 0, proc.stderr
    want = {"/robot/imu": 200, "/audio/audio": 10, "/lidar/points": 5}
    assert listener.wait_for(lambda: all(len(listener.msgs(t)) >= n for t, n in want.items()), timeout=10), {
        t: len(listener.msgs(t)) for t in want
    }

    imu = listener.msgs("/robot/imu")
    assert [stamp(m) for m in imu] == [to_stamp(t) for t, _ in contents["/imu/data"]]
    assert [m.linear_acceleration.x for m in imu] == [a for _, a in contents["/imu/data"]]
    audio = listener.msgs("/audio/audio")
    assert [bytes(m.data) for m in audio] == [d for _, d in contents["/audio/audio"]]
    assert audio_to_array(audio[0])[0].shape == (1600, 1)
    for m, (_, pts) in zip(listener.msgs("/lidar/points"), contents["/lidar/points"], strict=True):
        np.testing.assert_array_equal(pointcloud2_to_xyzi(m), pts)
    assert listener.msgs("/imu/data") == []  # remapped away

    clock = [m.clock.sec + m.clock.nanosec * 1e-9 for m in listener.msgs("/clock")]
    bag_t = [t * 1e-9 for t, _ in contents["/imu/data"]]
    assert len(clock) >= 50  # 100 Hz of bag time over 1 s of bag, plus one per message
    assert all(b >= a for a, b in zip(clock, clock[1:]))
    assert bag_t[0] - 1e-6 <= clock[0] and clock[-1] <= bag_t[-1] + 0.01


@pytest.mark.ros
def test_sqlite3_topic_selection(tmp_path, listener):
    from sensor_msgs.msg import Imu

    from mmfusion_msgs.msg import AudioFrame

    bag = tmp_path / "bag_sqlite"
    contents = write_bag(bag, "sqlite3")
    listener.listen("/audio/audio", AudioFrame)
    listener.listen("/imu/data", Imu)
    proc = run_replay(bag, "--rate", 4, "--topics", "/audio/audio", "--wait-subscribers", 15)
    assert proc.returncode == 0, proc.stderr
    assert listener.wait_for(lambda: len(listener.msgs("/audio/audio")) >= 10, timeout=10)
    assert [stamp(m) for m in listener.msgs("/audio/audio")] == [to_stamp(t) for t, _ in contents["/audio/audio"]]
    assert listener.msgs("/imu/data") == []
    assert "/imu/data" not in proc.stdout


@pytest.mark.ros
def test_topic_selection_matches_bags_with_relative_names(tmp_path, listener):
    """A bag whose topics lack the leading slash is selected and remapped by either spelling."""
    from mmfusion_msgs.msg import AudioFrame

    bag = tmp_path / "bag_relative"
    contents = write_bag(bag, "mcap", relative_names=True)
    listener.listen("/robot/audio", AudioFrame)
    proc = run_replay(bag, "--rate", 4, "--topics", "audio/audio", "--remap", "/audio/audio:=/robot/audio",
                      "--wait-subscribers", 15)
    assert proc.returncode == 0, proc.stderr
    assert listener.wait_for(lambda: len(listener.msgs("/robot/audio")) >= 10, timeout=10)
    assert [stamp(m) for m in listener.msgs("/robot/audio")] == [to_stamp(t) for t, _ in contents["/audio/audio"]]


@pytest.mark.ros
def test_loop_until_interrupted(tmp_path, listener):
    import signal

    from mmfusion_msgs.msg import AudioFrame

    bag = tmp_path / "bag_loop"
    contents = write_bag(bag, "mcap")
    listener.listen("/audio/audio", AudioFrame)
    cmd = [
        sys.executable,
        "-m",
        "mmfusion_ros.cli",
        "replay",
        str(bag),
        "--loop",
        "--rate",
        "10",
        "--topics",
        "/audio/audio",
        "--wait-subscribers",
        "15",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert listener.wait_for(lambda: len(listener.msgs("/audio/audio")) >= 25, timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    one_pass = [to_stamp(t) for t, _ in contents["/audio/audio"]]
    got = [stamp(m) for m in listener.msgs("/audio/audio")]
    assert got[:20] == one_pass + one_pass  # the bag again from its start, same stamps
    assert "pass(es)" in out


@pytest.mark.ros
def test_replay_node_parameters(tmp_path, listener):
    from sensor_msgs.msg import Imu

    from mmfusion_msgs.msg import AudioFrame

    bag = tmp_path / "bag_node"
    contents = write_bag(bag, "mcap")
    listener.listen("/robot/imu", Imu)
    listener.listen("/robot/audio", AudioFrame)
    node = [sys.executable, "-m", "mmfusion_ros.ros.replay", "--ros-args"]
    cmd = node + [
        "-p",
        f"bag:={bag}",
        "-p",
        "rate:=4",
        "-p",
        "topics:=[/imu/data]",
        "-p",
        "wait_subscribers:=15.0",
        "-p",
        "remaps:=['/imu/data:=/robot/imu']",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert listener.wait_for(lambda: len(listener.msgs("/robot/imu")) >= 200, timeout=10)
    assert [stamp(m) for m in listener.msgs("/robot/imu")] == [to_stamp(t) for t, _ in contents["/imu/data"]]
    # ROS remapping rules (a launch file's <remap>) apply to the bag's topic names too; and a bare .mcap
    # file (no metadata.yaml beside it) plays as well
    (bag / "metadata.yaml").unlink()
    cmd = node + [
        "-p",
        f"bag:={next(bag.glob('*.mcap'))}",
        "-p",
        "rate:=4.0",
        "-p",
        "topics:=[/audio/audio]",
        "-p",
        "wait_subscribers:=15.0",
        "-r",
        "/audio/audio:=/robot/audio",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert listener.wait_for(lambda: len(listener.msgs("/robot/audio")) >= 10, timeout=10)
    bad = subprocess.run(node + ["-p", "rate:=2"], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert bad.returncode == 2 and "parameter 'bag' is required" in bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.ros
def test_unreadable_bags_exit_2_without_traceback(tmp_path):
    garbage = tmp_path / "garbage.bag"
    garbage.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 4)
    truncated = tmp_path / "truncated"
    write_bag(truncated, "mcap")
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
    no_meta = tmp_path / "no_meta"
    no_meta.mkdir()
    damaged = tmp_path / "damaged"  # sqlite3 bag whose middle pages are scrambled: fails while playing
    write_bag(damaged, "sqlite3")
    db3 = next(damaged.glob("*.db3"))
    raw = bytearray(db3.read_bytes())
    for k in range(len(raw) // 3, len(raw) // 2, 97):
        raw[k] ^= 0x5A
    db3.write_bytes(bytes(raw))
    cases = [
        (garbage, "cannot read bag"),
        (truncated, "cannot read bag"),
        (no_meta, "without metadata.yaml"),
        (tmp_path / "missing.bag", "does not exist"),
        (damaged, "cannot read bag"),
    ]
    for path, why in cases:
        proc = run_replay(path, "--rate", 100)
        assert proc.returncode == 2, (path, proc.stdout, proc.stderr)
        assert why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    good = tmp_path / "good"
    write_bag(good, "mcap")
    proc = run_replay(good, "--topics", "/nope")
    assert proc.returncode == 2 and "topic(s) ['/nope'] not in the bag" in proc.stderr
    proc = run_replay(good, "--start", 5.0)
    assert proc.returncode == 2 and "past the end of the bag" in proc.stderr
    proc = run_replay(good, "--remap", "bad")
    assert proc.returncode == 2 and "is not FROM:=TO" in proc.stderr
