"""The simulated world over time: the ego robot's track, the objects' trajectories and sound schedules.

Everything is precomputed on a fixed 200 Hz clock from `-preroll` to `duration + tail`, so audio
and IMU windows before the first frame and event horizons after the last frame are well defined.
World frame: x east, y north, z up; the ego is at the origin heading +x at t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy.signal import butter, sosfiltfilt

from .config import SimConfig
from .shapes import Shape

CLOCK_HZ = 200.0  # internal clock of ego and object state (also the IMU rate)
PREROLL = 2.0  # seconds simulated before t = 0 (fills the IMU window of the first frame)
TAIL = 2.5  # seconds simulated after the last frame (event horizons look this far ahead)


@dataclass
class SimObject:
    """One object: what it is, where it goes and when it makes its sound."""

    cls: str
    track_id: int
    shape: Shape
    times: np.ndarray  # (K,) waypoint times, seconds, increasing
    xy: np.ndarray  # (K, 2) waypoint positions in the world frame, metres
    yaw: Optional[float] = None  # fixed heading (radians) for static objects; None: face the motion
    sound: List[Tuple[float, float]] = field(default_factory=list)  # [(start, end)] seconds when it sounds
    loudness: float = 1.0  # relative source level
    sound_seed: int = 0  # seed of its sound's random details

    def position(self, t: np.ndarray) -> np.ndarray:
        """(T,) times -> (T, 2) positions (held at the ends)."""
        t = np.atleast_1d(np.asarray(t, float))
        return np.stack([np.interp(t, self.times, self.xy[:, 0]), np.interp(t, self.times, self.xy[:, 1])], 1)

    def velocity(self, t: np.ndarray) -> np.ndarray:
        """(T,) times -> (T, 2) ground velocity, m/s (piecewise constant between waypoints)."""
        t = np.atleast_1d(np.asarray(t, float))
        if len(self.times) < 2:
            return np.zeros((len(t), 2))
        seg_v = np.diff(self.xy, axis=0) / np.maximum(np.diff(self.times), 1e-6)[:, None]  # (K-1, 2)
        k = np.searchsorted(self.times, t, side="right") - 1
        inside = (k >= 0) & (k < len(self.times) - 1)
        out = np.zeros((len(t), 2))
        out[inside] = seg_v[k[inside]]
        return out

    def heading(self, t: np.ndarray) -> np.ndarray:
        """(T,) yaw, radians: fixed, or along the current (else last) motion direction."""
        t = np.atleast_1d(np.asarray(t, float))
        if self.yaw is not None or len(self.times) < 2:
            return np.full(len(t), self.yaw or 0.0)
        seg = np.diff(self.xy, axis=0)
        seg_yaw = np.arctan2(seg[:, 1], seg[:, 0])
        moving = np.hypot(seg[:, 0], seg[:, 1]) > 1e-6
        # a segment without motion keeps the heading of the last moving one
        last = seg_yaw[moving][0] if moving.any() else 0.0
        for i in range(len(seg_yaw)):
            if moving[i]:
                last = seg_yaw[i]
            else:
                seg_yaw[i] = last
        k = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(seg_yaw) - 1)
        return seg_yaw[k]

    def sounding(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_1d(np.asarray(t, float))
        on = np.zeros(len(t), bool)
        for a, b in self.sound:
            on |= (t >= a) & (t < b)
        return on


@dataclass
class EgoPlan:
    """How the robot moves: speed and turn-rate keyframes, rough stretches and impacts."""

    speed: List[Tuple[float, float]]  # [(t, v m/s)] linearly interpolated
    yaw_rate: List[Tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0)])  # [(t, rad/s)]
    rough: List[Tuple[float, float]] = field(default_factory=list)  # [(start, end)] on rough ground
    roughness: float = 1.0  # scale of the rough-ground vibration
    impacts: List[Tuple[float, float]] = field(default_factory=list)  # [(t, strength 0..1)] bumps/collisions


@dataclass
class EgoTrack:
    """Ego state sampled on the 200 Hz clock."""

    t: np.ndarray  # (N,) seconds
    xy: np.ndarray  # (N, 2) world position
    yaw: np.ndarray  # (N,) heading
    v: np.ndarray  # (N,) forward speed
    w: np.ndarray  # (N,) yaw rate
    a_long: np.ndarray  # (N,) forward acceleration, including impact jolts
    z: np.ndarray  # (N,) vertical displacement of the body (vibration, bumps)
    roll: np.ndarray  # (N,) radians
    pitch: np.ndarray  # (N,)
    rough: np.ndarray  # (N,) bool, on rough ground
    impacts: List[Tuple[float, float]]

    def at(self, t: float) -> dict:
        """Ego pose at time t (nearest clock sample)."""
        i = int(np.clip(np.round((t - self.t[0]) * CLOCK_HZ), 0, len(self.t) - 1))
        return {"xy": self.xy[i], "yaw": float(self.yaw[i]), "z": float(self.z[i]), "roll": float(self.roll[i]),
                "pitch": float(self.pitch[i]), "v": float(self.v[i]), "w": float(self.w[i])}

    def index(self, t: np.ndarray) -> np.ndarray:
        return np.clip(np.round((np.asarray(t, float) - self.t[0]) * CLOCK_HZ).astype(np.int64), 0, len(self.t) - 1)


def _keyframes(keys: Sequence[Tuple[float, float]], t: np.ndarray) -> np.ndarray:
    kt = np.array([k[0] for k in keys], float)
    kv = np.array([k[1] for k in keys], float)
    return np.interp(t, kt, kv)


def _bandnoise(rng: np.random.Generator, n: int, lo: float, hi: float, fs: float) -> np.ndarray:
    """Unit-RMS band-limited noise (scipy Butterworth, zero phase)."""
    sos = butter(2, [lo, hi], btype="band", fs=fs, output="sos")
    x = sosfiltfilt(sos, rng.standard_normal(n + 400))[200:-200]
    return x / (np.std(x) + 1e-12)


def make_ego_track(plan: EgoPlan, duration: float, rng: np.random.Generator) -> EgoTrack:
    """Integrate the plan into a track with vibration and impact jolts; pose at t=0 is the origin."""
    t = np.arange(-PREROLL, duration + TAIL, 1.0 / CLOCK_HZ)
    n = len(t)
    v = _keyframes(plan.speed, t)
    w = _keyframes(plan.yaw_rate, t) if plan.yaw_rate else np.zeros(n)
    yaw = np.cumsum(w) / CLOCK_HZ
    yaw -= np.interp(0.0, t, yaw)
    vx, vy = v * np.cos(yaw), v * np.sin(yaw)
    x, y = np.cumsum(vx) / CLOCK_HZ, np.cumsum(vy) / CLOCK_HZ
    x -= np.interp(0.0, t, x)
    y -= np.interp(0.0, t, y)
    a_long = np.gradient(v, 1.0 / CLOCK_HZ)
    rough = np.zeros(n, bool)
    for a, b in plan.rough:
        rough |= (t >= a) & (t < b)
    # vertical and attitude vibration, set by the vertical acceleration it causes (m/s^2 RMS):
    # rough ground shakes the robot in proportion to its speed; a smooth floor barely at all
    speed = np.clip(np.abs(v), 0.0, 2.0)
    box = np.ones(40) / 40  # soften entry/exit of rough stretches
    heave_acc = np.convolve(np.where(rough, 1.5 * plan.roughness * speed, 0.02 * speed), box, mode="same")
    buzz_acc = np.convolve(np.where(rough, 1.0 * plan.roughness * speed, 0.03 * speed), box, mode="same")
    z = heave_acc * _unit_accel(_bandnoise(rng, n, 1.0, 4.0, CLOCK_HZ))
    z += buzz_acc * _unit_accel(_bandnoise(rng, n, 8.0, 30.0, CLOCK_HZ))
    att = np.convolve(np.where(rough, 0.02 * plan.roughness * speed, 0.0005 * speed), box, mode="same")  # rad
    roll = att * _bandnoise(rng, n, 0.8, 6.0, CLOCK_HZ)
    pitch = att * _bandnoise(rng, n, 0.8, 6.0, CLOCK_HZ)
    for ti, s in plan.impacts:
        # a jolt: damped 12 Hz oscillation, strongest backwards (deceleration) and upwards
        dt = t - ti
        m = dt >= 0
        jolt = np.zeros(n)
        jolt[m] = np.exp(-dt[m] / 0.06) * np.sin(2 * np.pi * 12.0 * dt[m])
        a_long += -s * 25.0 * np.abs(jolt) * np.sign(np.maximum(v, 0.05))
        z += s * 0.004 * jolt  # about 2 g peak vertical at full strength
        pitch += s * 0.02 * jolt
    return EgoTrack(t, np.stack([x, y], 1), yaw, v, w, a_long, z, roll, pitch, rough, list(plan.impacts))


def _unit_accel(z: np.ndarray) -> np.ndarray:
    """Scale a displacement signal so that its second derivative has unit RMS."""
    acc = np.gradient(np.gradient(z, 1.0 / CLOCK_HZ), 1.0 / CLOCK_HZ)
    return z / (np.std(acc) + 1e-12)


@dataclass
class Scene:
    """A whole simulated episode."""

    name: str
    duration: float  # seconds of frames (t in [0, duration))
    objects: List[SimObject]
    ego: EgoTrack
    static: List[Shape]  # ground, walls, buildings (world frame)
    rough_ground: bool  # any rough stretch (ground texture)
    urban: bool  # buildings rather than low walls
    seed: int
    config: SimConfig
    focus: Optional[int] = None  # track id of the focus object (dataset mode)
    description: str = ""

    def relative(self, obj: SimObject, t: np.ndarray) -> dict:
        """Object state relative to the robot, in base_link (x forward, y left), for times t."""
        t = np.atleast_1d(np.asarray(t, float))
        i = self.ego.index(t)
        ex, eyaw = self.ego.xy[i], self.ego.yaw[i]
        c, s = np.cos(eyaw), np.sin(eyaw)
        d = obj.position(t) - ex  # (T, 2)
        rel = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)
        vo = obj.velocity(t)  # (T, 2) object ground velocity, world
        ego_v = np.stack([self.ego.v[i] * c, self.ego.v[i] * s], 1)
        dv = vo - ego_v
        vrel = np.stack([c * dv[:, 0] + s * dv[:, 1], -s * dv[:, 0] + c * dv[:, 1]], 1)
        vown = np.stack([c * vo[:, 0] + s * vo[:, 1], -s * vo[:, 0] + c * vo[:, 1]], 1)
        yaw = obj.heading(t) - eyaw
        return {"xy": rel, "v_rel": vrel, "v_own": vown, "yaw": np.arctan2(np.sin(yaw), np.cos(yaw)),
                "range": np.hypot(rel[:, 0], rel[:, 1])}

    def object(self, track_id: int) -> SimObject:
        for o in self.objects:
            if o.track_id == track_id:
                return o
        raise KeyError(track_id)
