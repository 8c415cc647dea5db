"""Time-window buffers and the sync policy that turns sensor streams into SensorFrames.

The Collector is driven by the caller's clock (`poll(now)`), so the same code runs on wall time, on
a ROS clock under use_sim_time, and on a bag's recorded timeline in offline processing. A late sensor
never blocks a frame: after its timeout the frame goes out without it and its presence mask says so
(the Autoware fusion-collector policy, not an exact/approximate time synchroniser that waits forever).
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from mmfusion_ros.core.preprocess import audio_resample, resample
from mmfusion_ros.core.types import SENSOR_MODALITIES, CameraIntrinsics, Modality, SensorFrame

#: Trigger values besides a modality name.
RATE_TRIGGER = "rate"
#: Audio chunks whose stamps differ from the end of the previous chunk by less than this many seconds
#: are joined into one continuous run (microphone stamps jitter by a few milliseconds).
AUDIO_JOIN_TOLERANCE_S = 0.01
#: Receive-minus-stamp differences kept per sensor to estimate its clock offset (the median of these).
CLOCK_WINDOW = 15
#: A sensor clock jump (reset back or forward) is believed once this many consecutive messages agree on
#: the new offset and their receive times span at least CLOCK_CONFIRM_S: a burst of messages delivered
#: late together (a stalled executor) or one garbage stamp is not a jump. Until then the disagreeing
#: messages are placed by the offset they agree on (at most their receive time); right after the receive
#: clock itself jumped back (a bag loop) they are dropped and counted instead (`clock_dropped`): they are
#: stale ones from before the loop.
CLOCK_CONFIRM_MESSAGES = 3
CLOCK_CONFIRM_S = 0.05
#: Slack added to an input's largest recent receive latency before its watermark promises that everything
#: stamped earlier has arrived.
WATERMARK_MARGIN_S = 0.002
#: Largest stamp magnitude accepted (ROS time is int32 seconds): beyond it float seconds lose the precision
#: clock offsets are measured with.
MAX_STAMP_S = 2.0 ** 32
#: Log lines per sensor about clock jumps (later jumps are only counted).
CLOCK_JUMP_LOGS = 3


@dataclass
class SyncConfig:
    """How frames are cut from the sensor streams. Times are seconds on the caller's clock."""

    trigger: str = RATE_TRIGGER  # "rate" (fixed rate on the poll clock) or a modality: camera, lidar, audio, imu
    rate_hz: float = 10.0  # frame rate when trigger == "rate"
    camera_timeout_s: float = 0.5  # a camera image older than this (vs the frame time) is left out
    lidar_timeout_s: float = 0.5  # same for a LiDAR sweep
    audio_timeout_s: float = 0.5  # same for the end of the newest audio chunk
    imu_timeout_s: float = 0.25  # same for the newest IMU sample
    audio_window_s: float = 1.0  # length of the audio window handed to the model
    imu_window_s: float = 2.0  # length of the IMU window handed to the model
    audio_rate: int = 16000  # model audio rate, Hz: windows are resampled to it
    imu_rate: float = 200.0  # model IMU rate, Hz: windows are resampled to it
    buffer_s: float = 5.0  # history kept per modality, behind its newest message
    max_messages: int = 16  # most camera images / LiDAR sweeps kept (older ones only help reordering)
    lookahead_s: float = 0.05  # data stamped this long after the frame time, there when it is cut, belongs to it
    delay_s: float = 0.05  # a frame is cut once every live input is past its time, at the latest at time + delay_s
    reset_jump_s: float = 1.0  # time going back by more than this (a bag looping) resets every buffer
    clock_offset_threshold_s: float = 1.0  # stamps off the receive clock by more than this (or timeout/2) get aligned
    frame_id: str = "base_link"  # frame_id of frames without a LiDAR sweep (a sweep's own frame_id wins)

    def timeout(self, modality: Modality) -> float:
        return float(getattr(self, f"{Modality(modality).value}_timeout_s"))

    def validate(self) -> "SyncConfig":
        """Raise ValueError naming the first bad field; returns self so calls chain."""
        names = [m.value for m in SENSOR_MODALITIES]
        if self.trigger != RATE_TRIGGER and self.trigger not in names:
            raise ValueError(f"sync.trigger: {self.trigger!r} is not 'rate' or one of {names}")
        positive = ["rate_hz", "audio_window_s", "imu_window_s", "audio_rate", "imu_rate", "buffer_s",
                     "reset_jump_s", "clock_offset_threshold_s"] + [f"{n}_timeout_s" for n in names]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"sync.{name}: must be a finite number > 0, got {v!r}")
        for name in ("lookahead_s", "delay_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"sync.{name}: must be a finite number >= 0, got {v!r}")
        if not isinstance(self.max_messages, int) or self.max_messages < 1:
            raise ValueError(f"sync.max_messages: must be an integer >= 1, got {self.max_messages!r}")
        longest = max(self.audio_window_s, self.imu_window_s)
        if self.buffer_s < longest:
            raise ValueError(f"sync.buffer_s: {self.buffer_s} is shorter than the longest window ({longest} s)")
        return self


@dataclass
class _Counters:
    received: int = 0  # messages accepted into the buffer
    duplicates: int = 0  # messages with the stamp of one already buffered, dropped
    out_of_order: int = 0  # messages older than the newest buffered one, inserted in order
    dropped_old: int = 0  # out-of-order messages older than the buffer keeps, dropped
    frames_without: int = 0  # frames emitted without this modality (timed out or never seen)
    zero_stamps: int = 0  # messages stamped 0 (a driver without a clock): placed at their receive time
    clock_jumps: int = 0  # times this sensor's clock jumped (reset back or forward) against the receive clock
    clock_dropped: int = 0  # messages dropped while such a jump was being confirmed
    points_dropped: int = 0  # LiDAR points the conversion dropped (non-finite or beyond the range bound)


@dataclass
class _SensorClock:
    """One sensor's header-stamp clock against the receive clock (node clock live, record time offline).

    `offset` = median of the recent (received - stamp); when it is beyond the sensor's threshold the
    sensor's stamps are moved onto the receive clock by it (stamp + offset, never after the receive time),
    so a sensor 237 days behind or an hour ahead still lands in the frames of its time."""

    window: deque = field(default_factory=lambda: deque(maxlen=CLOCK_WINDOW))  # recent received - stamp, s
    pending: List[Tuple[float, float]] = field(default_factory=list)  # (received - stamp, received) of a jump
    offset: Optional[float] = None  # measured offset (median of window), s; None = not measured yet
    aligned: bool = False  # stamps are moved by `offset`
    warned: bool = False  # the WARN about the offset was given
    warned_zero: bool = False  # the WARN about zero stamps was given
    recent: "OrderedDict[float, float]" = field(default_factory=OrderedDict)  # header stamp -> stamp it got
    # (a duplicate message gets the same stamp again, so it is still recognised as a duplicate)


class _TimeBuffer:
    """Items sorted by stamp; pruned to `keep_s` behind the newest and to `max_items`."""

    def __init__(self, keep_s: float, max_items: Optional[int] = None):
        self.keep_s = keep_s
        self.max_items = max_items
        self.stamps: List[float] = []
        self.items: List[Any] = []

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def newest(self) -> Optional[float]:
        return self.stamps[-1] if self.stamps else None

    def insert(self, stamp: float, item: Any) -> str:
        """Insert in stamp order; returns "ok", "out_of_order", "duplicate" or "old"."""
        newest = self.newest
        if newest is not None and stamp < newest - self.keep_s:
            return "old"
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            return "duplicate"
        status = "ok" if i == len(self.stamps) else "out_of_order"  # before pruning shortens the list
        self.stamps.insert(i, stamp)
        self.items.insert(i, item)
        self._prune()
        return status

    def _prune(self) -> None:
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - self.keep_s)
        if self.max_items is not None:
            cut = max(cut, len(self.stamps) - self.max_items)
        if cut > 0:
            del self.stamps[:cut]
            del self.items[:cut]

    def index_at_or_before(self, t: float) -> int:
        """Index of the newest item with stamp <= t, -1 when none."""
        return bisect.bisect_right(self.stamps, t) - 1

    def clear(self) -> None:
        self.stamps.clear()
        self.items.clear()


