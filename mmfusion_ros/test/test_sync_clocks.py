"""core.sync sensor clocks: offsets against the receive clock, zero stamps, clock resets, duplicates and
absurd values. A small simulated robot (camera and LiDAR at 10 Hz, audio chunks, IMU at 100 Hz) is fed to
the Collector with receive times, the way the node (its clock) and `mmfusion process` (record time) do;
hypothesis draws the clock faults. Frames must keep coming and every message lost must be counted."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.core.types import Modality

T0 = 1_735_689_600.0  # receive clock: a realistic epoch
DAY = 86400.0
AUDIO_RATE, CHUNK = 1600, 160  # small rates keep the property tests fast; chunks of 0.1 s
PERIOD = {"camera": 0.1, "lidar": 0.1, "audio": CHUNK / AUDIO_RATE, "imu": 0.01}


def cfg(**kw) -> SyncConfig:
    base = dict(audio_rate=AUDIO_RATE, imu_rate=100.0)
    base.update(kw)
    return SyncConfig(**base)


@dataclass
class Sensor:
    """One sensor's clock: header stamp = true time + offset, + jump after `jump_at` (receive clock)."""

    name: str
    offset: float = 0.0
    jump_at: Optional[float] = None
    jump: float = 0.0
    zero: bool = False

    def stamp(self, t: float) -> float:
        if self.zero:
            return 0.0
        s = t + self.offset
        if self.jump_at is not None and t >= self.jump_at:
            s += self.jump
        return s


@dataclass
class Run:
    """What a simulated run produced."""

    frames: list = field(default_factory=list)
    calls: Dict[str, int] = field(default_factory=dict)  # add_* calls per modality
    raised: Dict[str, int] = field(default_factory=dict)  # add_* calls that raised ValueError
    collector: Optional[Collector] = None
    lines: List[str] = field(default_factory=list)


def simulate(sensors: Dict[str, Sensor], seconds: float = 4.0, latency: float = 0.01, seed: int = 0,
             duplicate_every: int = 0, absurd_every: int = 0, garbage_every: int = 0, **sync) -> Run:
    """Messages of every sensor in receive order; the Collector polled at each receive time (as offline)."""
    rng = np.random.default_rng(seed)
    run = Run(calls={m: 0 for m in PERIOD}, raised={m: 0 for m in PERIOD})
    c = Collector(cfg(**sync), log=run.lines.append)
    run.collector = c
    events = []  # (receive time, modality, true time)
    for m, p in PERIOD.items():
        if m not in sensors:
            continue
        for k in range(int(seconds / p)):
            t = T0 + k * p
            events.append((t + p * (m == "audio") + rng.uniform(0, latency), m, t))
    events.sort()
    for i, (r, m, t) in enumerate(events):
        s = sensors[m].stamp(t)
        if garbage_every and i % garbage_every == garbage_every - 1:
            s = float(rng.choice([2.1e9, 12.5, s - 1e6]))  # one absurd stamp now and then (ROS times: < 2^31 s)
        sends = 2 if duplicate_every and i % duplicate_every == 0 else 1
        for _ in range(sends):
            run.calls[m] += 1
            absurd = absurd_every and i % absurd_every == absurd_every - 1
            try:
                if m == "camera":
                    c.add_image(s, np.zeros((4, 6, 3), np.uint8), received=r)
                elif m == "lidar":
                    pts = np.ones((8, 4), np.float32)
                    c.add_lidar(s, pts[:, :3] if absurd else pts, received=r)  # absurd: wrong shape
                elif m == "audio":
                    x = np.full(CHUNK, np.nan if absurd else 0.1, np.float32)
                    c.add_audio(s, x, AUDIO_RATE, received=r)
                else:
                    c.add_imu(s, [np.inf if absurd else 0.0, 0.0, 9.81], np.zeros(3), received=r)
            except ValueError:
                run.raised[m] += 1
        run.frames += c.poll(r)
    return run


def accounted(run: Run) -> None:
    """Every add_* call is exactly one of: buffered, duplicate, too old, dropped during a clock jump, raised."""
    st_ = run.collector.stats()
    for m in PERIOD:
        s = st_[m]
        assert s["received"] + s["duplicates"] + s["dropped_old"] + s["clock_dropped"] + run.raised[m] \
            == run.calls[m], (m, s, run.raised[m], run.calls[m])


def presence(run: Run, m: str, after: float = T0 + 0.6) -> float:
    fs = [f for f in run.frames if f.stamp >= after]
    return sum(f.present[Modality(m)] for f in fs) / max(len(fs), 1)


