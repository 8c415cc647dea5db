"""The fusion node as its own process, driven over DDS the way a robot drives it.

One node process (module fixture) runs under a namespace with config/mmfusion.yaml and a random-weight
model bundle; the test process publishes camera, camera_info, LiDAR, audio and IMU messages and checks
what comes back. Every wait spins until a condition holds or a deadline passes (no fixed sleeps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, PointCloud2, PointField  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from mmfusion_msgs.msg import AudioFrame, Caption, EventArray, FusedPerception  # noqa: E402
from mmfusion_msgs.srv import SetPrompts  # noqa: E402
from mmfusion_ros.core.types import CameraIntrinsics  # noqa: E402
from mmfusion_ros.ros import conversions as conv  # noqa: E402

pytestmark = pytest.mark.ros

PKG = Path(__file__).resolve().parents[1]
NS = "/robot1"
EXE = Path(os.environ.get("VIRTUAL_ENV", sys.prefix)) / "lib" / "mmfusion_ros" / "fusion_node"
RATES = {"camera": 10.0, "camera_info": 10.0, "lidar": 10.0, "audio": 10.0, "imu": 100.0}


def node_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PKG) + os.pathsep + env.get("PYTHONPATH", "")  # this source tree, not a stale install
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_node(model_dir: Path, *extra: str, log_path: Path, ns: str = NS) -> subprocess.Popen:
    if not EXE.is_file():
        pytest.skip(f"{EXE} is not installed (run scripts/bootstrap.sh)")
    cmd = [sys.executable, str(EXE), "--ros-args", "-r", f"__ns:={ns}",
           "--params-file", str(PKG / "config" / "mmfusion.yaml"), "-p", f"model.dir:={model_dir}", *extra]
    return subprocess.Popen(cmd, env=node_env(), stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT, what ros2 launch sends first
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Spinning:
    """For a test-side driver with `executor` and `pump()` (publish what is due): spin until a condition holds."""

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what) -> None:
        """Spin (and publish) until predicate() holds; `what` (a string or a callable giving one) says what failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            self.executor.spin_once(timeout_sec=0.005)
            if predicate():
                return
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")


class Harness(Spinning):
    """Test-side node: publishes sensors at their rates while spinning, records the node's outputs."""

    def __init__(self, context):
        self.node = rclpy.create_node("node_test", namespace=NS, context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.pub = {
            "camera": n.create_publisher(Image, "camera/image_raw", qos),
            "compressed": n.create_publisher(CompressedImage, "camera/image_raw/compressed", qos),
            "camera_info": n.create_publisher(CameraInfo, "camera/camera_info", qos),
            "lidar": n.create_publisher(PointCloud2, "lidar/points", qos),
            "audio": n.create_publisher(AudioFrame, "audio/audio", qos),
            "imu": n.create_publisher(Imu, "imu/data", qos),
        }
        self.perception: List[FusedPerception] = []
        self.captions: List[Caption] = []
        self.events: List[EventArray] = []
        self.diagnostics: List[DiagnosticArray] = []
        self.markers: List[MarkerArray] = []
        n.create_subscription(FusedPerception, "mmfusion/perception", self.perception.append, qos)
        n.create_subscription(Caption, "mmfusion/caption", self.captions.append, qos)
        n.create_subscription(EventArray, "mmfusion/events", self.events.append, qos)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, qos)
        n.create_subscription(MarkerArray, "mmfusion/markers", self.markers.append, qos)
        self.enabled = set(RATES)
        self.next_due: Dict[str, float] = {k: 0.0 for k in RATES}
        self.sent: Dict[str, List[float]] = {k: [] for k in RATES}
        self.rng = np.random.default_rng(0)
        self.image = self.rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        self.cloud = np.concatenate([self.rng.uniform(-10, 10, (2000, 3)), self.rng.uniform(0, 1, (2000, 1))], 1)
        self.intr = CameraIntrinsics(64, 48, np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]), "camera")

    def pump(self) -> None:
        """Publish every enabled sensor whose next message is due (stamped with the current time)."""
        now = time.time()
        for k in self.enabled:
            if now < self.next_due[k]:
                continue
            self.next_due[k] = now + 1.0 / RATES[k]
            if k == "camera":
                msg = conv.rgb_to_image(self.image, stamp=now, frame_id="camera")
            elif k == "camera_info":
                msg = conv.intrinsics_to_camera_info(self.intr, stamp=now)
            elif k == "lidar":
                msg = conv.xyzi_to_pointcloud2(self.cloud.astype(np.float32), stamp=now, frame_id="lidar")
            elif k == "audio":
                chunk = 0.1 * np.sin(np.arange(1600) * 0.05).astype(np.float32)  # 0.1 s at 16 kHz
                msg = conv.array_to_audio(chunk, 16000, "S16LE", stamp=now - 0.1)
            else:
                msg = conv.imu_to_msg(now, [0.0, 0.0, 9.81], [0.0, 0.0, 0.1])
            self.pub[k].publish(msg)
            self.sent[k].append(now)

    def call(self, client, request, timeout: float = 10.0, resend_every: Optional[float] = None):
        """Call a service; with `resend_every`, re-send an idempotent request that got no reply.

        A service can be discovered before the server has matched the client's reply reader, and a reply
        sent in that window is lost (DDS discovery is per endpoint); a fresh node hits this, so queries to one
        re-send instead of waiting on a reply that will never come.
        """
        deadline = time.monotonic() + timeout
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        while True:
            future = client.call_async(request)
            left = deadline - time.monotonic()
            wait = left if resend_every is None else min(resend_every, left)
            try:
                self.spin_until(future.done, max(wait, 0.0), f"a reply from {client.srv_name}")
                return future.result()
            except AssertionError:
                client.remove_pending_request(future)
                if resend_every is None or time.monotonic() >= deadline:
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting for a reply from {client.srv_name}")

    def status(self, name: str) -> Optional[object]:
        """The newest diagnostics status called `name`, or None."""
        for arr in reversed(self.diagnostics):
            for s in arr.status:
                if s.name == name:
                    return s
        return None


