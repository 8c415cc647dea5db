"""The ROS graph a robot already runs, without processes: audio_common_msgs audio in both layouts, the
TF tree and its fallback, vision_msgs detections, CameraInfo binning/ROI and JPEG orientation tags.

audio_common_msgs, tf2_msgs and vision_msgs are the test stand-ins of test_interfaces/ (built by
scripts/bootstrap.sh); the ros-drivers audio_common layout (AudioData as raw bytes, AudioInfo with a
sample_format string), which cannot be installed beside the ROS 2 one under the same package name, is
read from bag-style dataclasses and plain objects, as the readers are duck-typed on field names.
"""

from __future__ import annotations

import logging
import math
import struct
import sys
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from mmfusion_ros.ros import conversions as conv
from mmfusion_ros.ros import inputs as I
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.extrinsics import ExtrinsicsResolver, TransformTree

audio_common_msgs = pytest.importorskip("audio_common_msgs.msg", reason="test_interfaces not built (bootstrap)")

AUDIO_TYPES = ["mmfusion_msgs/msg/AudioFrame", "audio_common_msgs/msg/AudioStamped",
               "audio_common_msgs/msg/AudioDataStamped"]


def tone(n=1600, channels=1):
    t = np.arange(n) / 16000.0
    x = 0.25 * np.sin(2 * np.pi * 440 * t)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------- audio types
def test_audio_type_parameter_accepts_full_short_and_bare_names_and_names_the_others():
    assert I.resolve_type("audio", "") == AUDIO_TYPES[0]
    assert I.resolve_type("audio", "AudioStamped") == AUDIO_TYPES[1]
    assert I.resolve_type("audio", "audio_common_msgs/AudioDataStamped") == AUDIO_TYPES[2]
    assert I.INPUTS["audio"].msgtypes == tuple(AUDIO_TYPES)
    with pytest.raises(P.ParamError) as e:
        P.validate({**P.defaults(), "types.audio": "wav"})
    text = str(e.value)
    assert "parameter 'types.audio'" in text and "'wav'" in text and all(t in text for t in AUDIO_TYPES)
    assert P.validate({**P.defaults(), "types.audio": "AudioStamped"})["types.audio"] == AUDIO_TYPES[1]


def test_audio_info_input_is_on_only_with_audio_data_stamped():
    v = P.defaults()
    assert "audio_info" not in I.input_topics(v)
    v["types.audio"] = AUDIO_TYPES[2]
    assert I.input_topics(v)["audio_info"] == "audio/audio_info"
    v["topics.audio"] = ""
    assert "audio_info" not in I.input_topics(v)


@pytest.mark.parametrize("encoding", ["S16LE", "F32LE"])
def test_audio_stamped_round_trips_through_cdr(encoding):
    x = tone(800, channels=2)
    msg = conv.cdr_roundtrip(conv.array_to_audio_stamped(x, 16000, encoding, stamp=12.5, frame_id="mic"))
    assert msg.audio.info.rate == 16000 and msg.audio.info.channels == 2 and msg.audio.info.chunk == 800
    assert msg.audio.info.format == conv.PA_OF_ENCODING[encoding]
    got, rate = conv.audio_stamped_to_array(msg)
    assert rate == 16000 and got.shape == (800, 2)
    np.testing.assert_allclose(got, x, atol=1.0 / 32768 if encoding == "S16LE" else 0)


def test_audio_data_stamped_needs_its_audio_info_and_reads_every_portaudio_format():
    x = tone(400)
    msg = conv.cdr_roundtrip(conv.array_to_audio_data_stamped(x, "S16LE", stamp=3.0))
    with pytest.raises(conv.ConversionError, match="no AudioInfo received yet"):
        conv.audio_data_stamped_to_array(msg, None)
    info = conv.audio_common_info(16000, 1, "S16LE", 400)
    got, rate = conv.audio_data_stamped_to_array(msg, info)
    assert rate == 16000 and got.shape == (400, 1)
    np.testing.assert_allclose(got, x, atol=1.0 / 32768)
    # 8-bit unsigned and 24-bit-in-int32: scaled to full scale 1
    data = NS(uint8_data=np.array([0, 128, 255], np.uint8), int24_data=np.array([-2 ** 23, 0, 2 ** 22], np.int32))
    u8, _ = conv.audio_data_to_array(data, conv.audio_info_to_format(NS(format=32, channels=1, rate=8000, chunk=3)))
    np.testing.assert_allclose(u8[:, 0], [-1.0, 0.0, 127 / 128])
    i24, _ = conv.audio_data_to_array(data, conv.audio_info_to_format(NS(format=4, channels=1, rate=8000, chunk=3)))
    np.testing.assert_allclose(i24[:, 0], [-1.0, 0.0, 0.5])
    with pytest.raises(conv.ConversionError, match="AudioInfo.format"):
        conv.audio_info_to_format(NS(format=3, channels=1, rate=16000, chunk=0))