# ---- examples ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [-237 * DAY, 90 * DAY, 3600.0, -30.0, 0.6])
def test_a_sensor_clock_off_by_more_than_the_threshold_is_aligned_and_warned_once(offset):
    sensors = {m: Sensor(m) for m in PERIOD}
    sensors["lidar"].offset = offset
    run = simulate(sensors)
    assert presence(run, "lidar") == 1.0 and presence(run, "camera") == 1.0
    st_ = run.collector.stats()["lidar"]
    assert st_["clock_aligned"] and st_["clock_offset_s"] == pytest.approx(-offset, abs=0.02)
    warn = [ln for ln in run.lines if "lidar" in ln]
    assert len(warn) == 1 and "aligning" in warn[0]
    assert float(re.search(r"are ([0-9.]+) s", warn[0]).group(1)) == pytest.approx(abs(offset), abs=0.02)
    assert ("ahead" in warn[0]) == (offset > 0)
    # the frames' LiDAR stamps are on the receive clock, never after the frame's receive time
    f = run.frames[-1]
    assert abs(f.stamps[Modality.LIDAR] - f.stamp) < 0.5
    accounted(run)


def test_normal_latency_is_measured_and_left_alone():
    run = simulate({m: Sensor(m) for m in PERIOD}, latency=0.03)
    for m in PERIOD:
        s = run.collector.stats()[m]
        assert not s["clock_aligned"] and 0.0 <= s["clock_offset_s"] < 0.03
    assert run.lines == []
    assert all(presence(run, m) == 1.0 for m in PERIOD)


def test_zero_stamps_fall_back_to_the_receive_time_with_one_warning():
    sensors = {m: Sensor(m, zero=(m in ("camera", "imu"))) for m in PERIOD}
    run = simulate(sensors)
    assert all(presence(run, m) == 1.0 for m in PERIOD)
    st_ = run.collector.stats()
    assert st_["imu"]["zero_stamps"] == run.calls["imu"] and st_["imu"]["duplicates"] == 0
    assert st_["camera"]["zero_stamps"] == run.calls["camera"]
    assert sorted(ln.split(":")[0] for ln in run.lines) == ["camera", "imu"]
    assert all("zero" in ln for ln in run.lines)
    accounted(run)


@pytest.mark.parametrize("jump", [-30.0, -2.0, 3600.0, 1.5])
def test_a_sensor_clock_reset_recovers_within_one_timeout(jump):
    """Every sensor's clock jumps at T0 + 2 s (the receive clock goes on): no frame loses a modality."""
    sensors = {m: Sensor(m, jump_at=T0 + 2.0, jump=jump) for m in PERIOD}
    run = simulate(sensors)
    st_ = run.collector.stats()
    for m in PERIOD:
        assert presence(run, m) == 1.0, m
        assert st_[m]["clock_jumps"] == 1 and st_[m]["clock_aligned"]
        # the messages that confirmed the jump were placed at their receive time: nothing lost
        assert st_[m]["clock_dropped"] == 0
    assert st_["resets"] == 0  # one sensor's clock is not a reason to drop the others' buffers
    assert sum("jumped" in ln for ln in run.lines) == 4
    accounted(run)


def test_a_late_burst_is_not_a_clock_jump():
    c = Collector(cfg())
    for k in range(100):  # IMU at 100 Hz, 2 ms latency
        assert c.add_imu(T0 + 0.01 * k, np.zeros(3), np.zeros(3), received=T0 + 0.01 * k + 0.002)
    t_stall = T0 + 1.0 + 0.4
    for k in range(100, 105):  # a stalled executor delivers five samples 0.4 s late, all at once
        c.add_imu(T0 + 0.01 * k, np.zeros(3), np.zeros(3), received=t_stall)
    for k in range(105, 200):
        assert c.add_imu(T0 + 0.01 * k, np.zeros(3), np.zeros(3), received=max(t_stall, T0 + 0.01 * k + 0.002))
    s = c.stats()["imu"]
    assert s["clock_jumps"] == 0 and not s["clock_aligned"] and abs(s["clock_offset_s"]) < 0.01
    assert s["received"] == 200


def test_stale_message_after_a_bag_loop_is_dropped_and_counted():
    """Replay loops: the receive clock and the stamps go back together (one reset); a message sent
    before the loop but received after it disagrees with the clock and is dropped, counted."""
    c = Collector(cfg(delay_s=0.0, lookahead_s=0.0))
    for k in range(300):
        c.add_imu(T0 + 0.01 * k, np.zeros(3), np.zeros(3), received=T0 + 0.01 * k)
    c.poll(T0 + 3.0)
    c.poll(T0)  # the clock starts over
    assert not c.add_lidar(T0 + 2.99, np.ones((4, 4), np.float32), received=T0 + 0.001)
    for k in range(30):
        c.add_imu(T0 + 0.01 * k, np.zeros(3), np.zeros(3), received=T0 + 0.01 * k)
        c.add_lidar(T0 + 0.01 * k, np.ones((4, 4), np.float32), received=T0 + 0.01 * k)
    frames = c.poll(T0 + 0.3)
    s = c.stats()
    assert s["resets"] == 1 and s["lidar"]["clock_dropped"] + s["lidar"]["dropped_old"] == 1
    assert frames and frames[-1].present[Modality.LIDAR] and frames[-1].present[Modality.IMU]


