"""core.sync: the trigger policy, timeouts and presence, windows at the model rates, reordering,
duplicates and the backwards-jump reset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mmfusion_ros.core.preprocess import model_inputs
from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.core.types import CameraIntrinsics, Modality

T0 = 1000.0  # stamps like a robot's epoch-ish clock, far from zero


def rgb(v: int = 0) -> np.ndarray:
    return np.full((4, 6, 3), v, np.uint8)


def cloud(n: int = 5) -> np.ndarray:
    return np.arange(n * 4, dtype=np.float32).reshape(n, 4)


def feed_imu(c: Collector, t0: float, t1: float, rate: float, fn=lambda t: (np.zeros(3), np.zeros(3))):
    for t in np.arange(t0, t1, 1.0 / rate):
        a, g = fn(t)
        c.add_imu(t, a, g)


def cfg(**kw) -> SyncConfig:
    base = dict(delay_s=0.0, lookahead_s=0.0)
    base.update(kw)
    return SyncConfig(**base)


@pytest.mark.parametrize("field,value", [
    ("trigger", "radar"), ("rate_hz", 0), ("camera_timeout_s", -1.0), ("imu_timeout_s", float("nan")),
    ("audio_window_s", 0.0), ("buffer_s", 1.5), ("delay_s", -0.1), ("max_messages", 0), ("audio_rate", True),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyncConfig(**{field: value}).validate()


def test_rate_trigger_emits_on_the_poll_clock_with_presence_and_stamps():
    c = Collector(cfg(rate_hz=10))
    c.add_image(T0 + 0.00, rgb(1))
    c.add_lidar(T0 + 0.02, cloud())
    feed_imu(c, T0 - 0.5, T0 + 0.05, 200)
    frames = c.poll(T0 + 0.05)
    assert [round(f.stamp, 6) for f in frames] == [T0]  # first poll: the newest due tick only
    f = frames[0]
    assert f.present == {Modality.CAMERA: True, Modality.LIDAR: False, Modality.AUDIO: False, Modality.IMU: True}
    assert list(f.presence_mask()) == [1, 0, 0, 1]
    assert f.stamps[Modality.CAMERA] == T0
    assert f.stamps[Modality.IMU] <= T0  # never data after the frame time (lookahead 0)
    assert Modality.LIDAR not in f.stamps  # the sweep at T0+0.02 is after the frame
    # the next polls emit the following ticks, each once
    assert c.poll(T0 + 0.08) == []
    frames = c.poll(T0 + 0.21)
    assert [round(f.stamp - T0, 6) for f in frames] == [0.1, 0.2]
    assert frames[0].stamps[Modality.LIDAR] == T0 + 0.02
    assert c.stats()["frames"] == 3


def test_timeouts_leave_a_stale_modality_out_and_count_it():
    c = Collector(cfg(trigger="imu", camera_timeout_s=0.5, lidar_timeout_s=0.3))
    c.add_image(T0, rgb())
    c.add_lidar(T0, cloud())
    for dt, want_cam, want_lidar in [(0.2, True, True), (0.4, True, False), (0.6, False, False)]:
        c.add_imu(T0 + dt, np.zeros(3), np.zeros(3))
        (f,) = c.poll(T0 + dt)
        assert f.stamp == pytest.approx(T0 + dt)
        assert (f.image is not None, f.lidar is not None) == (want_cam, want_lidar), dt
        assert f.present[Modality.IMU]
    s = c.stats()
    assert s["camera"]["frames_without"] == 1
    assert s["lidar"]["frames_without"] == 2
    assert s["audio"]["frames_without"] == 3
    assert s["imu"]["frames_without"] == 0


def test_message_trigger_one_frame_per_trigger_message_after_the_delay():
    c = Collector(SyncConfig(trigger="camera", delay_s=0.05, lookahead_s=0.05))
    info = CameraIntrinsics(6, 4, np.eye(3))
    c.add_camera_info(T0, info)
    c.add_image(T0, rgb(1))
    c.add_lidar(T0 + 0.03, cloud())  # stamped just after the image: within the lookahead
    c.add_imu(T0 - 0.01, np.zeros(3), np.zeros(3))  # the IMU is not past the frame time yet: the frame waits
    assert c.poll(T0 + 0.01) == []  # waiting for late messages
    c.add_image(T0 + 0.1, rgb(2))
    frames = c.poll(T0 + 0.2)
    assert [f.stamp for f in frames] == [T0, T0 + 0.1]
    assert frames[0].camera is info and frames[0].image[0, 0, 0] == 1
    assert frames[0].stamps[Modality.LIDAR] == T0 + 0.03
    assert frames[1].image[0, 0, 0] == 2
    # a duplicate trigger message neither buffers nor triggers
    c.add_image(T0 + 0.1, rgb(3))
    assert c.poll(T0 + 1.0) == []
    assert c.stats()["camera"]["duplicates"] == 1


def test_no_frame_without_any_data_and_no_frame_before_data():
    c = Collector(cfg())
    assert c.poll(T0) == []
    assert c.stats()["empty_ticks"] == 1


def test_imu_window_from_100hz_is_resampled_to_200hz_and_keeps_the_signal():
    c = Collector(cfg(trigger="rate", imu_window_s=2.0, imu_rate=200.0))
    # accel x is a slow ramp, gyro z a 1 Hz sine: linear resampling keeps both
    feed_imu(c, T0, T0 + 3.0, 100, lambda t: ([t - T0, 0, 9.81], [0, 0, np.sin(2 * np.pi * (t - T0))]))
    (f,) = c.poll(T0 + 3.0)
    assert f.imu_rate == 200.0
    assert f.imu.shape == (400, 6)
    end = f.stamps[Modality.IMU]
    tt = end - np.arange(400)[::-1] / 200.0 - T0
    np.testing.assert_allclose(f.imu[:, 0], tt, atol=1e-4)
    np.testing.assert_allclose(f.imu[:, 5], np.sin(2 * np.pi * tt), atol=2e-3)
    assert model_inputs(f)["imu"].shape == (6, 400)


def test_short_imu_history_gives_a_short_window_that_preprocessing_pads():
    c = Collector(cfg())
    feed_imu(c, T0, T0 + 0.5, 100)
    (f,) = c.poll(T0 + 0.5)
    assert 95 <= len(f.imu) <= 101  # 0.5 s at 200 Hz, only where data exists
    assert model_inputs(f)["imu"].shape == (6, 400)


def test_audio_window_from_44k1_stereo_is_mono_16k_and_in_time():
    rate, chunk = 44100, 4410  # 0.1 s chunks
    c = Collector(cfg(audio_window_s=1.0, audio_rate=16000))
    freq = 440.0
    for k in range(20):
        t = np.arange(k * chunk, (k + 1) * chunk) / rate
        left = 0.5 * np.sin(2 * np.pi * freq * t)
        c.add_audio(T0 + k * 0.1, np.stack([left, left], 1).astype(np.float32), rate)
    (f,) = c.poll(T0 + 2.0)
    assert f.audio_rate == 16000
    assert f.audio.shape == (16000,)
    assert f.stamps[Modality.AUDIO] == pytest.approx(T0 + 1.9)
    # the window is [1.0, 2.0) s of the tone: compare with the analytic signal away from the edges
    tt = 1.0 + np.arange(16000) / 16000
    want = 0.5 * np.sin(2 * np.pi * freq * tt)
    np.testing.assert_allclose(f.audio[100:-100], want[100:-100], atol=0.03)
    assert model_inputs(f)["audio"].shape == (1, 64, 101)


def test_audio_gap_is_silence_not_shifted_audio():
    c = Collector(cfg())
    ones = np.ones((1600, 1), np.float32)  # 0.1 s at 16 kHz
    c.add_audio(T0, ones, 16000)
    c.add_audio(T0 + 0.5, ones, 16000)  # 0.4 s gap
    (f,) = c.poll(T0 + 0.6)
    # the frame ends at the last sample (T0+0.6); data starts at T0
    assert len(f.audio) == 9600
    assert f.audio[:1600].min() == 1.0 and f.audio[-1600:].min() == 1.0
    assert np.abs(f.audio[1700:7900]).max() == 0.0


def test_out_of_order_messages_are_inserted_in_order():
    c = Collector(cfg(trigger="lidar"))
    for dt in (0.0, 0.2, 0.1, 0.3):
        c.add_lidar(T0 + dt, cloud(int(dt * 10) + 1))
    s = c.stats()["lidar"]
    assert s["received"] == 4 and s["out_of_order"] == 1
    # the late sweep did not trigger a frame of its own (frames stay in time order)
    frames = c.poll(T0 + 1)
    assert [round(f.stamp - T0, 6) for f in frames] == [0.0, 0.2, 0.3]
    # and it is the one a frame between 0.1 and 0.2 gets
    f = c.frame_at(T0 + 0.15)
    assert f.stamps[Modality.LIDAR] == T0 + 0.1 and len(f.lidar) == 2


def test_out_of_order_older_than_the_buffer_is_dropped_and_counted():
    c = Collector(cfg(buffer_s=2.0, reset_jump_s=10.0))
    c.add_imu(T0 + 5.0, np.zeros(3), np.zeros(3))
    assert not c.add_imu(T0 + 1.0, np.zeros(3), np.zeros(3))
    assert c.stats()["imu"]["dropped_old"] == 1
    assert c.stats()["resets"] == 0


def test_duplicates_are_dropped_and_counted():
    c = Collector(cfg())
    assert c.add_imu(T0, np.ones(3), np.zeros(3))
    assert not c.add_imu(T0, np.ones(3), np.zeros(3))
    assert c.stats()["imu"] == dict(received=1, duplicates=1, out_of_order=0, dropped_old=0, frames_without=0,
                                    zero_stamps=0, clock_jumps=0, clock_dropped=0, points_dropped=0,
                                    resets=0, newest_stamp=T0, clock_offset_s=None, clock_aligned=False)


def test_bag_loop_resets_all_buffers_with_one_log_line(caplog):
    c = Collector(cfg(trigger="imu"), log=logging.getLogger("sync-test"))
    feed_imu(c, T0, T0 + 3.0, 50)
    c.add_image(T0 + 2.9, rgb())
    assert len(c.poll(T0 + 3.0)) > 0
    with caplog.at_level(logging.WARNING, logger="sync-test"):
        # the bag starts over: messages and the clock both go back 3 s
        c.add_image(T0, rgb())
        feed_imu(c, T0, T0 + 0.2, 50)
        frames = c.poll(T0 + 0.2)
    assert c.stats()["resets"] == 1
    assert len([r for r in caplog.records if "reset" in r.getMessage()]) == 1
    assert frames and all(f.stamp <= T0 + 0.2 for f in frames)
    assert frames[-1].stamps[Modality.CAMERA] == T0  # nothing from the first pass survived
    assert c.stats()["imu"]["newest_stamp"] < T0 + 0.3


def test_loop_seen_by_clock_first_with_a_stale_message_in_flight_is_one_reset():
    lines = []
    c = Collector(cfg(), log=lines.append)
    feed_imu(c, T0 + 10, T0 + 13, 100)
    c.poll(T0 + 13)
    c.poll(T0 + 0.0)  # /clock of the replay starts over
    assert not c.add_lidar(T0 + 13.0, cloud())  # sent before the loop, arrives after it: stale
    c.add_lidar(T0 + 0.05, cloud())
    feed_imu(c, T0, T0 + 0.3, 100)
    frames = c.poll(T0 + 0.3)
    assert len(lines) == 1 and c.stats()["resets"] == 1
    assert c.stats()["lidar"]["dropped_old"] == 1
    assert frames and frames[-1].stamps[Modality.LIDAR] == T0 + 0.05


def test_loop_seen_by_messages_first_then_by_the_clock_is_one_reset():
    lines = []
    c = Collector(cfg(), log=lines.append)
    feed_imu(c, T0 + 10, T0 + 13, 100)
    c.poll(T0 + 13)
    feed_imu(c, T0, T0 + 0.05, 100)  # the messages start over first
    assert c.poll(T0 + 13.01) == []  # the clock has not followed yet
    feed_imu(c, T0 + 0.05, T0 + 0.3, 100)
    frames = c.poll(T0 + 0.3)  # now it has
    assert len(lines) == 1 and c.stats()["resets"] == 1
    assert frames and frames[-1].stamp == pytest.approx(T0 + 0.3)
    # a later loop is a new jump, reported again
    feed_imu(c, T0 + 0.3, T0 + 3, 100)
    c.poll(T0 + 3)
    feed_imu(c, T0, T0 + 0.1, 100)
    c.poll(T0 + 0.1)
    assert len(lines) == 2 and c.stats()["resets"] == 2


def test_clock_jump_back_resets_with_rate_trigger():
    lines = []
    c = Collector(cfg(), log=lines.append)
    feed_imu(c, T0, T0 + 1, 100)
    c.poll(T0 + 1)
    c.poll(T0 - 5)
    assert c.stats()["resets"] == 1 and len(lines) == 1
    assert c.poll(T0 - 4.9) == []  # buffers empty after the reset


def test_bad_input_raises_a_clear_error():
    c = Collector(cfg())
    with pytest.raises(ValueError, match="image"):
        c.add_image(T0, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="lidar"):
        c.add_lidar(T0, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="audio"):
        c.add_audio(T0, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(ValueError, match="rate"):
        c.add_audio(T0, np.zeros((10, 1), np.float32), 0)
    with pytest.raises(ValueError, match="stamp"):
        c.add_imu(float("nan"), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="imu"):
        c.add_imu(T0, np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        c.add_imu(T0, [0, np.nan, 0], np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        c.add_audio(T0, np.array([[0.0], [np.inf]], np.float32), 16000)
    assert c.stats()["frames"] == 0


def test_empty_lidar_sweep_is_present():
    c = Collector(cfg(trigger="lidar"))
    c.add_lidar(T0, np.zeros((0, 4), np.float32), frame_id="velodyne")
    (f,) = c.poll(T0)
    assert f.present[Modality.LIDAR] and f.lidar.shape == (0, 4) and f.frame_id == "velodyne"
