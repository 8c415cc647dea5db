"""The fusion node's threading contract, in-process with a deliberately slow fake pipeline:
callbacks only convert (they return in far less than one inference), the worker fuses the newest
due frame and counts the ones it skipped, and deactivation stops the worker and frees the backend."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

from mmfusion_ros.core.types import FusionResult  # noqa: E402
from mmfusion_ros.ros import conversions as conv  # noqa: E402
from mmfusion_ros.ros.fusion_node import FusionNode  # noqa: E402

pytestmark = pytest.mark.ros
INFERENCE_S = 0.05


class FakeBackend:
    name = "fake"

    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class SlowPipeline:
    """Takes INFERENCE_S per frame, like a model on a busy CPU."""

    modalities = ["camera", "lidar", "audio", "imu"]  # the bundle's bound sensors (all of them)

    def __init__(self):
        self.stamps = []

    def process(self, frame):
        time.sleep(INFERENCE_S)
        self.stamps.append(frame.stamp)
        emb = np.full(384, 1 / np.sqrt(384), np.float32)
        return FusionResult(stamp=frame.stamp, present=[m for m, ok in frame.present.items() if ok], embedding=emb,
                            modality_weights=np.array([0, 0, 0, 1], np.float32), labels=[],
                            timings_ms={"inference": INFERENCE_S * 1e3})


class SlowNode(FusionNode):
    def _create_backend(self, model_dir):
        self.fake_backend = FakeBackend()
        return self.fake_backend

    def embed_prompts(self, prompts):
        return list(prompts), np.eye(len(prompts), 384, dtype=np.float32)

    def _create_pipeline(self, labels, emb):
        self.slow = SlowPipeline()
        return self.slow


def test_inference_runs_on_the_worker_and_the_newest_frame_wins(tmp_path):
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SlowNode(context=ctx, parameter_overrides=[
        Parameter("model.dir", value=str(tmp_path)), Parameter("sync.rate_hz", value=100.0),
        Parameter("perception.enabled", value=False)])
    try:
        node.trigger_configure()
        node.trigger_activate()
        assert node.state == "active"
        imu = node._callback("imu")
        durations = []
        t_end = time.time() + 1.0
        while time.time() < t_end:  # 200 Hz IMU for 1 s, fed straight into the subscription callback
            t0 = time.perf_counter()
            imu(conv.imu_to_msg(time.time(), [0.0, 0.0, 9.81], [0.0, 0.0, 0.0]))
            durations.append(time.perf_counter() - t0)
            time.sleep(0.005)
        d = node._diag
        assert max(durations) < INFERENCE_S / 2, "a callback waited for inference"
        assert d.frames_fused >= 5 and d.frames_skipped >= d.frames_fused  # 100 Hz ticks, 20 Hz inference
        assert d.counters("imu").received == len(durations)
        stamps = node.slow.stamps
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert all(np.diff(stamps) > 0.011)  # ticks 10 ms apart were skipped between fused frames

        node.trigger_deactivate()
        assert node.state == "inactive" and node.fake_backend.closed
        n = len(node.slow.stamps)
        imu(conv.imu_to_msg(time.time(), [0.0, 0.0, 9.81], [0.0, 0.0, 0.0]))  # ignored while inactive
        assert node._worker is None and len(node.slow.stamps) == n
    finally:
        node.release()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_full_lifecycle_can_repeat(tmp_path):
    """configure/activate/deactivate/cleanup twice: entities are recreated, not leaked or left stale."""
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SlowNode(context=ctx, parameter_overrides=[Parameter("model.dir", value=str(tmp_path)),
                                                      Parameter("perception.enabled", value=False)])
    try:
        for _ in range(2):
            node.trigger_configure()
            assert node.state == "inactive" and len(node._pubs) == 4 and len(node._subs) == 6
            node.trigger_activate()
            assert node.state == "active" and node._worker.is_alive()
            node.trigger_deactivate()
            assert node.state == "inactive" and node.fake_backend.closed
            node.trigger_cleanup()
            assert node.state == "unconfigured" and not node._pubs and not node._subs
            assert len(node._managed_entities) == 0
    finally:
        node.release()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