def test_stamps_without_a_receive_time_are_taken_as_they_are():
    c = Collector(cfg())
    assert c.add_imu(T0 - 237 * DAY, np.zeros(3), np.zeros(3))
    assert c.stats()["imu"]["newest_stamp"] == T0 - 237 * DAY and c.stats()["imu"]["clock_offset_s"] is None
    with pytest.raises(ValueError, match="receive time"):
        c.add_imu(T0, np.zeros(3), np.zeros(3), received=float("nan"))


def test_audio_offset_is_measured_against_the_end_of_the_chunk():
    c = Collector(cfg())
    for k in range(20):  # 0.5 s chunks, received 5 ms after their last sample
        c.add_audio(T0 + 0.5 * k, np.zeros(800, np.float32), AUDIO_RATE, received=T0 + 0.5 * (k + 1) + 0.005)
    s = c.stats()["audio"]
    assert not s["clock_aligned"] and s["clock_offset_s"] == pytest.approx(0.005, abs=1e-4)


# ---- properties -------------------------------------------------------------------------------------------
HUGE = st.sampled_from([-237 * DAY, -3600.0, -30.0, -2.0, 2.0, 30.0, 3600.0, 90 * DAY])
SMALL = st.floats(-0.02, 0.02)  # well within every sensor's threshold


@st.composite
def clocks(draw):
    sensors = {}
    for m in PERIOD:
        kind = draw(st.sampled_from(["ok", "off", "zero"]))
        s = Sensor(m, offset=draw(HUGE) if kind == "off" else draw(SMALL), zero=kind == "zero")
        if kind != "zero" and draw(st.booleans()):
            s.jump_at = T0 + draw(st.floats(1.0, 3.0))
            s.jump = draw(HUGE)
        sensors[m] = s
    return sensors


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sensors=clocks(), seed=st.integers(0, 2**16), dup=st.sampled_from([0, 7]),
       absurd=st.sampled_from([0, 5]), garbage=st.sampled_from([0, 23]))
def test_property_frames_keep_coming_and_every_loss_is_counted(sensors, seed, dup, absurd, garbage):
    run = simulate(sensors, seconds=4.0, seed=seed, duplicate_every=dup, absurd_every=absurd,
                   garbage_every=garbage)
    accounted(run)
    # frames at the 10 Hz rate all the way through
    stamps = np.array([f.stamp for f in run.frames])
    assert len(stamps) >= 35 and np.all(np.diff(stamps) < 0.11)
    st_ = run.collector.stats()
    for m, s in sensors.items():
        # every sensor stays in the frames, whatever its clock does (absurd and garbage messages only thin
        # it out); a duplicate is recognised as one
        assert presence(run, m) >= (0.9 if (absurd or garbage) else 1.0), (m, s)
        if dup and not s.zero and not garbage:
            assert st_[m]["duplicates"] > 0
        if s.jump_at is not None and not garbage:
            assert st_[m]["clock_jumps"] == 1, (m, s)
    assert st_["resets"] == 0


@settings(max_examples=20, deadline=None)
@given(stamps=st.lists(st.floats(-2.0**32, 2.0**32, allow_nan=False), min_size=1, max_size=60),
       received=st.floats(0, 1e10))
def test_property_any_finite_stamp_is_either_buffered_or_counted(stamps, received):
    c = Collector(cfg())
    for i, s in enumerate(stamps):
        c.add_imu(s, np.zeros(3), np.zeros(3), received=received + 0.01 * i)
        c.poll(received + 0.01 * i)
    s = c.stats()["imu"]
    assert s["received"] + s["duplicates"] + s["dropped_old"] + s["clock_dropped"] == len(stamps)
    assert s["clock_offset_s"] is None if all(x == 0.0 for x in stamps) else math.isfinite(s["clock_offset_s"])


def test_in_order_messages_past_the_buffer_limit_are_not_counted_out_of_order():
    c = Collector(cfg(max_messages=4))
    for k in range(10):
        assert c.add_lidar(T0 + 0.1 * k, np.ones((2, 4), np.float32), received=T0 + 0.1 * k)
    assert c.stats()["lidar"]["out_of_order"] == 0 and c.stats()["lidar"]["received"] == 10


