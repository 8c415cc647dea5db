"""ros/inputs.py and ros/pipeline_factory.py: one table of topics and types, one message -> Collector path
and one pipeline assembly, shared by the node, `mmfusion process` and `train --bags` (no ROS processes)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from fault_bags import bag_header
from mmfusion_ros.ros import conversions as conv
from mmfusion_ros.ros import inputs as I
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.bag_io import typestore

T0 = 1_700_000_000.0


def test_every_table_of_topics_and_types_is_a_view_of_the_one_table():
    from mmfusion_ros.ros import offline, recorder, sim_bag

    assert P.INPUT_TOPICS == {n: s.topic for n, s in I.INPUTS.items()}
    assert P.OUTPUT_TOPICS == {n: s.topic for n, s in I.OUTPUTS.items()}
    assert set(P.STREAM_INPUTS) == {"audio", "imu"}
    assert offline.INPUT_TYPES == {n: s.msgtype for n, s in I.INPUTS.items()}
    assert offline.OUTPUT_TYPES == recorder.OUTPUT_TOPICS == {n: s.msgtype for n, s in I.OUTPUTS.items()}
    for name in ("image", "camera_info", "lidar", "audio", "imu"):  # "info" was a second name for camera_info
        assert sim_bag.TOPICS[name] == (I.INPUTS[name].topic, I.INPUTS[name].msgtype)
    assert set(I.DISPATCH) == set(I.INPUTS)


class RecordingCollector:
    """Stands in for core.sync.Collector: records every call with its keyword arguments."""

    def __init__(self):
        self.calls: List[tuple] = []

    def add_image(self, stamp, rgb, camera=None, *, received=None):
        self.calls.append(("image", stamp, rgb.shape, received))
        return True

    def add_camera_info(self, stamp, camera, *, received=None):
        self.calls.append(("camera_info", stamp, camera.width, received))

    def add_lidar(self, stamp, points, frame_id=None, *, received=None, dropped_points=0):
        self.calls.append(("lidar", stamp, (points.shape, frame_id, dropped_points), received))
        return True

    def add_audio(self, stamp, samples, rate, *, received=None):
        self.calls.append(("audio", stamp, rate, received))
        return True

    def add_imu(self, stamp, accel, gyro, *, received=None):
        self.calls.append(("imu", stamp, tuple(accel), received))
        return False  # dropped by the collector


def test_feeder_converts_dispatches_and_passes_the_receive_clock():
    col = RecordingCollector()
    f = I.InputFeeder(col, P.defaults())
    rgb = np.zeros((4, 6, 3), np.uint8)
    assert f.feed("image", conv.rgb_to_image(rgb, stamp=T0), received=T0 + 0.02) is True
    cloud = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 0]], np.float32)
    assert f.feed("lidar", conv.xyzi_to_pointcloud2(cloud, stamp=T0, frame_id="velodyne"), received=T0 + 0.03)
    assert f.feed("imu", conv.imu_to_msg(T0, [0, 0, 9.81], [0, 0, 0]), received=T0) is False
    from mmfusion_ros.core.types import CameraIntrinsics

    intr = CameraIntrinsics(6, 4, np.array([[5.0, 0, 3], [0, 5.0, 2], [0, 0, 1]]), "camera")
    assert f.feed("camera_info", conv.intrinsics_to_camera_info(intr, stamp=T0)) is True  # returns None: accepted
    assert col.calls[0] == ("image", pytest.approx(T0), (4, 6, 3), T0 + 0.02)
    assert col.calls[1][2] == ((1, 4), "velodyne", 1) and col.calls[1][3] == T0 + 0.03  # the NaN point is counted
    assert col.calls[2][0] == "imu" and col.calls[3][:3] == ("camera_info", pytest.approx(T0), 6)
    bmp = conv.rgb_to_compressed(rgb, stamp=T0 + 5)
    bmp.format = "bmp"
    with pytest.raises(conv.ConversionError, match="neither jpeg nor png"):
        f.feed("compressed", bmp)


def test_a_collector_without_the_new_keywords_still_works():
    class Old:
        def __init__(self):
            self.got = []

        def add_imu(self, stamp, accel, gyro):
            self.got.append(stamp)
            return True

    col = Old()
    assert I.InputFeeder(col, P.defaults()).feed("imu", conv.imu_to_msg(T0, [0, 0, 9.81], [0, 0, 0]), received=T0)
    assert col.got == [pytest.approx(T0)]


def test_compressed_images_are_decoded_only_while_no_raw_image_of_that_time_was_converted():
    col = RecordingCollector()
    f = I.InputFeeder(col, P.defaults())
    rgb = np.full((8, 8, 3), 100, np.uint8)
    assert f.feed("compressed", conv.rgb_to_compressed(rgb, stamp=T0)) is True  # no raw image yet: decoded
    assert f.feed("image", conv.rgb_to_image(rgb, stamp=T0 + 0.1)) is True
    assert f.feed("compressed", conv.rgb_to_compressed(rgb, stamp=T0 + 0.1)) is None  # raw of that time exists
    assert f.feed("compressed", conv.rgb_to_compressed(rgb, stamp=T0 + 5.0)) is True  # raw stopped: decoded again
    off = dict(P.defaults(), **{"topics.image": ""})
    g = I.InputFeeder(RecordingCollector(), off)
    g.newest_raw = T0
    assert g.feed("compressed", conv.rgb_to_compressed(rgb, stamp=T0)) is True  # raw input switched off


class Conn:
    def __init__(self, cid: int, topic: str, msgtype: str):
        self.id, self.topic, self.msgtype = cid, topic, msgtype


def test_routing_by_topic_remap_and_type():
    conns = [Conn(1, "/camera/image_raw", "sensor_msgs/msg/Image"), Conn(2, "/robot/imu", "sensor_msgs/msg/Imu"),
             Conn(3, "/lidar/points", "sensor_msgs/msg/LaserScan"), Conn(4, "/rosout", "rcl_interfaces/msg/Log")]
    routes, skipped = I.route_connections(conns, P.defaults(), remaps={"/robot/imu": "imu/data"})
    assert {c: (r.topic, r.name) for c, r in routes.items()} == {1: ("/camera/image_raw", "image"),
                                                                 2: ("/robot/imu", "imu")}
    assert any("LaserScan, expected sensor_msgs/msg/PointCloud2" in s for s in skipped)
    assert any("/rosout" in s and "not an input topic" in s for s in skipped)
    routes, _ = I.route_connections(conns, dict(P.defaults(), **{"topics.image": ""}))
    assert 1 not in routes  # an input switched off is not read offline either
    with pytest.raises(ValueError, match="not in the bag"):
        I.route_connections(conns, P.defaults(), selected=["/nope"])


def _write_bag(path: Path, empty_raw_topic: bool) -> None:
    """2 s of compressed camera at 10 Hz and IMU at 100 Hz; optionally a raw image topic with no messages."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    T = ts.types

    header = functools.partial(bag_header, ts)  # (t, frame_id) -> Header

    jpeg = np.frombuffer(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes(), np.uint8)
    V3, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    msgs = []
    for k in range(20):
        t = T0 + 0.1 * k
        msgs.append((t, "/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                     T["sensor_msgs/msg/CompressedImage"](header=header(t, "camera"), format="jpeg", data=jpeg)))
    for t in np.arange(T0 - 0.5, T0 + 2.0, 0.01):
        msgs.append((t, "/imu/data", "sensor_msgs/msg/Imu", T["sensor_msgs/msg/Imu"](
            header=header(t, "imu"), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0), orientation_covariance=np.zeros(9),
            angular_velocity=V3(x=0.0, y=0.0, z=0.1), angular_velocity_covariance=np.zeros(9),
            linear_acceleration=V3(x=0.0, y=0.0, z=9.81), linear_acceleration_covariance=np.zeros(9))))
    msgs.sort(key=lambda m: m[0])
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        if empty_raw_topic:  # a driver that advertises raw images and never sends one
            conns["/camera/image_raw"] = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for t, topic, typ, msg in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=ts)
            w.write(conns[topic], int(round(t * 1e9)), ts.serialize_cdr(msg, typ))


