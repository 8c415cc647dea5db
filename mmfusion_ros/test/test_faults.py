"""Fault isolation at conversion: physical plausibility bounds (ros/conversions.py Limits, the node's
limits.* parameters) reject an absurd audio chunk or IMU sample and drop an absurd LiDAR point, so one
bad value costs only itself, never the other sensors of the frame."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion_ros.ros import conversions as conv
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.inputs import InputFeeder


def _cloud(points: np.ndarray):
    return conv.cdr_roundtrip(conv.xyzi_to_pointcloud2(points.astype(np.float32), stamp=100.0, frame_id="lidar"))


def _scene(rng, n=2000) -> np.ndarray:
    """(n, 4) ground plane plus a box 6 m ahead."""
    ground = np.c_[rng.uniform(-10, 10, (n, 2)), np.full(n, -1.5), rng.uniform(0, 1, n)]
    box = np.c_[rng.uniform(5.5, 6.5, (300, 1)), rng.uniform(-0.5, 0.5, (300, 1)), rng.uniform(-1.5, 0, (300, 1)),
                rng.uniform(0, 1, (300, 1))]
    return np.r_[ground, box].astype(np.float32)


def test_one_absurd_lidar_point_is_dropped_and_counted_and_the_sweep_kept():
    pts = _scene(np.random.default_rng(0))
    bad = pts.copy()
    bad[7, 2] = 1e20  # one return at z = 1e20 m (finite: only a range bound catches it)
    bad[8, :3] = [2e3, 0, 0]  # and one beyond the 1000 m default
    out, dropped = conv.pointcloud2_to_xyzi_counted(_cloud(bad))
    assert dropped == 2 and len(out) == len(pts) - 2
    np.testing.assert_array_equal(out, np.delete(pts, [7, 8], axis=0))
    # a bound of 50 m keeps the 20 m scene and drops both
    out, dropped = conv.pointcloud2_to_xyzi_counted(_cloud(bad), conv.Limits(lidar_max_range_m=50.0))
    assert dropped == 2
    out, dropped = conv.pointcloud2_to_xyzi_counted(_cloud(bad), conv.Limits(lidar_max_range_m=5.0))
    assert dropped > 300 and np.sqrt((out[:, :3] ** 2).sum(1)).max() <= 5.0
    # non-finite intensity is as bad as a non-finite coordinate
    bad[9, 3] = np.nan
    assert conv.pointcloud2_to_xyzi_counted(_cloud(bad))[1] == 3


def test_perception_survives_the_absurd_point_once_converted():
    """Open3D fails on a cloud spanning 1e20 m ("voxel_size is too small"); after conversion the point is gone."""
    from mmfusion_ros.core.perception import Perception, PerceptionConfig

    pts = _scene(np.random.default_rng(1))
    bad = pts.copy()
    bad[0, 2] = 1e20
    per = Perception(PerceptionConfig())
    clean, _ = conv.pointcloud2_to_xyzi_counted(_cloud(bad))
    objs = per.process(clean, 100.0)
    assert any(abs(o.center[0] - 6.0) < 1.0 for o in objs)


def _audio_msg(samples: np.ndarray, encoding="F32LE"):
    return conv.cdr_roundtrip(conv.array_to_audio(samples, 16000, encoding=encoding, stamp=100.0))


def test_an_absurd_audio_chunk_is_rejected_a_loud_one_is_not():
    x = np.zeros((1600, 1), np.float32)
    x[5] = 1e30
    with pytest.raises(conv.ConversionError, match="limits.audio_max_abs"):
        conv.audio_to_array(_audio_msg(x))
    x[5] = 3.0  # clipped gain: implausible for full scale 1 but within the default bound
    a, rate = conv.audio_to_array(_audio_msg(x))
    assert rate == 16000 and a.max() == 3.0
    with pytest.raises(conv.ConversionError, match="beyond the plausible 2"):
        conv.audio_to_array(_audio_msg(x), conv.Limits(audio_max_abs=2.0))
    # S16LE cannot go beyond full scale: never rejected by the bound
    assert conv.audio_to_array(_audio_msg(np.full((160, 2), 32767, np.int16), "S16LE"))[0].shape == (160, 2)


@pytest.mark.parametrize("accel,gyro,field", [((1e12, 0, 0), (0, 0, 0), "linear_acceleration"),
                                              ((0, 0, 9.81), (0, 200.0, 0), "angular_velocity")])
def test_an_absurd_imu_sample_is_rejected(accel, gyro, field):
    with pytest.raises(conv.ConversionError, match=field):
        conv.imu_to_reading(conv.cdr_roundtrip(conv.imu_to_msg(100.0, accel, gyro)))


def test_a_hard_but_real_imu_sample_is_kept():
    msg = conv.imu_to_msg(100.0, (150.0, 0, 9.81), (0, 0, 30.0))  # 15 g, 30 rad/s
    r = conv.imu_to_reading(conv.cdr_roundtrip(msg))
    assert r.accel[0] == 150.0


def test_limits_are_parameters_validated_and_used_by_the_input_path():
    values = P.validate({"limits.imu_max_accel": 20.0, "limits.lidar_max_range_m": 5})
    lim = conv.Limits.from_params(values)
    assert lim == conv.Limits(imu_max_accel=20.0, lidar_max_range_m=5.0)
    with pytest.raises(P.ParamError, match="limits.audio_max_abs"):
        P.validate({"limits.audio_max_abs": 0.0})

    class Col:  # records what the Collector would get
        def __init__(self):
            self.calls = []

        def add_imu(self, stamp, accel, gyro, *, received=None):
            self.calls.append(("imu", stamp))
            return True

        def add_lidar(self, stamp, points, frame_id=None, *, received=None, dropped_points=0):
            self.calls.append(("lidar", len(points), dropped_points))
            return True

    col = Col()
    feeder = InputFeeder(col, values)
    with pytest.raises(conv.ConversionError, match="limits.imu_max_accel"):
        feeder.feed("imu", conv.cdr_roundtrip(conv.imu_to_msg(100.0, (25.0, 0, 0), (0, 0, 0))), received=100.0)
    feeder.feed("lidar", _cloud(np.array([[1, 0, 0, 0], [9, 0, 0, 0]], np.float32)), received=100.0)
    assert col.calls == [("lidar", 1, 1)]


def test_one_message_in_three_absurd_keeps_every_sensor_in_the_frames():
    """Collector-level: every third LiDAR/audio/IMU message absurd (rejected or thinned at conversion);
    the frames keep all four sensors and the losses are counted."""
    from mmfusion_ros.core.sync import Collector, SyncConfig
    from mmfusion_ros.core.types import Modality

    col = Collector(SyncConfig(audio_rate=16000, imu_rate=100.0))
    feeder = InputFeeder(col, P.validate({}))
    rejected, frames = {"lidar": 0, "audio": 0, "imu": 0}, []
    t0, rng = 1000.0, np.random.default_rng(2)
    for k in range(300):  # 3 s: IMU at 100 Hz, camera/LiDAR/audio at 10 Hz
        t = t0 + 0.01 * k
        msgs = [("imu", conv.imu_to_msg(t, (1e12 if k % 3 == 2 else 0.1, 0, 9.81), (0, 0, 0.1)))]
        if k % 10 == 0:
            j = k // 10
            pts = _scene(rng, 200)
            if j % 3 == 2:
                pts[0, 2] = 1e20
            x = np.full((1600, 1), 1e30 if j % 3 == 2 else 0.1, np.float32)
            msgs += [("image", conv.rgb_to_image(np.zeros((8, 8, 3), np.uint8), t)),
                     ("lidar", conv.xyzi_to_pointcloud2(pts, t)),
                     ("audio", conv.array_to_audio(x, 16000, "F32LE", t - 0.1))]
        for name, m in msgs:
            try:
                feeder.feed(name, conv.cdr_roundtrip(m), received=t)
            except conv.ConversionError:
                rejected[name] += 1
        frames += col.poll(t)
    st = col.stats()
    assert rejected == {"lidar": 0, "audio": 10, "imu": 100} and st["lidar"]["points_dropped"] == 10
    late = [f for f in frames if f.stamp > t0 + 1.0]
    assert len(late) >= 18
    for m in Modality.CAMERA, Modality.LIDAR, Modality.AUDIO, Modality.IMU:
        assert all(f.present[m] for f in late), m
    assert all(np.abs(f.audio).max() < 1.0 for f in late) and all(np.abs(f.lidar[:, :3]).max() < 100 for f in late)