# ---- watermarks -------------------------------------------------------------------------------------------
def test_a_frame_is_cut_once_every_live_input_is_past_its_time_with_delay_as_the_bound():
    c = Collector(cfg(trigger="camera", delay_s=0.05, lookahead_s=0.05, audio_rate=1600))
    c.poll(T0 - 1.0)
    for k in range(101):  # IMU at 100 Hz up to T0 - 0.01, 2 ms latency; audio in 0.1 s chunks up to T0 - 0.1
        c.add_imu(T0 - 1.01 + 0.01 * k, np.zeros(3), np.zeros(3), received=T0 - 1.01 + 0.01 * k + 0.002)
        if k % 10 == 0 and k < 100:
            c.add_audio(T0 - 1.1 + 0.01 * k, np.zeros(160, np.float32), 1600, received=T0 - 1.0 + 0.01 * k + 0.002)
        c.poll(T0 - 1.01 + 0.01 * k + 0.002)
    c.add_lidar(T0 - 0.05, np.ones((4, 4), np.float32), received=T0 - 0.048)
    c.add_image(T0, np.zeros((4, 6, 3), np.uint8), received=T0 + 0.002)
    assert c.poll(T0 + 0.002) == []  # the IMU and the audio have not reached T0 yet
    c.add_imu(T0, np.zeros(3), np.zeros(3), received=T0 + 0.002)
    c.add_audio(T0 - 0.1, np.zeros(160, np.float32), 1600, received=T0 + 0.002)
    # every live input is past T0 (the LiDAR: nothing stamped before T0 can still be in flight given its
    # 2 ms latency): cut 5 ms after T0, not 50
    (f,) = c.poll(T0 + 0.005)
    assert f.stamp == T0 and all(f.present.values())
    assert len(f.audio) == 1600 and f.imu.shape[0] >= 100  # whole windows up to the frame time
    # a chunked stream (audio) whose next chunk is late holds the next frame, for delay_s at most
    c.add_imu(T0 + 0.1, np.zeros(3), np.zeros(3), received=T0 + 0.102)
    c.add_image(T0 + 0.1, np.zeros((4, 6, 3), np.uint8), received=T0 + 0.102)
    assert c.poll(T0 + 0.12) == []
    (f,) = c.poll(T0 + 0.15)
    assert f.stamp == T0 + 0.1 and f.present[Modality.AUDIO]  # the audio up to T0, within its timeout


def test_no_early_cut_right_after_the_start():
    """The first frames wait delay_s: sensors that have not delivered yet are not known to exist."""
    c = Collector(cfg(trigger="camera"))
    c.add_image(T0, np.zeros((4, 6, 3), np.uint8), received=T0)
    assert c.poll(T0) == []
    c.add_imu(T0 + 0.01, np.zeros(3), np.zeros(3), received=T0 + 0.01)
    (f,) = c.poll(T0 + 0.05)
    assert f.present[Modality.IMU]


def test_watermarks_cut_rate_ticks_early_with_windows_as_complete():
    """Camera 15 Hz, LiDAR 10 Hz, IMU 200 Hz, 20 ms audio chunks, 1-3 ms latency; the 10 Hz rate trigger."""
    rng = np.random.default_rng(0)
    c = Collector(cfg(audio_rate=16000, imu_rate=200.0))
    ev = []
    for m, p in (("camera", 1 / 15), ("lidar", 0.1), ("imu", 0.005), ("audio", 0.02)):
        for k in range(int(4.0 / p)):
            t = T0 + k * p
            ev.append((t + (p if m == "audio" else 0.0) + rng.uniform(0.001, 0.003), m, t))
    ev.sort()
    lat, frames, i = [], [], 0
    for now in np.arange(T0, T0 + 4.0, 0.005):  # the node's worker polls every 5 ms
        while i < len(ev) and ev[i][0] <= now:
            r, m, t = ev[i]
            i += 1
            if m == "camera":
                c.add_image(t, np.zeros((4, 4, 3), np.uint8), received=r)
            elif m == "lidar":
                c.add_lidar(t, np.ones((4, 4), np.float32), received=r)
            elif m == "imu":
                c.add_imu(t, np.zeros(3), np.zeros(3), received=r)
            else:
                c.add_audio(t, np.zeros(320, np.float32), 16000, received=r)
        for f in c.poll(now):
            lat.append(now - f.stamp)
            frames.append(f)
    lat = np.array(lat[25:])  # once the 2 s IMU window has filled
    assert np.percentile(lat, 50) <= 0.006 and lat.max() <= 0.05 + 1e-9
    late = frames[25:]
    assert all(all(f.present.values()) for f in late)
    assert all(f.imu.shape[0] == 400 for f in late) and all(len(f.audio) >= 15800 for f in late)