def test_ros_drivers_layout_raw_bytes_with_sample_format():
    """ros-drivers audio_common: AudioData{uint8[] data} + AudioInfo{channels, sample_rate, sample_format, ...}."""
    x = tone(320, channels=2)
    data, _ = conv.pack_audio(x, "S16LE")
    info = NS(channels=2, sample_rate=16000, sample_format="S16LE", bitrate=512000, coding_format="wave")
    msg = NS(header=NS(stamp=NS(sec=1, nanosec=0), frame_id="mic"), audio=NS(data=np.frombuffer(data, np.uint8)))
    got, rate = conv.audio_data_stamped_to_array(msg, info)
    assert rate == 16000 and got.shape == (320, 2)
    np.testing.assert_allclose(got, x, atol=1.0 / 32768)
    with pytest.raises(conv.ConversionError, match="compressed audio"):
        conv.audio_data_stamped_to_array(msg, NS(**{**info.__dict__, "coding_format": "mp3"}))
    with pytest.raises(conv.ConversionError, match="sample_format"):
        conv.audio_data_stamped_to_array(msg, NS(**{**info.__dict__, "sample_format": "S24_32LE"}))
    odd = NS(header=msg.header, audio=NS(data=np.zeros(6, np.uint8)))  # 3 int16 samples for 2 channels
    with pytest.raises(conv.ConversionError, match="2-channel"):
        conv.audio_data_stamped_to_array(odd, info)


class _Collector:
    def __init__(self):
        self.audio = []

    def add_audio(self, stamp, samples, rate, received=None):
        self.audio.append((stamp, samples.shape, rate))
        return True


def test_feeder_keeps_the_newest_audio_info_for_the_chunks_that_follow():
    col = _Collector()
    feeder = I.InputFeeder(col, {**P.defaults(), "types.audio": AUDIO_TYPES[2]})
    chunk = conv.cdr_roundtrip(conv.array_to_audio_data_stamped(tone(160), "F32LE", stamp=5.0))
    with pytest.raises(conv.ConversionError):
        feeder.feed("audio", chunk)  # no AudioInfo yet: rejected (counted by the caller), not guessed
    assert feeder.feed("audio_info", conv.cdr_roundtrip(conv.audio_common_info(16000, 1, "F32LE", 160))) is True
    assert feeder.feed("audio", chunk) is True
    assert feeder.feed("audio", conv.cdr_roundtrip(conv.array_to_audio_stamped(tone(160), 8000, stamp=5.01)))
    assert col.audio == [(5.0, (160, 1), 16000), (5.01, (160, 1), 8000)]


def test_bag_connections_of_any_accepted_audio_type_are_routed():
    conns = [NS(id=i, topic=t, msgtype=m) for i, (t, m) in enumerate([
        ("/audio/audio", AUDIO_TYPES[2]), ("/audio/audio_info", "audio_common_msgs/msg/AudioInfo"),
        ("/lidar/points", "sensor_msgs/msg/PointCloud2"), ("/imu/data", "sensor_msgs/msg/Temperature")])]
    routes, skipped = I.route_connections(conns, P.defaults())
    assert {r.name for r in routes.values()} == {"audio", "audio_info", "lidar"}
    assert skipped == ["/imu/data (sensor_msgs/msg/Temperature, expected sensor_msgs/msg/Imu)"]