@pytest.mark.parametrize("empty_raw_topic", [False, True])
def test_offline_uses_compressed_images_when_the_raw_topic_is_empty(tmp_path, random_model_dir, empty_raw_topic):
    """The offline-vs-live discrepancy of issue 11: one selection rule, so an empty raw topic costs nothing."""
    from mmfusion_ros.ros import offline

    bag = tmp_path / "bag"
    _write_bag(bag, empty_raw_topic)
    values = offline.load_param_values(None, {"sync.trigger": "camera", "backend.intra_op_threads": 1,
                                              "perception.enabled": False})
    s = offline.process_bag(offline.OfflineOptions(bag=bag, out=tmp_path / "out", model_dir=random_model_dir,
                                                   backend="onnxruntime", progress=False), values)
    comp = {i.input: i for i in s.inputs}["compressed"]
    assert comp.read == 20 and comp.ignored == 0
    assert s.frames >= 19 and s.present["camera"] == s.frames


def test_offline_outputs_switched_off_are_not_written(tmp_path, random_model_dir):
    from mmfusion_ros.ros import offline

    bag = tmp_path / "bag"
    _write_bag(bag, empty_raw_topic=False)
    values = offline.load_param_values(None, {"sync.trigger": "camera", "backend.intra_op_threads": 1,
                                              "topics.caption": "", "topics.events": "", "topics.markers": ""})
    opts = offline.OfflineOptions(bag=bag, out=tmp_path / "out", model_dir=random_model_dir, backend="onnxruntime",
                                  progress=False)
    assert offline.build_pipeline(values, opts).cfg.caption_every_n == 0  # nothing decodes captions
    s = offline.process_bag(opts, values)
    assert list(s.outputs) == ["/mmfusion/perception"] and s.outputs["/mmfusion/perception"] == s.frames > 0