def kv(status) -> Dict[str, str]:
    return {v.key: v.value for v in status.values}


def stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


@pytest.fixture(scope="module")
def node_process(random_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "fusion_node.log"
    # camera-triggered frames: each output's stamp is exactly the stamp of one published image
    proc = start_node(random_model_dir, "-p", "sync.trigger:=camera", "-p", "diagnostics.period_s:=0.2",
                      "-p", "pipeline.caption_every_n:=2", log_path=log)
    yield proc, log
    stop_node(proc)


@pytest.fixture(scope="module")
def h(ros_context, node_process):
    harness = Harness(ros_context)
    proc, log = node_process
    try:
        harness.spin_until(lambda: len(harness.perception) >= 3 or proc.poll() is not None, 40,
                           "the node's first fused frames")
    except AssertionError:
        raise AssertionError("node produced no output; its log:\n" + log.read_text()[-3000:])
    assert proc.poll() is None, "node exited:\n" + log.read_text()[-3000:]
    yield harness
    harness.node.destroy_node()


def test_fused_outputs_have_input_stamps_and_full_presence(h):
    n0 = len(h.perception)
    h.spin_until(lambda: len(h.perception) >= n0 + 5 and h.captions and h.events and h.markers, 15,
                 "perception, caption, events and markers")
    camera_stamps = {round(t, 6) for t in h.sent["camera"]}
    for msg in h.perception[n0:]:
        assert round(stamp(msg.header), 6) in camera_stamps  # a frame is stamped with its trigger image
        assert sorted(msg.present_modalities) == ["audio", "camera", "imu", "lidar"]
        emb = np.frombuffer(msg.fused_embedding, np.float32)
        assert emb.shape == (384,) and abs(np.linalg.norm(emb) - 1.0) < 1e-3
        assert list(msg.modality_names) == ["camera", "lidar", "audio", "imu"]
        assert np.all(np.frombuffer(msg.modality_weights, np.float32) > 0)
        assert len(msg.labels) == 5
        assert msg.header.frame_id == "lidar"  # objects are in the LiDAR frame
    perception_stamps = {stamp(m.header) for m in h.perception}
    assert all(stamp(c.header) in perception_stamps for c in h.captions)
    assert all(stamp(e.header) in perception_stamps for e in h.events)
    # a caption lists only the sensors its clauses rest on: present ones, none for an empty caption
    last = h.captions[-1]
    assert set(last.modalities_used) <= {"audio", "camera", "imu", "lidar"}
    assert bool(last.text) == bool(last.modalities_used)
    stamps = [stamp(m.header) for m in h.perception]
    assert stamps == sorted(stamps)
    assert all(stamp(arr.markers[0].header) in perception_stamps for arr in h.markers if arr.markers)
    if h.captions[-1].text:  # RViz shows the caption above the robot
        assert any(m.ns == "caption" and m.text.startswith(h.captions[-1].text) for arr in h.markers[-3:]
                   for m in arr.markers)


def test_node_process_never_imports_torch(h):
    h.spin_until(lambda: h.status("mmfusion: pipeline") is not None, 10, "pipeline diagnostics")
    values = kv(h.status("mmfusion: pipeline"))
    assert values["backend"] == "onnxruntime"  # auto on a machine without TensorRT
    assert values["torch_loaded"] == "false"
    assert values["state"] == "active"


def test_inputs_use_sensor_data_qos_and_outputs_are_reliable(h):
    from rclpy.qos import ReliabilityPolicy as R

    for topic in ("camera/image_raw", "lidar/points", "imu/data", "audio/audio", "camera/camera_info"):
        subs = [i for i in h.node.get_subscriptions_info_by_topic(f"{NS}/{topic}") if i.node_name == "mmfusion"]
        assert len(subs) == 1, topic
        assert subs[0].qos_profile.reliability == R.BEST_EFFORT, topic
    (pub,) = [i for i in h.node.get_publishers_info_by_topic(f"{NS}/mmfusion/perception") if i.node_name == "mmfusion"]
    assert pub.qos_profile.reliability == R.RELIABLE


def test_a_stopped_sensor_gives_partial_frames_and_a_warning(h):
    h.enabled.discard("lidar")
    t_stop = time.time()
    try:
        h.spin_until(lambda: any(stamp(m.header) > t_stop + 0.6 for m in h.perception), 15, "frames after the stop")
        late = [m for m in h.perception if stamp(m.header) > t_stop + 0.6]  # past the 0.5 s LiDAR timeout
        assert all(sorted(m.present_modalities) == ["audio", "camera", "imu"] for m in late)
        assert all(np.frombuffer(m.modality_weights, np.float32)[1] == 0 for m in late)

        def lidar_warns():
            s = h.status("mmfusion: lidar input")
            return (s is not None and s.level == s.WARN and "stale" in s.message
                    and int(kv(s)["frames_fused_without"]) >= len(late))

        h.spin_until(lidar_warns, 10, "a WARN for the stale LiDAR in /diagnostics")
        s = h.status("mmfusion: lidar input")
        assert int(kv(s)["frames_fused_without"]) >= 1
        assert kv(s)["age_s"] != "never" and float(kv(s)["age_s"]) > 0.5
    finally:
        h.enabled.add("lidar")
    h.spin_until(lambda: "lidar" in h.perception[-1].present_modalities, 10, "LiDAR back in the frames")


def malformed_messages(now: float) -> Dict[str, object]:
    """One broken message per input type."""
    img = conv.rgb_to_image(np.zeros((4, 4, 3), np.uint8), stamp=now)
    img.data = bytes(10)  # far less than step * height
    comp = CompressedImage(format="jpeg", data=b"not a jpeg at all")
    comp.header.stamp = conv.sec_to_stamp(now + 100.0)  # not covered by a raw image: it must be decoded
    info = conv.intrinsics_to_camera_info(CameraIntrinsics(64, 48, np.eye(3), "camera"), stamp=now)
    info.k = [0.0] * 9  # an uncalibrated camera
    cloud = conv.xyzi_to_pointcloud2(np.zeros((5, 4), np.float32), stamp=now)
    cloud.fields = [PointField(name="x", offset=0, datatype=7, count=1),
                    PointField(name="y", offset=4, datatype=7, count=1),
                    PointField(name="z", offset=40, datatype=7, count=1)]  # past the point end
    audio = conv.array_to_audio(np.zeros(160, np.float32), 16000, "S16LE", stamp=now)
    audio.encoding = "MP3"
    imu = conv.imu_to_msg(now, [float("nan"), 0.0, 9.8], [0.0, 0.0, 0.0])
    return {"camera": img, "compressed": comp, "camera_info": info, "lidar": cloud, "audio": audio, "imu": imu}


def test_malformed_messages_are_counted_and_the_node_keeps_running(h, node_process):
    proc, log = node_process
    # the node's inputs keep only the newest message (depth 1): pause the valid ones so none replaces a bad one
    h.enabled.clear()
    for topic, msg in malformed_messages(time.time()).items():
        h.pub[topic].publish(msg)

    def rejects() -> Dict[str, int]:
        out = {}
        for group, keys in {"camera": ["image.rejected", "compressed.rejected"], "camera_info": ["rejected"],
                            "lidar": ["rejected"], "audio": ["rejected"], "imu": ["rejected"]}.items():
            s = h.status(f"mmfusion: {group} input")
            for k in keys:
                out[f"{group}:{k}"] = int(kv(s).get(k, 0)) if s is not None else 0
        return out

    try:
        h.spin_until(lambda: all(v >= 1 for v in rejects().values()), 15,
                     lambda: f"reject counters to rise (now {rejects()})")
    finally:
        h.enabled.update(RATES)
    warned = {s.name for arr in h.diagnostics[-20:] for s in arr.status if s.level == s.WARN and "rejected" in s.message}
    assert "mmfusion: lidar input" in warned, "a rejecting input is reported at WARN"
    n0 = len(h.perception)
    h.spin_until(lambda: len(h.perception) >= n0 + 3, 10, "fused frames after the malformed messages")
    assert proc.poll() is None
    assert "rejected a lidar message" in log.read_text()  # logged (throttled), naming the input


def test_set_prompts_reembeds_once_and_changes_labels(h):
    client = h.node.create_client(SetPrompts, "mmfusion/set_prompts")
    bad = h.call(client, SetPrompts.Request(prompts=[]))
    assert not bad.success and "model.prompts" in bad.message
    prompts = ["a chair", "a door", "a bicycle", "a traffic cone", "a dog nearby"]  # in the bundle's prompts.json
    ok = h.call(client, SetPrompts.Request(prompts=prompts))
    assert ok.success, ok.message
    t = time.time()
    h.spin_until(lambda: any(stamp(m.header) > t for m in h.perception), 10, "frames with the new prompts")
    labels = {ls.label for m in h.perception if stamp(m.header) > t for ls in m.labels}
    assert labels == {"chair", "door", "bicycle", "traffic_cone", "dog"}  # published under the bundle's labels


def test_deactivate_releases_the_model_and_activate_resumes(h):
    client = h.node.create_client(ChangeState, "mmfusion/change_state")
    res = h.call(client, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    assert res.success

    def pipeline_state():
        s = h.status("mmfusion: pipeline")
        return kv(s)["state"] if s is not None else None

    h.spin_until(lambda: pipeline_state() == "inactive", 10, "diagnostics saying inactive")
    assert h.status("mmfusion: pipeline").level == h.status("mmfusion: pipeline").WARN
    res = h.call(client, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE)))
    assert res.success
    t = time.time()
    h.spin_until(lambda: any(stamp(m.header) > t for m in h.perception), 20, "frames after re-activation")
    assert pipeline_state() in ("active", "inactive")  # diagnostics may lag one period
    h.spin_until(lambda: pipeline_state() == "active", 10, "diagnostics saying active")


