"""/diagnostics and sensor clocks: each input shows its measured clock offset, ages are measured on the
receive clock (so an aligned sensor is not stale), and a negative age is never OK."""

from __future__ import annotations

import numpy as np

from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.ros.diagnostics import OK, WARN, NodeDiagnostics

T0 = 1_735_689_600.0
TIMEOUTS = {"camera": 0.5, "lidar": 0.5, "audio": 0.5, "imu": 0.25}


def _status(arr, group):
    st = {s.name: s for s in arr.status}[f"mmfusion: {group} input"]
    return st, {kv.key: kv.value for kv in st.values}


def _feed(offset: float, n: int = 100, jump_at: int = -1, jump: float = 0.0):
    """IMU at 100 Hz whose header stamps are `offset` s off the receive clock (and jump at message jump_at)."""
    c, d = Collector(SyncConfig()), NodeDiagnostics("mmfusion", TIMEOUTS)
    d.add_input("imu", "imu/data", "imu")
    for k in range(n):
        r = T0 + 0.01 * k
        s = r + offset + (jump if 0 <= jump_at <= k else 0.0)
        c.add_imu(s, np.zeros(3), np.zeros(3), received=r)
        d.message("imu", s, r)
    return c, d, T0 + 0.01 * n


def test_sensor_an_hour_ahead_is_aligned_and_said_so_not_ok_at_a_negative_age():
    c, d, now = _feed(3600.0)
    st, kv = _status(d.build(now, sync=c.stats()), "imu")
    assert st.level == WARN and "3600.000 s ahead of the node clock: aligned" in st.message
    assert float(kv["clock_offset_s"]) == -3600.0 and kv["clock_aligned"] == "true"
    assert 0.0 <= float(kv["age_s"]) < 0.25 and "stale" not in st.message  # measured on the receive clock
    # without the collector's clocks (an old caller) the raw stamps give a negative age: never OK
    st, kv = _status(d.build(now), "imu")
    assert st.level == WARN and float(kv["age_s"]) < -3599 and "ahead of the node clock" in st.message


def test_sensor_237_days_behind_is_not_reported_stale():
    c, d, now = _feed(-237 * 86400.0)
    st, kv = _status(d.build(now, sync=c.stats()), "imu")
    assert "stale" not in st.message and "(237.0 days)" in st.message and float(kv["age_s"]) < 0.25


def test_healthy_clock_is_ok_with_its_offset_shown():
    c, d, now = _feed(-0.002)
    st, kv = _status(d.build(now, sync=c.stats()), "imu")
    assert st.level == OK and kv["clock_offset_s"] == "0.002" and kv["clock_aligned"] == "false"


def test_a_clock_jump_warns_in_the_next_report_only():
    c, d, now = _feed(0.0, n=200, jump_at=100, jump=-30.0)
    st, kv = _status(d.build(now, sync=c.stats()), "imu")
    assert st.level == WARN and "1 sensor clock jump(s)" in st.message and kv["clock_jumps"] == "1"
    st, _ = _status(d.build(now + 0.001, sync=c.stats()), "imu")
    assert "jump" not in st.message  # still aligned (30 s behind now), but the jump was reported once
