"""The fusion node as its own process in a graph of standard driver messages: audio_common_msgs audio
(AudioStamped; AudioDataStamped with AudioInfo), extrinsics from a /tf_static publisher (and the YAML
fallback when the tree lacks the transform, with a WARN), vision_msgs/Detection3DArray out (and nobody
subscribing to it; vision_msgs hidden from the node), and an unknown audio type string. The interface packages are the test stand-ins of
test_interfaces/ (scripts/bootstrap.sh builds them into the venv).
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("audio_common_msgs.msg", reason="test_interfaces not built (run scripts/bootstrap.sh)")
pytest.importorskip("vision_msgs.msg", reason="test_interfaces not built (run scripts/bootstrap.sh)")
pytest.importorskip("tf2_msgs.msg", reason="test_interfaces not built (run scripts/bootstrap.sh)")

from audio_common_msgs.msg import AudioDataStamped, AudioInfo, AudioStamped  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Quaternion, TransformStamped, Vector3  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402

from mmfusion_msgs.msg import FusedPerception  # noqa: E402
from mmfusion_ros.core.types import CameraIntrinsics  # noqa: E402
from mmfusion_ros.ros import conversions as conv  # noqa: E402
from test_node import Spinning, kv, start_node, stop_node  # noqa: E402 - the node tests' process helpers

pytestmark = pytest.mark.ros
RATES = {"camera": 10.0, "camera_info": 10.0, "lidar": 10.0, "audio": 10.0, "imu": 100.0, "audio_info": 1.0}


def _cloud() -> np.ndarray:
    """A small sweep with a car and a person on the ground (the node finds 3D objects in it)."""
    from mmfusion_ros.bench.perception import SceneBox, make_sweep

    boxes = [SceneBox("car", np.array([8.0, 1.0, -1.7 + 0.75]), np.array([4.3, 1.8, 1.5]), 0.3),
             SceneBox("person", np.array([6.0, -2.5, -1.7 + 0.875]), np.array([0.6, 0.5, 1.75]), 0.0)]
    pts, _ = make_sweep(beams=32, columns=1024, seed=3, boxes=boxes, max_range=30.0)
    return pts.astype(np.float32)


class Graph(Spinning):
    """Test-side drivers: camera, LiDAR, IMU, audio of one audio_common type, /tf_static; records outputs."""

    def __init__(self, context, ns: str, audio_type: str, lidar_frame: str, camera_frame: str,
                 tf: List[TransformStamped], detections: bool):
        self.node = rclpy.create_node("std_graph", namespace=ns, context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.audio_type = audio_type
        self.lidar_frame, self.camera_frame = lidar_frame, camera_frame
        self.pub = {"camera": n.create_publisher(Image, "camera/image_raw", qos),
                    "camera_info": n.create_publisher(CameraInfo, "camera/camera_info", qos),
                    "lidar": n.create_publisher(PointCloud2, "lidar/points", qos),
                    "audio": n.create_publisher(AudioStamped if audio_type == "AudioStamped" else AudioDataStamped,
                                                "audio/audio", qos),
                    "imu": n.create_publisher(Imu, "imu/data", qos)}
        if audio_type == "AudioDataStamped":
            self.pub["audio_info"] = n.create_publisher(AudioInfo, "audio/audio_info", qos)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tf_pub = n.create_publisher(TFMessage, "/tf_static", latched)
        self.tf_pub.publish(TFMessage(transforms=tf))  # once, as a static broadcaster does
        self.perception: List[FusedPerception] = []
        self.detections: List[Detection3DArray] = []
        self.diagnostics: List[DiagnosticArray] = []
        n.create_subscription(FusedPerception, "mmfusion/perception", self.perception.append, qos)
        if detections:
            n.create_subscription(Detection3DArray, "mmfusion/detections", self.detections.append, qos)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, qos)
        self.next_due: Dict[str, float] = {k: 0.0 for k in self.pub}
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        self.cloud = _cloud()
        self.intr = CameraIntrinsics(64, 48, np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]), camera_frame)

    def pump(self) -> None:
        now = time.time()
        for k in self.pub:
            if now < self.next_due[k]:
                continue
            self.next_due[k] = now + 1.0 / RATES[k]
            if k == "camera":
                msg = conv.rgb_to_image(self.image, stamp=now, frame_id=self.camera_frame)
            elif k == "camera_info":
                msg = conv.intrinsics_to_camera_info(self.intr, stamp=now)
            elif k == "lidar":
                msg = conv.xyzi_to_pointcloud2(self.cloud, stamp=now, frame_id=self.lidar_frame)
            elif k == "audio":
                chunk = 0.1 * np.sin(np.arange(1600) * 0.05).astype(np.float32)  # 0.1 s at 16 kHz
                msg = (conv.array_to_audio_stamped(chunk, 16000, "S16LE", stamp=now - 0.1)
                       if self.audio_type == "AudioStamped" else
                       conv.array_to_audio_data_stamped(chunk, "S16LE", stamp=now - 0.1))
            elif k == "audio_info":
                msg = conv.audio_common_info(16000, 1, "S16LE", 1600)
            else:
                msg = conv.imu_to_msg(now, [0.0, 0.0, 9.81], [0.0, 0.0, 0.1])
            self.pub[k].publish(msg)

    def pipeline_status(self) -> Optional[Dict[str, str]]:
        for arr in reversed(self.diagnostics):
            for s in arr.status:
                if s.name.endswith(": pipeline"):
                    return kv(s)
        return None

    def close(self) -> None:
        self.node.destroy_node()


def _tf(parent: str, child: str, xyz, yaw: float = 0.0, pitch: float = 0.0) -> TransformStamped:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_euler("ZYX", [yaw, pitch, 0.0]).as_quat()
    t = TransformStamped(child_frame_id=child)
    t.header.frame_id = parent
    t.transform.translation = Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))
    t.transform.rotation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return t


def _run(ctx, model_dir, tmp_path, ns, audio_type, lidar_frame, camera_frame, tf, detections):
    log = tmp_path / f"{ns.strip('/')}.log"
    proc = start_node(model_dir, "-p", f"types.audio:={audio_type}", "-p", "sync.trigger:=camera",
                      "-p", "diagnostics.period_s:=0.2", "-p", "pipeline.caption_every_n:=0", log_path=log, ns=ns)
    g = Graph(ctx, ns, audio_type, lidar_frame, camera_frame, tf, detections)
    return proc, log, g


def test_audio_stamped_tf_static_extrinsics_and_detection3d_array(ros_context, random_model_dir, tmp_path):
    # the robot description's chain: base_link -> os_sensor (LiDAR), base_link -> camera_link -> camera optical
    optical = _tf("camera_link", "cam_optical", (0, 0, 0))
    optical.transform.rotation = Quaternion(x=-0.5, y=0.5, z=-0.5, w=0.5)  # body (x fwd) -> optical (z fwd)
    tf = [_tf("base_link", "os_sensor", (0.0, 0.0, 1.7)), _tf("base_link", "camera_link", (0.1, 0.0, 1.55)), optical]
    proc, log, g = _run(ros_context, random_model_dir, tmp_path, "/std1", "AudioStamped", "os_sensor",
                        "cam_optical", tf, detections=True)
    try:
        try:
            g.spin_until(lambda: (len(g.perception) >= 5 and len(g.detections) >= 5
                                  and (g.pipeline_status() or {}).get("extrinsics") == "tf_static")
                         or proc.poll() is not None, 60, "perception, detections and TF extrinsics")
        except AssertionError as e:
            raise AssertionError(f"{e}; node log:\n{log.read_text()[-3000:]}") from None
        assert proc.poll() is None, log.read_text()[-3000:]
        assert all("audio" in m.present_modalities for m in g.perception[-3:])  # AudioStamped audio is fused
        by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in g.perception}
        with_objects = 0
        for d in g.detections:
            p = by_stamp.get((d.header.stamp.sec, d.header.stamp.nanosec))
            if p is None:
                continue
            assert d.header.frame_id == p.header.frame_id
            assert d.header.frame_id == ("os_sensor" if "lidar" in p.present_modalities else "base_link")
            assert [x.results[0].hypothesis.class_id for x in d.detections] == [o.label for o in p.objects]
            assert [x.id for x in d.detections] == [str(o.track_id) for o in p.objects]
            for x, o in zip(d.detections, p.objects):
                assert x.results[0].hypothesis.score == pytest.approx(o.score, rel=1e-6)
                assert x.bbox.center.position.x == pytest.approx(o.pose.position.x)
                assert x.bbox.size.x == pytest.approx(o.size.x)
            with_objects += bool(d.detections)
        assert with_objects >= 1, "no frame had objects"
        text = log.read_text()
        assert "audio input: audio_common_msgs/msg/AudioStamped" in text
        assert "extrinsics os_sensor -> cam_optical: from /tf_static" in text
    finally:
        g.close()
        stop_node(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_audio_data_stamped_without_the_transform_uses_the_yaml_and_nobody_needs_detections(
        ros_context, random_model_dir, tmp_path):
    tf = [_tf("base_link", "imu_link", (0, 0, 0.2))]  # a tree that does not connect the LiDAR and the camera
    proc, log, g = _run(ros_context, random_model_dir, tmp_path, "/std2", "AudioDataStamped", "velodyne",
                        "zed_left_optical", tf, detections=False)
    try:
        try:
            g.spin_until(lambda: (len(g.perception) >= 8 and "audio" in g.perception[-1].present_modalities
                                  and (g.pipeline_status() or {}).get("extrinsics") == "yaml"
                                  and "frames known: base_link, imu_link" in log.read_text())
                         or proc.poll() is not None, 60, "perception with audio and YAML extrinsics")
        except AssertionError as e:
            raise AssertionError(f"{e}; node log:\n{log.read_text()[-3000:]}") from None
        assert proc.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        warn = [ln for ln in text.splitlines() if "extrinsics velodyne -> zed_left_optical" in ln]
        assert warn and "WARN" in warn[-1] and "TF has no transform between velodyne and zed_left_optical" in warn[-1]
        # the latest word names the YAML and the frames TF did bring (said again once the latched tree arrived)
        assert "extrinsics.yaml" in warn[-1] and "imu_link" in warn[-1]
        assert "Traceback" not in text and "ERROR" not in text  # no Detection3DArray consumer: nothing breaks
        assert (g.pipeline_status() or {}).get("pipeline_errors", "0") == "0"
    finally:
        g.close()
        stop_node(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_unknown_audio_type_fails_configure_and_names_the_accepted_types(ros_context, random_model_dir, tmp_path):
    log = tmp_path / "bad_audio.log"
    proc = start_node(random_model_dir, "-p", "types.audio:=audio/wav", log_path=log, ns="/std3")
    node = rclpy.create_node("std_probe", namespace="/std3", context=ros_context)
    ex = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 40
        while "configure failed" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        text = log.read_text()
        assert proc.poll() is None, "the node must stay alive:\n" + text[-2000:]
        assert "parameter 'types.audio': 'audio/wav' is not a message type the audio input accepts" in text
        assert "audio_common_msgs/msg/AudioStamped" in text and "audio_common_msgs/msg/AudioDataStamped" in text
        client = node.create_client(GetState, "/std3/mmfusion/get_state")
        assert client.wait_for_service(timeout_sec=20)
        for _ in range(5):  # a reply can be lost while discovery completes: ask again
            fut = client.call_async(GetState.Request())
            end = time.monotonic() + 3
            while not fut.done() and time.monotonic() < end:
                ex.spin_once(timeout_sec=0.05)
            if fut.done():
                break
            client.remove_pending_request(fut)
        assert fut.done() and fut.result().current_state.label == "unconfigured"
    finally:
        node.destroy_node()
        stop_node(proc)


def test_without_vision_msgs_the_node_says_so_and_publishes_the_rest(ros_context, random_model_dir, tmp_path,
                                                                      monkeypatch):
    hide = tmp_path / "hide"
    (hide / "vision_msgs").mkdir(parents=True)
    (hide / "vision_msgs" / "__init__.py").write_text("raise ImportError('vision_msgs hidden by the test')\n")
    import os

    monkeypatch.setenv("PYTHONPATH", str(hide) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc, log, g = _run(ros_context, random_model_dir, tmp_path, "/std4", "AudioStamped", "lidar", "camera",
                        [], detections=True)
    try:
        try:
            g.spin_until(lambda: len(g.perception) >= 3 or proc.poll() is not None, 60, "perception")
        except AssertionError as e:
            raise AssertionError(f"{e}; node log:\n{log.read_text()[-3000:]}") from None
        assert proc.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        assert "mmfusion/detections (vision_msgs/msg/Detection3DArray) is not published: vision_msgs is not " \
               "installed" in text
        assert not g.detections
    finally:
        g.close()
        stop_node(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]