def test_bad_parameter_fails_configure_and_the_node_stays_up(ros_context, random_model_dir, tmp_path, h):
    log = tmp_path / "bad.log"
    proc = start_node(random_model_dir, "-r", "__node:=mmfusion_bad", "-p", "sync.rate_hz:=-2.0", log_path=log)
    try:
        client = h.node.create_client(GetState, f"{NS}/mmfusion_bad/get_state")
        try:
            state = h.call(client, GetState.Request(), timeout=40, resend_every=3.0)
        except AssertionError as e:
            raise AssertionError(f"{e}; node log:\n{log.read_text()[-2000:]}") from None
        h.spin_until(lambda: "configure failed" in log.read_text() or proc.poll() is not None, 20, "the error line")
        assert proc.poll() is None, "the node must stay alive"
        assert state.current_state.label == "unconfigured"
        assert "parameter 'sync.rate_hz'" in log.read_text()
    finally:
        stop_node(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_use_sim_time_drives_the_rate_trigger(ros_context, random_model_dir, tmp_path):
    """Under /clock from a bag (sim time 1000 s on) an IMU-only stream gives IMU-only frames on the sim-time ticks."""
    log = tmp_path / "sim.log"
    proc = start_node(random_model_dir, "-p", "use_sim_time:=true", log_path=log, ns="/simbot")
    node = rclpy.create_node("sim_test", namespace="/simbot", context=ros_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    clock_pub = node.create_publisher(Clock, "/clock", qos)
    imu_pub = node.create_publisher(Imu, "imu/data", qos)
    got: List[FusedPerception] = []
    node.create_subscription(FusedPerception, "mmfusion/perception", got.append, qos)
    wall0, last = time.monotonic(), -1.0
    try:
        deadline = wall0 + 40
        while len(got) < 5 and time.monotonic() < deadline and proc.poll() is None:
            sim = 1000.0 + (time.monotonic() - wall0)
            if sim - last >= 0.01:  # 100 Hz clock and IMU
                last = sim
                clock_pub.publish(Clock(clock=conv.sec_to_stamp(sim)))
                imu_pub.publish(conv.imu_to_msg(sim, [0.0, 0.0, 9.81], [0.0, 0.0, 0.0]))
            executor.spin_once(timeout_sec=0.002)
        assert len(got) >= 5, "no frames under sim time; node log:\n" + log.read_text()[-2000:]
        sim_now = 1000.0 + (time.monotonic() - wall0)
        for m in got:
            t = stamp(m.header)
            assert 1000.0 <= t <= sim_now  # sim time, not wall time
            assert abs(t * 10 - round(t * 10)) < 1e-6  # the 10 Hz ticks of the sim clock
            assert list(m.present_modalities) == ["imu"]
    finally:
        node.destroy_node()
        stop_node(proc)
