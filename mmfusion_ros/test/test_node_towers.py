"""A tower bundle (a frozen OpenCLIP image tower, nothing bound to it yet) in the fusion node.

The node subscribes to all four sensors; the bundle encodes only the camera. What it must say: /diagnostics names
the sensors that are not bound (OK: a property of the model), the activate log names them and the remedy once,
frames fuse from the camera alone (labels exactly as the camera gives them), no caption, every event type
unobservable. The pure parts (NodeDiagnostics, messages, markers) first, then the node as its own process.
"""

from __future__ import annotations


import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from mmfusion_ros.core.types import EVENT_TYPES, FusionResult, Modality  # noqa: E402
from mmfusion_ros.ros import messages  # noqa: E402
from mmfusion_ros.ros.diagnostics import OK, WARN, NodeDiagnostics  # noqa: E402

TIMEOUTS = {"camera": 0.5, "lidar": 0.5, "audio": 0.5, "imu": 0.25}
NOT_BOUND = ["lidar", "audio", "imu"]


def _pipeline_status(d: NodeDiagnostics, now: float):
    return {s.name: s for s in d.build(now).status}["mmfusion: pipeline"]


def _kv(status) -> dict:
    return {v.key: v.value for v in status.values}


# ------------------------------------------------------------------------------------------ pure parts


def test_not_bound_is_an_ok_key_of_the_pipeline_status_and_faults_still_warn():
    d = NodeDiagnostics("mmfusion", TIMEOUTS)
    d.state = "active"
    d.not_bound = list(NOT_BOUND)
    for _ in range(5):
        d.frame(["camera", "lidar", "audio", "imu"], 3.0, familiarity={}, used=["camera"], dropped={})
    st = _pipeline_status(d, 10.0)
    assert st.level == OK and _kv(st)["not_bound"] == "lidar, audio, imu"
    assert "lidar, audio, imu" in st.message and "not bound" in st.message
    # a real fault beside it is still a WARN, and not_bound stays a key
    d.frame(["camera", "lidar"], 3.0, familiarity={}, used=[], dropped={"camera": "encoder: boom"})
    st = _pipeline_status(d, 11.0)
    assert st.level == WARN and "camera dropped" in st.message and _kv(st)["not_bound"] == "lidar, audio, imu"
    # a bound model (or none loaded): no key at all
    d.not_bound = []
    assert "not_bound" not in _kv(_pipeline_status(d, 12.0))


def test_a_not_bound_modality_is_present_not_used_and_not_assessed_in_the_message():
    emb = np.zeros(32, np.float32)
    emb[0] = 1.0
    r = FusionResult(stamp=5.0, present=[Modality.CAMERA, Modality.LIDAR, Modality.IMU], embedding=emb,
                     modality_weights=np.array([1.0, 0.0, 0.0, 0.0], np.float32), labels=[("person", 0.4)],
                     familiarity={}, used=["camera"], unobservable=list(EVENT_TYPES), unbound=["lidar", "imu"])
    m = messages.perception_msg(r, "base_link")
    assert list(m.present_modalities) == ["camera", "lidar", "imu"] and list(m.modalities_used) == ["camera"]
    assert list(m.modality_familiarity) == [-1.0, -1.0, 0.0, -1.0]  # present but not assessed; audio absent
    assert len(m.fused_embedding) == 32 and list(m.modality_weights) == [1.0, 0.0, 0.0, 0.0]
    assert messages.caption_msg(r) is None
    ev = messages.events_msg(r)
    assert list(ev.unobservable) == list(EVENT_TYPES) and not ev.events and not ev.types
    from mmfusion_ros.ros.markers import grounding_text

    assert "not bound (no encoder): lidar, imu" in grounding_text(r)


# ----------------------------------------------------------------------------------- the node process


