"""FusionResult -> messages and the node's diagnostics, as pure functions (no rclpy.init, no processes)."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message

from mmfusion_msgs.msg import EventArray, FusedPerception
from mmfusion_ros.core.types import DetectedObject, Event, FusionResult, Modality
from mmfusion_ros.ros import messages
from mmfusion_ros.ros.diagnostics import ERROR, OK, WARN, NodeDiagnostics


def make_result(stamp: float = 1700000000.123456789) -> FusionResult:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal(384).astype(np.float32)
    emb /= np.linalg.norm(emb)
    obj = DetectedObject(center=np.array([4.0, -1.0, 0.5]), size=np.array([0.6, 0.5, 1.7]), yaw=math.pi / 2,
                         label="person", score=0.8, label_from_camera=True, point_count=120, track_id=7,
                         velocity=np.array([0.5, 0.0, 0.0], np.float32))
    return FusionResult(
        stamp=stamp, present=[Modality.CAMERA, Modality.IMU], embedding=emb,
        modality_weights=np.array([0.7, 0.0, 0.0, 0.3], np.float32), labels=[("person", 0.6), ("dog", 0.2)],
        objects=[obj], caption="a person walking nearby", caption_confidence=0.42,
        events=[Event("person_approaching", 0.9, 1.0, state=0, time_to_event=0.8, track_id=7)],
        timings_ms={"inference": 12.5, "total": 20.0}, frame_id="lidar", familiarity={"camera": 0.9},
        used=["camera"], caption_modalities=["camera", "imu"], unobservable=["dog_barking"])


def test_perception_message_carries_the_result_exactly():
    r = make_result()
    m = messages.perception_msg(r, "base_link")
    assert m.header.frame_id == "base_link"
    assert abs(messages.time_to_stamp(m.header.stamp) - r.stamp) < 1e-6
    assert list(m.present_modalities) == ["camera", "imu"]
    assert list(m.modality_names) == ["camera", "lidar", "audio", "imu"]
    assert isinstance(m.fused_embedding, array.array)
    np.testing.assert_array_equal(np.frombuffer(m.fused_embedding, np.float32), r.embedding)
    np.testing.assert_array_equal(np.frombuffer(m.modality_weights, np.float32), r.modality_weights)
    assert [(ls.label, pytest.approx(ls.score)) for ls in m.labels] == [("person", 0.6), ("dog", 0.2)]
    o = m.objects[0]
    assert (o.label, o.track_id, o.point_count, o.label_from_camera) == ("person", 7, 120, True)
    assert (o.pose.position.x, o.pose.position.y, o.pose.position.z) == (4.0, -1.0, 0.5)
    assert 2 * math.atan2(o.pose.orientation.z, o.pose.orientation.w) == pytest.approx(math.pi / 2)
    assert (o.size.x, o.size.y, o.size.z) == pytest.approx((0.6, 0.5, 1.7))
    assert o.velocity.x == pytest.approx(0.5)
    assert m.inference_ms == pytest.approx(12.5)
    # familiarity per modality_names entry: assessed, absent (0), present but not assessed (-1)
    assert np.frombuffer(m.modality_familiarity, np.float32).tolist() == pytest.approx([0.9, 0.0, 0.0, -1.0])
    assert list(m.modalities_used) == ["camera"]
    back = deserialize_message(serialize_message(m), FusedPerception)  # a valid message on the wire
    np.testing.assert_array_equal(np.frombuffer(back.fused_embedding, np.float32), r.embedding)


def test_caption_and_events_messages():
    r = make_result()
    c = messages.caption_msg(r)
    assert (c.text, c.header.frame_id, list(c.modalities_used)) == ("a person walking nearby", "lidar",
                                                                    ["camera", "imu"])
    assert c.confidence == pytest.approx(0.42)
    r.caption = None
    assert messages.caption_msg(r) is None
    e = messages.events_msg(r)
    ev = e.events[0]
    assert (ev.type, ev.state, ev.track_id) == ("person_approaching", 0, 7)
    assert (ev.probability, ev.horizon, ev.time_to_event) == pytest.approx((0.9, 1.0, 0.8))
    assert list(e.unobservable) == ["dog_barking"]
    r.events = []
    assert len(deserialize_message(serialize_message(messages.events_msg(r)), EventArray).events) == 0


@pytest.mark.parametrize("t", [0.0, 0.5, 12.999999999, 1700000000.000000001, 1799999999.999999])
def test_stamps_round_trip_to_the_nanosecond_float_allows(t):
    tm = messages.stamp_to_time(t)
    assert 0 <= tm.nanosec < 1_000_000_000
    assert abs(messages.time_to_stamp(tm) - t) < 1e-6


def test_float32_array_matches_numpy():
    x = np.linspace(-1, 1, 384, dtype=np.float64)
    a = messages.float32_array(x)
    assert a.typecode == "f" and len(a) == 384
    np.testing.assert_array_equal(np.frombuffer(a, np.float32), x.astype(np.float32))


def status(arr, name):
    return next(s for s in arr.status if s.name == name)


def kv(s):
    return {v.key: v.value for v in s.values}


def test_diagnostics_rates_ages_staleness_and_rejects():
    d = NodeDiagnostics("mmfusion", {"camera": 0.5, "lidar": 0.5, "audio": 0.5, "imu": 0.25})
    d.add_input("image", "camera/image_raw", "camera")
    d.add_input("compressed", "camera/image_raw/compressed", "camera")
    d.add_input("lidar", "lidar/points", "lidar")
    d.add_input("imu", "imu/data", "imu")
    d.add_input("camera_info", "camera/camera_info", "camera_info")
    d.state = "active"
    for k in range(20):  # 10 Hz camera and LiDAR for 2 s, 100 Hz IMU
        t = 100.0 + k * 0.1
        d.message("image", t, t)
        d.message("lidar", t, t)
    for k in range(200):
        d.message("imu", 100.0 + k * 0.01, 100.0 + k * 0.01)
    d.frame(["camera", "lidar", "imu"], 10.0)
    d.frame(["camera", "imu"], 20.0, skipped=2)
    arr = d.build(now=102.0)
    cam, lidar, imu = (status(arr, f"mmfusion: {g} input") for g in ("camera", "lidar", "imu"))
    assert cam.level == cam.OK and float(kv(cam)["rate_hz"]) == pytest.approx(10.0, abs=0.6)
    assert float(kv(imu)["rate_hz"]) == pytest.approx(100.0, abs=1.0)
    assert float(kv(cam)["age_s"]) == pytest.approx(0.1)
    assert kv(lidar)["frames_fused_without"] == "1"
    assert not any(s.name == "mmfusion: audio input" for s in arr.status)  # no audio subscription, no status
    assert status(arr, "mmfusion: camera_info input").level == cam.OK  # intrinsics do not go stale
    pipe = kv(status(arr, "mmfusion: pipeline"))
    assert (pipe["frames_fused"], pipe["frames_skipped"], pipe["inference_ms_p50"]) == ("2", "2", "15.00")

    # LiDAR stops: after its 0.5 s timeout it is reported stale at WARN
    arr = d.build(now=102.6)
    lidar = status(arr, "mmfusion: lidar input")
    assert lidar.level == lidar.WARN and "stale" in lidar.message
    assert float(kv(lidar)["rate_hz"]) < 10.0  # the rate decays once messages stop

    # rejects: WARN in the report that follows them, OK again once they stop
    assert d.rejected("imu", "Imu.linear_acceleration: contains non-finite values", wall_now=0.0) is True
    assert d.rejected("imu", "again", wall_now=1.0) is False  # logging is throttled per input
    assert d.rejected("lidar", "PointCloud2.point_step: too small", wall_now=1.0) is True
    d.message("imu", 102.59, 102.59)
    arr = d.build(now=102.6)
    imu = status(arr, "mmfusion: imu input")
    assert imu.level == imu.WARN and "rejected 2" in imu.message and kv(imu)["rejected"] == "2"
    arr = d.build(now=102.6)
    assert status(arr, "mmfusion: imu input").level == imu.OK
    assert kv(status(arr, "mmfusion: imu input"))["rejected"] == "2"


def test_diagnostics_never_received_and_inactive():
    d = NodeDiagnostics("mmfusion", {"camera": 0.5, "lidar": 0.5, "audio": 0.5, "imu": 0.25})
    d.add_input("audio", "audio/audio", "audio")
    arr = d.build(now=5.0)
    audio = status(arr, "mmfusion: audio input")
    assert audio.level == audio.WARN and "no messages" in audio.message and kv(audio)["age_s"] == "never"
    pipe = status(arr, "mmfusion: pipeline")
    assert pipe.level == pipe.WARN and "unconfigured" in pipe.message


def test_diagnostics_warn_names_an_unfamiliar_or_dropped_modality_and_the_remedy():
    d = NodeDiagnostics("mmfusion", {"camera": 0.5, "lidar": 0.5, "audio": 0.5, "imu": 0.25})
    d.state = "active"
    for _ in range(10):
        d.frame(["imu"], 2.0, familiarity={"imu": 0.02}, used=[], dropped={})
    st = {s.name: s for s in d.build(100.0).status}["mmfusion: pipeline"]
    assert st.level == WARN and "imu unfamiliar" in st.message and "mmfusion train --bags" in st.message
    assert {kv.key: kv.value for kv in st.values}["familiarity_imu"] == "0.02"
    # familiar again for most of the window: OK; then an encoder failure drops audio: WARN naming it
    for _ in range(40):
        d.frame(["imu"], 2.0, familiarity={"imu": 0.9}, used=["imu"], dropped={})
    assert {s.name: s for s in d.build(101.0).status}["mmfusion: pipeline"].level == OK
    d.frame(["audio", "imu"], 2.0, familiarity={"imu": 0.9}, used=["imu"], dropped={"audio": "encoder: boom"})
    st = {s.name: s for s in d.build(102.0).status}["mmfusion: pipeline"]
    assert st.level == WARN and "audio dropped" in st.message and "boom" in st.message
    # a failed frame is an ERROR until a report has said so; a bundle without statistics says "not assessed"
    d.pipeline_error()
    assert {s.name: s for s in d.build(103.0).status}["mmfusion: pipeline"].level == ERROR
    d.frame(["imu"], 2.0, familiarity={}, used=["imu"], dropped={})
    vals = {kv.key: kv.value for kv in {s.name: s for s in d.build(104.0).status}["mmfusion: pipeline"].values}
    assert vals["familiarity"].startswith("not assessed")