def _as_logger(log) -> Callable[[str], None]:
    """Accept a logging.Logger, an rclpy logger (both have .warning) or a plain callable."""
    if log is None:
        return logging.getLogger(__name__).warning
    if hasattr(log, "warning"):
        return log.warning
    if callable(log):
        return log
    raise TypeError(f"log must be a logger or a callable, got {type(log).__name__}")


class Collector:
    """Per-modality buffers plus the trigger policy; not thread-safe (the node serialises calls)."""

    def __init__(self, cfg: Optional[SyncConfig] = None, log=None):
        self.cfg = (cfg or SyncConfig()).validate()
        self._warn = _as_logger(log)
        c = self.cfg
        self._buf: Dict[Modality, _TimeBuffer] = {
            Modality.CAMERA: _TimeBuffer(c.buffer_s, c.max_messages),
            Modality.LIDAR: _TimeBuffer(c.buffer_s, c.max_messages),
            Modality.AUDIO: _TimeBuffer(c.buffer_s),
            Modality.IMU: _TimeBuffer(c.buffer_s),
        }
        self._camera_info: Optional[CameraIntrinsics] = None
        self._counters: Dict[Modality, _Counters] = {m: _Counters() for m in SENSOR_MODALITIES}
        self._clocks: Dict[Modality, _SensorClock] = {m: _SensorClock() for m in SENSOR_MODALITIES}
        # receive latency (received - stamp on the frame timeline) of each input's recent messages
        self._lags: Dict[Modality, deque] = {m: deque(maxlen=CLOCK_WINDOW) for m in SENSOR_MODALITIES}
        self._started: Optional[float] = None  # poll clock at the first poll with data (None again after a reset)
        self._warmup = max(c.timeout(m) for m in SENSOR_MODALITIES)  # no early cuts this long after the start
        self._trigger = None if c.trigger == RATE_TRIGGER else Modality(c.trigger)
        self._pending: List[float] = []  # frame times of trigger messages waiting for their delay
        self._last_trigger: Optional[float] = None
        self._next_tick: Optional[int] = None  # index k of the next rate tick at k / rate_hz
        self._last_now: Optional[float] = None
        self._resets = 0
        # After a jump the clock and the sensor messages cross it at slightly different moments (a
        # replayed /clock vs in-flight messages): until time has moved on by reset_jump_s from the
        # jump, further jumps belong to the same one and reset silently. (time at the jump, by clock?)
        self._jump: Optional[Tuple[float, bool]] = None
        self._progress = -math.inf  # newest time (accepted stamp or now) since the last jump
        self._frames = 0
        self._empty = 0  # ticks where no modality had data (no frame emitted)
        self._audio_rate: Optional[int] = None

    # ---- input -------------------------------------------------------------------------------------
    def add_image(self, stamp: float, rgb: np.ndarray, camera: Optional[CameraIntrinsics] = None, *,
                  received: Optional[float] = None) -> bool:
        """(H,W,3) uint8 RGB image; `camera` optionally updates the intrinsics. Returns True if buffered.

        `received` (every add_*): when the message arrived on the receive clock (the node clock live, the
        record time offline; None = unknown, the stamp is taken as it is). It measures the sensor's clock
        offset, aligns a sensor whose clock is off, and places zero stamps."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"image: expected (H,W,3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if camera is not None:
            self._camera_info = camera
        return self._insert(Modality.CAMERA, stamp, rgb, received)

    def add_camera_info(self, stamp: float, camera: CameraIntrinsics, *, received: Optional[float] = None) -> None:
        """Intrinsics are static in practice: the newest one is attached to every frame with an image
        (its stamp is only checked, so `received` is accepted and not needed)."""
        self._check_stamp(Modality.CAMERA, stamp)
        self._camera_info = camera

    def add_lidar(self, stamp: float, points: np.ndarray, frame_id: Optional[str] = None, *,
                  received: Optional[float] = None, dropped_points: int = 0) -> bool:
        """(N,4) float32 x,y,z,intensity in the LiDAR frame (N may be 0: an empty sweep is still a sweep).
        Non-finite points are kept as given (conversions drop and count them; the BEV grid skips them);
        `dropped_points` = how many the conversion dropped, counted in stats()["lidar"]["points_dropped"]."""
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] != 4:
            raise ValueError(f"lidar: expected (N,4) x,y,z,intensity, got shape {pts.shape}")
        self._counters[Modality.LIDAR].points_dropped += int(dropped_points)
        return self._insert(Modality.LIDAR, stamp, (pts.astype(np.float32, copy=False), frame_id), received)

    def add_audio(self, stamp: float, samples: np.ndarray, rate: int, *, received: Optional[float] = None) -> bool:
        """(S,C) or (S,) float32 samples in [-1,1] at `rate` Hz; stamp = time of the first sample."""
        a = np.asarray(samples, np.float32)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"audio: expected (S,C) samples with S,C >= 1, got shape {np.shape(samples)}")
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"audio: sample rate must be a positive integer, got {rate!r}")
        if not np.all(np.isfinite(a)):
            raise ValueError("audio: samples contain NaN or inf")
        if self._audio_rate is not None and rate != self._audio_rate and len(self._buf[Modality.AUDIO]):
            self._warn(f"audio sample rate changed {self._audio_rate} -> {rate} Hz: dropping buffered audio")
            self._buf[Modality.AUDIO].clear()
        self._audio_rate = int(rate)
        mono = a.mean(axis=1) if a.shape[1] > 1 else a[:, 0]  # (S,)
        return self._insert(Modality.AUDIO, stamp, (mono, int(rate)), received, extent=len(mono) / rate)

    def add_imu(self, stamp: float, accel: np.ndarray, gyro: np.ndarray, *, received: Optional[float] = None) -> bool:
        """One IMU sample: accel (3,) m/s^2, gyro (3,) rad/s."""
        row = np.concatenate([np.asarray(accel, np.float32).reshape(-1), np.asarray(gyro, np.float32).reshape(-1)])
        if row.shape != (6,):
            raise ValueError(f"imu: expected accel (3,) and gyro (3,), got {np.shape(accel)} and {np.shape(gyro)}")
        if not np.all(np.isfinite(row)):
            raise ValueError(f"imu: sample contains NaN or inf: {row.tolist()}")
        return self._insert(Modality.IMU, stamp, row, received)

    # ---- output ------------------------------------------------------------------------------------
    def poll(self, now: float) -> List[SensorFrame]:
        """Frames due at `now` (caller's clock), oldest first; frames with no data at all are skipped."""
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"poll: now must be finite, got {now}")
        jump = self.cfg.reset_jump_s
        if self._jump is not None and not self._jump[1] and now > self._jump[0] + jump:
            return []  # messages jumped back, the clock has not followed yet: nothing is due on it
        if self._last_now is not None and now < self._last_now - jump:
            self._reset(f"clock jumped back {self._last_now - now:.3f} s", now, by_clock=True)
        self._last_now = now if self._last_now is None else max(now, self._last_now)
        if self._started is None and any(len(b) for b in self._buf.values()):
            self._started = now
        self._advance(now)
        due = now - self.cfg.delay_s
        times: List[float] = []
        if self._trigger is None:
            rate = self.cfg.rate_hz
            last_k = math.floor(due * rate + 1e-6)
            if self._next_tick is None:
                self._next_tick = last_k
            # after a long stall only ticks inside the buffer can still be filled
            self._next_tick = max(self._next_tick, last_k - int(self.cfg.buffer_s * rate))
            times = [k / rate for k in range(self._next_tick, last_k + 1)]
            self._next_tick = max(self._next_tick, last_k + 1)
            while self._next_tick / rate <= now and self._complete(self._next_tick / rate, now):
                times.append(self._next_tick / rate)  # every live input is past it: no need to wait delay_s
                self._next_tick += 1
        else:
            n = bisect.bisect_right(self._pending, due)
            while n < len(self._pending) and self._complete(self._pending[n], now):
                n += 1
            times, self._pending = self._pending[:n], self._pending[n:]
        frames = []
        for t in times:
            f = self._frame_at(t)
            if f is None:
                self._empty += 1
                continue
            frames.append(f)
        return frames

    def _watermark(self, modality: Modality, now: float) -> Optional[float]:
        """Time up to which this input's data is complete: its newest stamp (an audio chunk: its end), or for a
        per-message input with known receive latency, `now` minus the largest recent latency (what was
        stamped before that has arrived, as messages of one input arrive in order). None = no data."""
        buf = self._buf[modality]
        if not len(buf):
            return None
        if modality == Modality.AUDIO:  # a chunk's samples all arrive with its end: no earlier promise
            mono, rate = buf.items[-1]
            return buf.stamps[-1] + len(mono) / rate
        wm = buf.newest
        lags = self._lags[modality]
        if lags:
            wm = max(wm, now - max(lags) - WATERMARK_MARGIN_S)
        return wm

    def _complete(self, t: float, now: float) -> bool:
        """True when every live input (data within its timeout of `t`) has delivered everything up to `t`:
        its watermark is past the frame time, so the frame is cut now instead of at t + delay_s (data stamped
        within lookahead_s after `t` that has already arrived still belongs to it; none is waited for)."""
        limit = t
        if self._started is None or now < self._started + self._warmup:
            return False  # just started (or reset): wait delay_s until every sensor that is there has been seen
        live = False
        for m in SENSOR_MODALITIES:
            buf = self._buf[m]
            newest = buf.newest
            if newest is None:
                continue
            end = newest + (len(buf.items[-1][0]) / buf.items[-1][1] if m == Modality.AUDIO else 0.0)
            if end < t - self.cfg.timeout(m):
                continue  # stale or gone: it does not hold the frame (it is left out of it anyway)
            live = True
            if self._watermark(m, now) < limit:
                return False
        return live

    def frame_at(self, t: float) -> Optional[SensorFrame]:
        """The frame for reference time `t` from what is buffered now (no trigger bookkeeping), or None."""
        return self._frame_at(float(t), count=False)

    def stats(self) -> Dict[str, Any]:
        """{"frames", "resets", "empty_ticks", "<modality>": {received, duplicates, out_of_order, dropped_old,
        frames_without, zero_stamps, clock_jumps, clock_dropped, points_dropped, resets, newest_stamp,
        clock_offset_s, clock_aligned}} — what diagnostics report. newest_stamp is on the receive clock when
        the sensor is aligned; clock_offset_s = measured median of (received - stamp), None before any
        message with a receive time (audio: against the end of the chunk)."""
        out: Dict[str, Any] = {"frames": self._frames, "resets": self._resets, "empty_ticks": self._empty}
        for m in SENSOR_MODALITIES:
            d = dict(vars(self._counters[m]))
            d["resets"] = self._resets
            d["newest_stamp"] = self._buf[m].newest
            clk = self._clocks[m]
            d["clock_offset_s"] = clk.offset
            d["clock_aligned"] = clk.aligned
            out[m.value] = d
        return out

    def reset(self) -> None:
        """Drop every buffer and pending frame (counters are kept)."""
        self._reset(None)

    # ---- internals ---------------------------------------------------------------------------------
    def _check_stamp(self, modality: Modality, stamp: float) -> float:
        s = float(stamp)
        if not math.isfinite(s) or abs(s) > MAX_STAMP_S:
            raise ValueError(f"{modality.value}: stamp must be a finite time within +-2^32 s, got {stamp}")
        return s

    def _clock_threshold(self, modality: Modality) -> float:
        """Offsets beyond this are aligned: the configured threshold, but at most half the sensor's timeout (an
        offset left unaligned then still leaves the sensor's data within its timeout of the frames)."""
        return min(self.cfg.clock_offset_threshold_s, 0.5 * self.cfg.timeout(modality))

    def _align(self, modality: Modality, stamp: float, received: Optional[float], extent: float) -> Optional[float]:
        """The stamp on the timeline frames are cut on, or None to drop the message (counted).

        `extent`: seconds the message covers after its stamp (an audio chunk), so the offset is measured
        against the end of what it carries."""
        if received is None:
            return stamp
        received = float(received)
        if not math.isfinite(received):
            raise ValueError(f"{modality.value}: receive time must be finite, got {received}")
        clk, cnt = self._clocks[modality], self._counters[modality]
        name = modality.value
        if stamp == 0.0:  # a driver without a clock: the receive time is the best there is
            cnt.zero_stamps += 1
            if not clk.warned_zero:
                clk.warned_zero = True
                self._warn(f"{name}: header stamps are zero (a driver without a clock?): using the receive "
                           f"time instead")
            return received - extent
        thr = self._clock_threshold(modality)
        d = received - (stamp + extent)
        looping = self._jump is not None and self._jump[1]  # the receive clock jumped back just now
        if looping and not clk.window and stamp > self._progress + self.cfg.reset_jump_s:
            cnt.clock_dropped += 1  # no clock known for this sensor yet: a stamp past the new timeline is stale
            return None
        if stamp in clk.recent and abs(d - clk.offset) <= thr:
            return clk.recent[stamp]  # the same message again (a duplicate): the same place, not a new measurement
        if clk.window and abs(d - clk.offset) > thr:  # disagrees with this sensor's clock so far
            if clk.pending and abs(d - statistics.median(p[0] for p in clk.pending)) > thr:
                clk.pending = []  # disagrees with the other disagreeing ones too: start over
            clk.pending.append((d, received))
            span = clk.pending[-1][1] - clk.pending[0][1]
            if len(clk.pending) < CLOCK_CONFIRM_MESSAGES or span < CLOCK_CONFIRM_S:
                if looping:
                    cnt.clock_dropped += 1
                    return None
                newest = self._buf[modality].newest
                here = received - extent - (d - clk.offset) if clk.aligned else stamp  # by the clock so far
                if d > clk.offset and newest is not None and here >= newest - self.cfg.timeout(modality):
                    return here  # late (a burst after a stall): where its stamp says, among its neighbours
                # by the offset the disagreeing messages agree on, never after it was received
                return received - extent - max(d - statistics.median(p[0] for p in clk.pending), 0.0)
            jump = statistics.median(p[0] for p in clk.pending) - clk.offset
            clk.window.clear()
            clk.window.extend(p[0] for p in clk.pending)
            clk.pending = []
            clk.recent.clear()
            cnt.clock_jumps += 1
            if cnt.clock_jumps <= CLOCK_JUMP_LOGS:
                self._warn(f"{name}: sensor clock jumped {abs(jump):.3f} s {'back' if jump > 0 else 'forward'} "
                           f"against the receive clock: re-aligned (jump #{cnt.clock_jumps}"
                           f"{'; further jumps are only counted' if cnt.clock_jumps == CLOCK_JUMP_LOGS else ''})")
        else:
            clk.pending = []
            clk.window.append(d)
        clk.offset = float(statistics.median(clk.window))
        was = clk.aligned
        if abs(clk.offset) > thr:
            clk.aligned = True
        elif abs(clk.offset) < 0.5 * thr:  # hysteresis: an offset near the threshold does not flap
            clk.aligned = False
        if clk.aligned and not was and not clk.warned:
            clk.warned = True
            how = f"{clk.offset:.3f} s behind" if clk.offset > 0 else f"{-clk.offset:.3f} s ahead of"
            days = f" ({abs(clk.offset) / 86400.0:.1f} days)" if abs(clk.offset) >= 86400.0 else ""
            self._warn(f"{name}: header stamps are {how} the receive clock{days}, more than {thr:g} s: "
                       f"aligning its stamps onto the receive clock")
        # aligned: stamp + offset, never after it was received (written so a huge stamp keeps the receive
        # clock's precision)
        out = received - extent - max(d - clk.offset, 0.0) if clk.aligned else stamp
        clk.recent[stamp] = out
        if len(clk.recent) > 2 * CLOCK_WINDOW:
            clk.recent.popitem(last=False)
        return out

    def _insert(self, modality: Modality, stamp: float, item: Any, received: Optional[float] = None,
                extent: float = 0.0) -> bool:
        stamp = self._check_stamp(modality, stamp)
        aligned = self._align(modality, stamp, received, extent)
        if aligned is None:
            return False
        stamp = aligned
        buf, cnt = self._buf[modality], self._counters[modality]
        if buf.newest is not None and stamp < buf.newest - self.cfg.reset_jump_s:
            self._reset(f"{modality.value} stamp jumped back {buf.newest - stamp:.3f} s", stamp, by_clock=False)
        elif self._jump is not None and self._jump[1] and stamp > self._progress + self.cfg.reset_jump_s:
            cnt.dropped_old += 1  # sent before the clock jumped back: stale in the new timeline
            return False
        status = buf.insert(stamp, item)
        if status == "duplicate":
            cnt.duplicates += 1
            return False
        if status == "old":
            cnt.dropped_old += 1
            return False
        cnt.received += 1
        if received is not None:  # how late this input's messages arrive (for its watermark)
            self._lags[modality].append(max(float(received) - extent - stamp, 0.0))
        self._advance(stamp)
        if status == "out_of_order":
            cnt.out_of_order += 1
        if modality == self._trigger:
            t = stamp
            if modality == Modality.AUDIO:  # an audio chunk's frame time is its last sample
                t = stamp + len(item[0]) / item[1]
            if self._last_trigger is None or t > self._last_trigger:
                self._last_trigger = t
                bisect.insort(self._pending, t)
        return True

    def _advance(self, t: float) -> None:
        """Time t was seen since the last jump; the jump is over once time moved reset_jump_s past it."""
        if self._jump is not None:
            self._progress = max(self._progress, t)
            if self._progress > self._jump[0] + self.cfg.reset_jump_s:
                self._jump = None

    def _reset(self, why: Optional[str], at: float = 0.0, by_clock: bool = False) -> None:
        for b in self._buf.values():
            b.clear()
        self._pending.clear()
        self._last_trigger = None
        self._next_tick = None
        self._last_now = None
        self._started = None
        if why is not None and self._jump is None:
            self._jump = (at, by_clock)
            self._progress = at
            self._resets += 1
            self._warn(f"time jumped backwards ({why}): sync buffers reset (reset #{self._resets})")

    def _frame_at(self, t: float, count: bool = True) -> Optional[SensorFrame]:
        c = self.cfg
        limit = t + c.lookahead_s
        frame = SensorFrame(stamp=t, audio_rate=c.audio_rate, imu_rate=c.imu_rate, frame_id=c.frame_id)
        # camera / lidar: the newest message not after the frame window, if within its timeout
        for m in (Modality.CAMERA, Modality.LIDAR):
            buf = self._buf[m]
            i = buf.index_at_or_before(limit)
            if i >= 0 and buf.stamps[i] >= t - c.timeout(m):
                frame.stamps[m] = buf.stamps[i]
                if m == Modality.CAMERA:
                    frame.image = buf.items[i]
                    frame.camera = self._camera_info
                else:
                    frame.lidar, fid = buf.items[i]
                    if fid:
                        frame.frame_id = fid
        audio = self._audio_window(t, limit)
        if audio is not None:
            frame.audio, frame.stamps[Modality.AUDIO] = audio
        imu = self._imu_window(t, limit)
        if imu is not None:
            frame.imu, frame.stamps[Modality.IMU] = imu
        present = frame.present
        if not any(present.values()):
            return None
        if count:
            self._frames += 1
            for m, ok in present.items():
                if not ok:
                    self._counters[m].frames_without += 1
        return frame

    def _audio_window(self, t: float, limit: float) -> Optional[Tuple[np.ndarray, float]]:
        """Newest audio_window_s of mono audio ending at min(end of data, limit), at the model rate."""
        c, buf = self.cfg, self._buf[Modality.AUDIO]
        i = buf.index_at_or_before(limit)
        if i < 0:
            return None
        mono, rate = buf.items[i]
        end = min(buf.stamps[i] + len(mono) / rate, limit)
        if end < t - c.audio_timeout_s:
            return None
        start = end - c.audio_window_s
        # walk back over the chunks that overlap [start, end], joining contiguous ones into runs
        runs: List[Tuple[float, List[np.ndarray]]] = []
        j = i
        while j >= 0:
            s, (x, r) = buf.stamps[j], buf.items[j]
            if s + len(x) / r <= start:
                break
            if runs and abs(s + len(x) / r - runs[-1][0]) <= AUDIO_JOIN_TOLERANCE_S:
                runs[-1] = (s, [x] + runs[-1][1])
            else:
                runs.append((s, [x]))
            j -= 1
        n_out = int(round(c.audio_window_s * c.audio_rate))
        out = np.zeros(n_out, np.float32)  # (n_out,) silence where no chunk covers the window
        first = n_out
        for s0, parts in runs:
            x = audio_resample(np.concatenate(parts), rate, c.audio_rate)  # (S',) at the model rate
            k0 = int(round((s0 - start) * c.audio_rate))  # output index of the run's first sample
            lo, hi = max(k0, 0), min(k0 + len(x), int(round((end - start) * c.audio_rate)), n_out)
            if hi > lo:
                out[lo:hi] = x[lo - k0:hi - k0]
                first = min(first, lo)
        if first >= n_out:
            return None
        return out[first:], buf.stamps[i]

    def _imu_window(self, t: float, limit: float) -> Optional[Tuple[np.ndarray, float]]:
        """IMU samples of the newest imu_window_s ending at the newest sample, resampled to imu_rate."""
        c, buf = self.cfg, self._buf[Modality.IMU]
        i = buf.index_at_or_before(limit)
        if i < 0 or buf.stamps[i] < t - c.imu_timeout_s:
            return None
        end = buf.stamps[i]
        j0 = max(bisect.bisect_left(buf.stamps, end - c.imu_window_s) - 1, 0)  # one sample before, to interpolate
        ts = np.asarray(buf.stamps[j0:i + 1], np.float64)  # (T,)
        vals = np.stack(buf.items[j0:i + 1])  # (T, 6)
        n = int(round(c.imu_window_s * c.imu_rate))
        grid = end - (np.arange(n)[::-1] / c.imu_rate)  # (n,) oldest first, ends at the newest sample
        grid = grid[grid >= ts[0] - 0.5 / c.imu_rate]  # only where data exists; preprocessing pads the rest
        return resample(ts - end, vals, grid - end), end  # (n', 6)