def test_bag_with_audio_common_messages_gives_audio_frames(tmp_path):
    """train --bags and process read the same table: AudioStamped and AudioDataStamped + AudioInfo bags."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.ros.bag_io import typestore

    ts = typestore()
    for kind in ("AudioStamped", "AudioDataStamped"):
        bag = tmp_path / kind
        with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
            audio = w.add_connection("/audio/audio", f"audio_common_msgs/msg/{kind}", typestore=ts)
            info = w.add_connection("/audio/audio_info", "audio_common_msgs/msg/AudioInfo", typestore=ts)
            for k in range(30):  # 3 s of 0.1 s chunks at 16 kHz
                t = 1.0 + 0.1 * k
                if k == 0 and kind == "AudioDataStamped":
                    w.write(info, int(t * 1e9) - 1, _cdr(conv.audio_common_info(16000, 1, "S16LE", 1600)))
                b = tone(1600)
                m = (conv.array_to_audio_stamped(b, 16000, stamp=t) if kind == "AudioStamped"
                     else conv.array_to_audio_data_stamped(b, stamp=t))
                w.write(audio, int(t * 1e9), _cdr(m))
        frames = list(I.bag_frames(bag, {**P.defaults(), "sync.rate_hz": 2.0}))
        with_audio = [f for f in frames if f.audio is not None]
        assert len(with_audio) >= 4, kind
        assert with_audio[-1].audio.shape[0] > 8000


def _cdr(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def test_microphone_builds_each_message_type_and_refuses_an_unknown_one():
    from mmfusion_ros.ros.microphone_node import EXIT_BAD_PARAMETER, MicrophoneConfig, MicrophoneError, block_to_msg, info_msg

    block = (tone(800) * 32767).astype(np.int16)
    for t in AUDIO_TYPES:
        cfg = MicrophoneConfig(message_type=t.rsplit("/", 1)[1], chunk_ms=50.0)
        cfg.validate()
        assert cfg.message_type == t
        msg = conv.cdr_roundtrip(block_to_msg(block, 2.0, cfg))
        assert type(msg).__name__ == t.rsplit("/", 1)[1]
        col = _Collector()
        feeder = I.InputFeeder(col, {**P.defaults(), "types.audio": t})
        info = info_msg(cfg)
        assert (info is None) == (t != AUDIO_TYPES[2])
        if info is not None:
            feeder.feed("audio_info", conv.cdr_roundtrip(info))
        assert feeder.feed("audio", msg) is True and col.audio == [(2.0, (800, 1), 16000)]
    with pytest.raises(MicrophoneError) as e:
        MicrophoneConfig(message_type="audio_common_msgs/msg/AudioData").validate()
    assert e.value.exit_code == EXIT_BAD_PARAMETER and "message_type" in str(e.value)


# ---------------------------------------------------------------------------------------- TF
def _ts(parent, child, xyz, rpy=(0.0, 0.0, 0.0)):
    from scipy.spatial.transform import Rotation

    q = Rotation.from_euler("xyz", rpy).as_quat()
    return NS(header=NS(frame_id=parent, stamp=NS(sec=0, nanosec=0)), child_frame_id=child,
              transform=NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])))


def _mat(xyz, rpy):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
    T[:3, 3] = xyz
    return T


def test_transform_tree_composes_the_chain_through_the_common_ancestor():
    tree = TransformTree()
    tree.add(NS(transforms=[_ts("base_link", "os_sensor", (0.2, 0, 1.1), (0, 0, 0.1)),
                            _ts("base_link", "camera_link", (0.3, 0.05, 0.9), (0, 0.05, 0)),
                            _ts("/camera_link", "camera_optical", (0, 0, 0), (-math.pi / 2, 0, -math.pi / 2))]),
             static=True)
    T, static = tree.lookup("camera_optical", "os_sensor")
    expect = (np.linalg.inv(_mat((0.3, 0.05, 0.9), (0, 0.05, 0)) @ _mat((0, 0, 0), (-math.pi / 2, 0, -math.pi / 2)))
              @ _mat((0.2, 0, 1.1), (0, 0, 0.1)))
    np.testing.assert_allclose(T, expect, atol=1e-9)
    assert static
    np.testing.assert_allclose(tree.lookup("os_sensor", "camera_optical")[0], np.linalg.inv(expect), atol=1e-9)
    tree.add(NS(transforms=[_ts("odom", "base_link", (5, 0, 0))]), static=False)  # a moving robot
    assert tree.lookup("camera_optical", "os_sensor")[1] is True  # the chain does not pass through odom
    assert tree.lookup("odom", "os_sensor")[1] is False
    assert tree.lookup("camera_optical", "velodyne") is None
    zero_q = NS(header=NS(frame_id="a", stamp=NS(sec=0, nanosec=0)), child_frame_id="b",
                transform=NS(translation=NS(x=0, y=0, z=0), rotation=NS(x=0, y=0, z=0, w=0)))
    tree.add(NS(transforms=[zero_q]), static=True)
    assert tree.rejected == 1


def test_resolver_warns_and_uses_the_yaml_when_tf_lacks_the_transform():
    infos, warns = [], []
    yaml_T = _mat((0.1, 0, -0.15), (0, 0.02, 0))
    r = ExtrinsicsResolver(yaml_T, "/cfg/extrinsics.yaml", True, infos.append, warns.append)
    r.add_tf(NS(transforms=[_ts("base_link", "imu_link", (0, 0, 0))]), static=True)
    assert r.resolve("lidar", "camera") is yaml_T and r.source == "yaml"
    assert len(warns) == 1 and "TF has no transform between lidar and camera" in warns[0]
    assert "/cfg/extrinsics.yaml" in warns[0] and "base_link, imu_link" in warns[0]
    r.resolve("lidar", "camera")
    assert len(warns) == 1  # said once, not per frame
    r.add_tf(NS(transforms=[_ts("lidar", "camera", (1, 2, 3))]), static=True)
    T = r.resolve("lidar", "camera")
    np.testing.assert_allclose(T, np.linalg.inv(_mat((1, 2, 3), (0, 0, 0))))
    assert r.source == "tf_static" and infos == ["extrinsics lidar -> camera: from /tf_static"]
    off = ExtrinsicsResolver(yaml_T, "x.yaml", False, infos.append, warns.append)
    off.add_tf(NS(transforms=[_ts("lidar", "camera", (1, 2, 3))]), static=True)
    assert off.resolve("lidar", "camera") is yaml_T and off.source == "yaml"


# ---------------------------------------------------------------------------------------- vision_msgs
def test_detection3d_array_carries_label_score_box_and_track_id():
    pytest.importorskip("vision_msgs.msg")
    from mmfusion_ros.core.types import DetectedObject
    from mmfusion_ros.ros.vision import available, detection3d_array_msg

    assert available() is None
    obj = DetectedObject(center=np.array([8.0, -1.0, 0.2]), size=np.array([4.3, 1.8, 1.5]), yaw=0.5, label="a car",
                         score=0.8, label_from_camera=True, point_count=120, track_id=7)
    msg = conv.cdr_roundtrip(detection3d_array_msg(NS(stamp=4.25, frame_id="lidar", objects=[obj])))
    assert msg.header.frame_id == "lidar" and msg.header.stamp.sec == 4 and msg.header.stamp.nanosec == 250000000
    (d,) = msg.detections
    assert d.id == "7" and d.results[0].hypothesis.class_id == "a car"
    assert d.results[0].hypothesis.score == pytest.approx(0.8)
    assert (d.bbox.center.position.x, d.bbox.size.x, d.bbox.size.z) == (8.0, 4.3, 1.5)
    assert d.bbox.center.orientation.z == pytest.approx(math.sin(0.25))
    assert not conv.cdr_roundtrip(detection3d_array_msg(NS(stamp=1.0, frame_id="lidar", objects=[]))).detections


def test_without_vision_msgs_the_output_is_reported_missing(monkeypatch):
    from mmfusion_ros.ros.inputs import type_available
    from mmfusion_ros.ros.vision import available

    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)
    assert "vision_msgs is not installed" in available()
    assert "vision_msgs is not installed" in type_available("vision_msgs/msg/Detection3DArray")


# ---------------------------------------------------------------------------------------- camera models
def _info(binning=(0, 0), roi=(0, 0, 0, 0)):
    K = [600.0, 0, 640.0, 0, 610.0, 360.0, 0, 0, 1]
    return NS(k=K, width=1280, height=720, binning_x=binning[0], binning_y=binning[1],
              roi=NS(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]),
              header=NS(frame_id="camera_optical"))


def test_camera_info_binning_and_roi_as_image_geometry_gives_them():
    full = conv.camera_info_to_intrinsics(_info())
    assert (full.width, full.height) == (1280, 720) and full.K[0, 2] == 640.0
    assert conv.camera_info_to_intrinsics(_info((1, 1))).K.tolist() == full.K.tolist()  # 0 and 1 both mean none
    # binning 2 with a 800 x 400 ROI at (200, 100): image_geometry's reduced-resolution K and size
    intr = conv.camera_info_to_intrinsics(_info((2, 2), (200, 100, 800, 400)))
    assert (intr.width, intr.height) == (400, 200)
    np.testing.assert_allclose(intr.K, [[300.0, 0, 220.0], [0, 305.0, 130.0], [0, 0, 1]])
    only_bin = conv.camera_info_to_intrinsics(_info((2, 4)))
    assert (only_bin.width, only_bin.height) == (640, 180)
    np.testing.assert_allclose(only_bin.K, [[300.0, 0, 320.0], [0, 152.5, 90.0], [0, 0, 1]])
    with pytest.raises(conv.ConversionError, match="CameraInfo.roi"):
        conv.camera_info_to_intrinsics(_info((1, 1), (1000, 0, 800, 400)))  # beyond the sensor
    # a real message and its CDR round trip
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    m = CameraInfo(width=1280, height=720, binning_x=2, binning_y=2,
                   roi=RegionOfInterest(x_offset=200, y_offset=100, width=800, height=400))
    m.k = np.array(_info().k)
    assert conv.camera_info_to_intrinsics(conv.cdr_roundtrip(m)).K.tolist() == intr.K.tolist()


def _exif_jpeg(w: int, h: int, orientation: int) -> bytes:
    """A w x h JPEG with an APP1 Exif segment whose IFD0 holds only an Orientation tag."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (0, 0, 255)  # left half red (BGR)
    ok, enc = cv2.imencode(".jpg", img)
    assert ok
    jpg = enc.tobytes()
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x0112, 3, 1, orientation) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def test_exif_rotated_jpeg_decodes_to_its_stored_size():
    data = _exif_jpeg(64, 32, orientation=6)  # "rotate 90 degrees to display"
    rotated = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert rotated.shape[:2] == (64, 32), "OpenCV applies the tag by default: the test needs it to"
    rgb = conv.compressed_to_rgb(NS(format="jpeg", data=np.frombuffer(data, np.uint8)))
    assert rgb.shape == (32, 64, 3)  # the stored pixels, as cv_bridge returns them
    assert rgb[16, 8, 0] > 200 and rgb[16, 56, 0] < 50  # left half red, not rotated