def test_train_bag_frames_use_the_same_path(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, empty_raw_topic=True)
    frames = list(I.bag_frames(bag, dict(P.defaults(), **{"sync.trigger": "camera"})))
    assert len(frames) >= 19 and all(f.image is not None and f.imu is not None for f in frames)


# ---------------------------------------------------------------------------------------- open_pipeline
def test_switched_off_outputs_skip_their_work():
    from mmfusion_ros.ros import pipeline_factory as F

    on = P.validate(P.defaults())
    cfg = F.pipeline_config(on)
    assert cfg.caption_every_n == 5 and cfg.enable_events and cfg.enable_perception
    off = P.validate(dict(P.defaults(), **{"topics.caption": "", "topics.events": ""}))
    cfg = F.pipeline_config(off)
    assert cfg.caption_every_n == 0 and not cfg.enable_events and cfg.enable_perception
    no_objects = P.validate(dict(P.defaults(), **{"topics.perception": "", "topics.markers": ""}))
    assert not F.pipeline_config(no_objects).enable_perception and F.make_perception(no_objects) is None


def test_open_pipeline_assembles_from_the_node_parameters(random_model_dir):
    from mmfusion_ros.ros.pipeline_factory import open_pipeline

    pipe = open_pipeline(random_model_dir, {"backend.type": "onnxruntime", "pipeline.top_k": 3,
                                            "pipeline.caption_every_n": 2})
    try:
        assert pipe.cfg.top_k == 3 and pipe.cfg.caption_every_n == 2
        assert pipe.prompt_embeddings.shape == (len(P.DEFAULT_PROMPTS), 384)  # from prompts.json, no text encoder
        assert pipe.perception is not None and pipe.T_cam_lidar is not None  # the shipped extrinsics
        r = pipe.process(__import__("mmfusion_ros.core.types", fromlist=["SensorFrame"]).SensorFrame(
            stamp=1.0, imu=np.zeros((400, 6), np.float32)))
        assert r.embedding.shape == (384,)
    finally:
        pipe.backend.close()


def test_an_unreadable_extrinsics_file_names_the_parameter(tmp_path, random_model_dir):
    from mmfusion_ros.ros.pipeline_factory import open_pipeline

    bad = tmp_path / "extrinsics.yaml"
    bad.write_text("not: [an extrinsics file")
    with pytest.raises(P.ParamError, match="perception.extrinsics_file"):
        open_pipeline(random_model_dir, {"backend.type": "onnxruntime", "perception.extrinsics_file": str(bad)})


@pytest.mark.parametrize("prompts,problem", [
    ([f"p{i}" for i in range(300)], "prompts.max_count"),
    (["x" * 201], "prompts.max_length"),
    (["a", " a "], "duplicate"),
])
def test_prompt_bounds(prompts, problem):
    with pytest.raises(P.ParamError, match=problem.replace(".", r"\.")):
        P.check_prompts(prompts, P.defaults())
