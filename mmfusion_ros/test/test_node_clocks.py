"""Live sensor faults over DDS, with the fusion node as its own process: sensor clocks an hour ahead, a clock
reset 30 s back, and one message in three absurd. Output keeps coming with every sensor, and /diagnostics
says what it measured (each input's clock offset; never OK at a negative age)."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from test_node import Harness, kv, start_node, stamp, stop_node  # noqa: E402

from mmfusion_ros.ros import conversions as conv  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ALL = ["audio", "camera", "imu", "lidar"]


class FaultyHarness(Harness):
    """Publishes like Harness, with a clock offset per sensor and every third LiDAR/audio/IMU message absurd
    when `absurd` is set."""

    def __init__(self, context):
        super().__init__(context)
        self.offset = {k: 0.0 for k in self.next_due}
        self.absurd = False
        self.count = {k: 0 for k in self.next_due}

    def pump(self) -> None:
        now = time.time()
        for k in self.enabled:
            if now < self.next_due[k]:
                continue
            self.next_due[k] = now + (0.1 if k != "imu" else 0.01)
            t = now + self.offset[k]
            self.count[k] += 1
            bad = self.absurd and self.count[k] % 3 == 0
            if k == "camera":
                msg = conv.rgb_to_image(self.image, stamp=t, frame_id="camera")
            elif k == "camera_info":
                msg = conv.intrinsics_to_camera_info(self.intr, stamp=t)
            elif k == "lidar":
                cloud = self.cloud.astype(np.float32)
                if bad:
                    cloud = cloud.copy()
                    cloud[0, 2] = 1e20
                msg = conv.xyzi_to_pointcloud2(cloud, stamp=t, frame_id="lidar")
            elif k == "audio":
                chunk = np.full(1600, 1e30, np.float32) if bad else 0.1 * np.sin(np.arange(1600) * 0.05).astype(
                    np.float32)
                msg = conv.array_to_audio(chunk, 16000, "F32LE", stamp=t - 0.1)
            else:
                msg = conv.imu_to_msg(t, [1e12 if bad else 0.0, 0.0, 9.81], [0.0, 0.0, 0.1])
            self.pub[k].publish(msg)
            self.sent[k].append(now)


@pytest.fixture(scope="module")
def h(ros_context, random_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "fusion_node.log"
    proc = start_node(random_model_dir, "-p", "diagnostics.period_s:=0.2", "-p", "perception.enabled:=false",
                      log_path=log, ns="/robot1")
    harness = FaultyHarness(ros_context)
    try:
        harness.spin_until(lambda: len(harness.perception) >= 3 or proc.poll() is not None, 60,
                           "the node's first fused frames")
    except AssertionError:
        raise AssertionError("node produced no output; its log:\n" + log.read_text()[-3000:])
    yield harness
    harness.node.destroy_node()
    stop_node(proc)


def _full_frames_after(h, t: float, n: int = 5) -> bool:
    return sum(stamp(m.header) > t and sorted(m.present_modalities) == ALL for m in h.perception) >= n


def test_sensor_clocks_an_hour_ahead_still_fuse_and_diagnostics_show_the_offset(h):
    for k in h.offset:
        h.offset[k] = 3600.0
    t = time.time()
    h.spin_until(lambda: _full_frames_after(h, t + 1.0), 20, "full frames with every clock an hour ahead")
    h.spin_until(lambda: (s := h.status("mmfusion: imu input")) is not None and "aligned" in s.message, 10,
                 "the imu input's clock offset in /diagnostics")
    s = h.status("mmfusion: imu input")
    assert s.level == s.WARN and abs(float(kv(s)["clock_offset_s"]) + 3600.0) < 1.0
    assert float(kv(s)["age_s"]) > -0.05  # on the node clock, not 3600 s in the future


def test_a_sensor_clock_reset_30_s_back_recovers_within_a_second(h):
    h.offset["lidar"] = -30.0
    t = time.time()
    h.spin_until(lambda: _full_frames_after(h, t + 1.0), 20, "frames with LiDAR after its clock reset")
    h.spin_until(lambda: int(kv(h.status("mmfusion: lidar input")).get("clock_jumps", "0")) >= 1, 10,
                 "the jump in /diagnostics")


def test_one_message_in_three_absurd_keeps_output_coming_with_every_sensor(h):
    for k in h.offset:
        h.offset[k] = 0.0
    h.absurd = True
    t = time.time()
    try:
        h.spin_until(lambda: _full_frames_after(h, t + 1.5, n=10), 25, "full frames with absurd messages")
    finally:
        h.absurd = False
    for name in ("audio", "imu"):
        s = h.status(f"mmfusion: {name} input")
        assert int(kv(s)["rejected"]) > 0 and "limits." in kv(s)["last_error"]