def test_camera_info_with_binning_matches_binned_images_in_the_collector():
    """With binning 2 the image is half the CameraInfo size: the intrinsics now fit it."""
    intr = conv.camera_info_to_intrinsics(_info((2, 2)))
    assert (intr.width, intr.height) == (640, 360)


def test_replay_plays_audio_common_and_tf_topics_with_their_classes(tmp_path):
    """`mmfusion replay` publishes each bag topic with its recorded type: the audio_common types and TF too."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tf2_msgs.msg import TFMessage

    from mmfusion_ros.ros.bag_io import typestore
    from mmfusion_ros.ros.replay import ReplayOptions, _open_reader, plan_topics

    ts = typestore()
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        for topic, typ, msg in [
                ("/audio/audio", AUDIO_TYPES[1], conv.array_to_audio_stamped(tone(160), 16000, stamp=1.0)),
                ("/mic2/audio", AUDIO_TYPES[2], conv.array_to_audio_data_stamped(tone(160), stamp=1.0)),
                ("/mic2/audio_info", "audio_common_msgs/msg/AudioInfo", conv.audio_common_info(16000, 1)),
                ("/tf_static", "tf2_msgs/msg/TFMessage", TFMessage())]:
            c = w.add_connection(topic, typ, typestore=ts)
            w.write(c, 1_000_000_000, _cdr(msg))
    warnings = []
    reader = _open_reader(bag)
    reader.open()
    try:
        plans = plan_topics(reader, ReplayOptions(bag=bag), warnings.append)
    finally:
        reader.close()
    assert warnings == []
    assert {p.topic: p.msg_class.__name__ for p in plans} == {
        "/audio/audio": "AudioStamped", "/mic2/audio": "AudioDataStamped", "/mic2/audio_info": "AudioInfo",
        "/tf_static": "TFMessage"}


def test_binned_camera_keeps_its_camera_labels():
    """Binning 2: the image is half the sensor size; the intrinsics now fit it, so crops are labelled."""
    from mmfusion_ros.bench.perception import SceneBox, make_sweep
    from mmfusion_ros.core.perception import Perception, load_extrinsics
    from mmfusion_ros.core.types import CameraIntrinsics
    from mmfusion_ros.ros.params import extrinsics_file

    car = SceneBox("car", np.array([8.0, 0.0, -1.7 + 0.75]), np.array([4.3, 1.8, 1.5]), 0.0)
    pts, _ = make_sweep(beams=16, columns=512, seed=0, boxes=[car], max_range=30.0)
    T = load_extrinsics(extrinsics_file(""))
    image = np.full((360, 640, 3), 128, np.uint8)  # what a 1280x720 sensor publishes with binning 2
    prompts, emb = ["a car", "a person"], np.eye(384)[:2]

    def embed(crops):
        return np.tile(emb[:1], (len(crops), 1))

    stats = {}
    for name, camera in (("binned", conv.camera_info_to_intrinsics(_info((2, 2)))),
                         ("full", CameraIntrinsics(1280, 720, np.asarray(_info().k, float).reshape(3, 3)))):
        per = Perception()
        per.process(pts, 0.0, image=image, camera=camera, T_cam_lidar=T, embed_crops=embed,
                    prompt_embeddings=emb, prompts=prompts)
        stats[name] = dict(per.stats)
    assert stats["full"].get("camera_skipped_size_mismatch", 0) == 1  # what ignoring binning gave
    assert stats["binned"].get("camera_skipped_size_mismatch", 0) == 0
    assert stats["binned"]["crops_labelled"] >= 1