@pytest.fixture(scope="module")
def tower_node(tiny_tower_bundle, tmp_path_factory):
    from test_node import start_node, stop_node

    log = tmp_path_factory.mktemp("tower_node") / "fusion_node.log"
    proc = start_node(tiny_tower_bundle, "-p", "backend.type:=onnxruntime", "-p", "sync.trigger:=camera",
                      "-p", "diagnostics.period_s:=0.2", "-p", "pipeline.caption_every_n:=1", log_path=log)
    yield proc, log
    stop_node(proc)


def _camera_only_labels(bundle, image: np.ndarray, intr):
    """The labels this bundle gives `image` with no other sensor: the node's config, in this process."""
    from test_node import PKG

    from mmfusion_ros.core.types import SensorFrame
    from mmfusion_ros.ros.offline import load_param_values
    from mmfusion_ros.ros.pipeline_factory import open_pipeline

    values = load_param_values(PKG / "config" / "mmfusion.yaml", {"backend.type": "onnxruntime"})
    pipe = open_pipeline(bundle, values)
    try:
        r = pipe.process(SensorFrame(stamp=1.0, image=image, camera=intr))
    finally:
        pipe.backend.close()
    return r.labels, r.embedding


@pytest.mark.ros
@pytest.mark.slow
def test_node_with_an_unbound_tower_bundle_fuses_the_camera_and_names_what_is_not_bound(
        ros_context, tower_node, tiny_towers):
    from test_node import Harness, kv

    proc, log = tower_node
    h = Harness(ros_context)
    try:
        def pipeline_ok():
            st = h.status("mmfusion: pipeline")
            return st is not None and kv(st).get("state") == "active" and int(kv(st)["frames_fused"]) >= 5

        try:
            h.spin_until(lambda: (len(h.perception) >= 5 and len(h.events) >= 5 and pipeline_ok())
                         or proc.poll() is not None, 45, "5 fused frames, event arrays and an active pipeline status")
        except AssertionError as e:
            raise AssertionError(f"{e}; node log:\n{log.read_text()[-3000:]}") from None
        assert proc.poll() is None, "node exited:\n" + log.read_text()[-3000:]

        # FusedPerception: the camera's embedding in the towers' space, labels from it; the rest present, unused
        labels, cam_emb = _camera_only_labels(tiny_towers.bundle, h.image, h.intr)
        assert labels, "the camera-only pipeline gave no labels"
        for m in h.perception[-3:]:
            assert len(m.fused_embedding) == tiny_towers.embed_dim
            emb = np.asarray(m.fused_embedding, np.float32)
            assert float(emb @ cam_emb) == pytest.approx(1.0, abs=1e-4)  # the camera embedding, nothing mixed in
            assert set(m.present_modalities) == {"camera", "lidar", "audio", "imu"}
            assert list(m.modalities_used) == ["camera"]
            assert list(m.modality_weights) == [1.0, 0.0, 0.0, 0.0]
            assert list(m.modality_familiarity) == [-1.0] * 4  # no statistics; the unbound are present, not assessed
            assert [(x.label, pytest.approx(x.score, abs=1e-4)) for x in m.labels] == labels
        # EventArray: nothing predicted, every type said to be unobservable; the caption topic is silent
        for ev in h.events[-3:]:
            assert not ev.events and list(ev.unobservable) == list(EVENT_TYPES) and not ev.types
        assert h.captions == [], f"a tower bundle has no caption decoder, got {h.captions[0].text!r}"

        st = h.status("mmfusion: pipeline")
        assert st.level == OK, st.message
        assert kv(st)["not_bound"] == "lidar, audio, imu"
        for group in ("lidar", "audio", "imu"):  # their inputs are received as always
            assert int(kv(h.status(f"mmfusion: {group} input"))["received"]) > 0

        text = log.read_text()
        lines = [ln for ln in text.splitlines() if "not bound" in ln]
        assert len(lines) == 1, text[-3000:]  # once, at activate
        assert "[INFO]" in lines[0] and "lidar, audio, imu" in lines[0] and "mmfusion train --towers BUNDLE" in lines[0]
    finally:
        h.node.destroy_node()
