"""RViz markers: per-track ids, label colours and text, events, captions, deletion; rclpy and rosbags."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion_ros.core.render import label_color
from mmfusion_ros.core.types import DetectedObject, Event, FusionResult
from mmfusion_ros.ros.markers import MarkerArrayBuilder, rclpy_kit, rosbags_kit

pytest.importorskip("visualization_msgs.msg")


def _obj(tid, label, x, v=(0.0, 0.0)):
    return DetectedObject(center=np.array([x, 1.0, 0.0], np.float32), size=np.array([0.6, 0.5, 1.7], np.float32),
                          yaw=0.5, label=label, score=0.8, label_from_camera=True, point_count=30, track_id=tid,
                          velocity=np.array([v[0], v[1], 0.0], np.float32))


def _result(stamp, objects, caption=None, events=()):
    return FusionResult(stamp=stamp, present=[], embedding=np.zeros(384, np.float32),
                        modality_weights=np.zeros(4, np.float32), labels=[], objects=list(objects),
                        caption=caption, events=list(events), frame_id="base_link")


def _keys(arr, action=0):
    return {(m.ns, m.id) for m in arr.markers if m.action == action}


@pytest.fixture(params=["rclpy", "rosbags"])
def kit(request):
    if request.param == "rclpy":
        return rclpy_kit()
    from mmfusion_ros.ros.bag_io import typestore

    return rosbags_kit(typestore())


def test_markers_per_track_then_deleted(kit):
    b = MarkerArrayBuilder(kit)
    r1 = _result(5.25, [_obj(7, "person", 5.0, v=(1.0, 0.0)), _obj(9, "car", 12.0)], caption="a person walking",
                 events=[Event("person_approaching", 0.9, 1.0, track_id=7), Event("alarm_sounding", 0.7, 0.5)])
    a1 = b.build(r1)
    assert _keys(a1) == {("objects", 7), ("objects", 9), ("labels", 7), ("labels", 9), ("velocity", 7),
                         ("events", 7), ("caption", 0)}
    by = {(m.ns, m.id): m for m in a1.markers}
    cube = by[("objects", 7)]
    assert cube.type == 1 and cube.header.frame_id == "base_link"
    assert (cube.header.stamp.sec, cube.header.stamp.nanosec) == (5, 250_000_000)
    assert np.allclose([cube.scale.x, cube.scale.y, cube.scale.z], [0.6, 0.5, 1.7])
    assert np.isclose(cube.pose.orientation.z, np.sin(0.25)) and np.isclose(cube.pose.orientation.w, np.cos(0.25))
    assert np.allclose([cube.color.r, cube.color.g, cube.color.b], label_color("person"), atol=1e-6)
    assert by[("objects", 9)].color.r != cube.color.r or by[("objects", 9)].color.g != cube.color.g
    assert by[("labels", 7)].type == 9 and by[("labels", 7)].text == "person 0.80 #7"
    assert by[("labels", 7)].pose.position.z > 0.85  # above the box top
    ev = by[("events", 7)]
    assert ev.type == 0 and ev.points[0].z > ev.points[1].z  # arrow pointing down at the object
    cap = by[("caption", 0)]
    assert "a person walking" in cap.text and "alarm_sounding" in cap.text
    # next frame: track 9 gone, track 7 stopped, no caption -> explicit DELETEs for exactly those markers
    a2 = b.build(_result(5.35, [_obj(7, "person", 5.1)]))
    assert _keys(a2) == {("objects", 7), ("labels", 7)}
    assert _keys(a2, action=2) == {("objects", 9), ("labels", 9), ("velocity", 7), ("events", 7), ("caption", 0)}
    a3 = b.build(_result(5.45, []))
    assert _keys(a3) == set() and _keys(a3, action=2) == {("objects", 7), ("labels", 7)}
    assert b.build(_result(5.55, [])).markers == []


def test_label_colours_are_stable():
    assert label_color("person") == label_color("person")
    assert label_color("person") != label_color("car")
    assert all(0.0 <= c <= 1.0 for c in label_color("anything at all"))


def test_rosbags_markers_serialise_and_read_back_in_rclpy():
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from mmfusion_ros.ros.bag_io import typestore

    store = typestore()
    arr = MarkerArrayBuilder(rosbags_kit(store)).build(_result(1.0, [_obj(3, "dog", 4.0, v=(0.0, 1.0))], caption="a dog"))
    raw = store.serialize_cdr(arr, "visualization_msgs/msg/MarkerArray")
    back = deserialize_message(bytes(raw), MarkerArray)
    assert [(m.ns, m.id, m.type) for m in back.markers] == [(m.ns, m.id, m.type) for m in arr.markers]
    assert back.markers[1].text == "dog 0.80 #3"


def test_grounding_marker_shows_familiarity_and_unobservable_events(kit):
    from mmfusion_ros.ros.markers import grounding_text

    r = _result(2.0, [], caption="")
    r.familiarity, r.used, r.unobservable = {"imu": 0.03}, [], ["robot_impact", "rough_ground"]
    assert grounding_text(r) == "familiarity: imu 0.03 (unfamiliar)\nnot observable: robot_impact, rough_ground"
    arr = MarkerArrayBuilder(kit).build(r)
    texts = {(m.ns, m.id): m.text for m in arr.markers}
    assert "not observable: robot_impact" in texts[("grounding", 0)] and ("caption", 0) not in texts
