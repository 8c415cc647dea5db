"""Multi-object tracking of LiDAR clusters across sweeps, and the per-track kinematics events need.

A constant-velocity Kalman filter per track in the bird's-eye plane (x, y, vx, vy), associated to new
detections with scipy's Hungarian solver on predicted-centre distance with a gate. Track ids are
positive, increase monotonically and are never reused within one ``Tracker``, so RViz markers and
events can key on them.

The kinematic predicates at the bottom (``is_approaching``, ``crossing_time``, ``time_to_collision``)
are pure functions of one position and velocity relative to the robot (robot frame: x forward, y left,
robot at the origin), for callers that ask about one track. The node's event forecasts test the simulator's
event definitions over all tracks at once instead (core/kinematic_events.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .types import DetectedObject


@dataclass
class TrackerConfig:
    """Association and motion-model settings (SI units, robot frame)."""

    gate: float = 2.0  # max distance (m) between a track's predicted BEV centre and a detection to associate
    max_missed: int = 3  # sweeps a track survives without a matching detection before it is dropped
    accel_std: float = 3.0  # process noise: std of unmodelled acceleration (m/s^2), covers people starting/stopping
    meas_std: float = 0.25  # measurement noise: std of a cluster's BEV centre (m), partial views shift it
    init_vel_std: float = 5.0  # std of the unknown velocity of a newborn track (m/s)
    max_gap: float = 2.0  # a time step (s) longer than this, or negative (bag loop), resets all tracks
    min_hits_for_velocity: int = 2  # a track reports zero velocity until it has been measured this often

    def __post_init__(self) -> None:
        for name in ("gate", "meas_std", "init_vel_std", "max_gap"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"perception.tracking.{name} must be a finite number > 0, got {v!r}")
        if not (self.accel_std >= 0 and math.isfinite(self.accel_std)):
            raise ValueError(f"perception.tracking.accel_std must be a finite number >= 0, got {self.accel_std!r}")
        if self.max_missed < 0 or self.min_hits_for_velocity < 1:
            raise ValueError("perception.tracking.max_missed must be >= 0 and min_hits_for_velocity >= 1")


@dataclass
class Track:
    """One tracked object: Kalman state in the BEV plane and bookkeeping."""

    track_id: int
    x: np.ndarray  # (4,) x, y, vx, vy
    P: np.ndarray  # (4, 4) state covariance
    hits: int = 1
    missed: int = 0
    age: int = 1
    history: List[np.ndarray] = field(default_factory=list)  # recent (2,) measured centres, newest last

    @property
    def position(self) -> np.ndarray:
        return self.x[:2].copy()

    @property
    def velocity(self) -> np.ndarray:
        return self.x[2:].copy()


class Tracker:
    """Assigns ``track_id`` and ``velocity`` to each sweep's detections (in place) and keeps tracks."""

    def __init__(self, cfg: Optional[TrackerConfig] = None):
        self.cfg = cfg or TrackerConfig()
        self.tracks: List[Track] = []
        self._next_id = 1
        self._stamp: Optional[float] = None
        self._H = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # (2, 4) measures position only

    def reset(self) -> None:
        """Forget every track (ids keep increasing so an old id never names a new object)."""
        self.tracks = []
        self._stamp = None

    def _predict(self, dt: float) -> None:
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        q = self.cfg.accel_std**2
        # Discrete white-noise acceleration model, per axis [[dt^4/4, dt^3/2], [dt^3/2, dt^2]] * q.
        G = np.array([[0.5 * dt * dt, 0], [0, 0.5 * dt * dt], [dt, 0], [0, dt]])  # (4, 2)
        Q = G @ G.T * q  # (4, 4)
        for t in self.tracks:
            t.x = F @ t.x
            t.P = F @ t.P @ F.T + Q

    def _correct(self, t: Track, z: np.ndarray) -> None:
        H = self._H
        R = np.eye(2) * self.cfg.meas_std**2
        S = H @ t.P @ H.T + R  # (2, 2)
        K = t.P @ H.T @ np.linalg.inv(S)  # (4, 2)
        t.x = t.x + K @ (z - H @ t.x)
        t.P = (np.eye(4) - K @ H) @ t.P

    def _new_track(self, z: np.ndarray) -> Track:
        P = np.diag([self.cfg.meas_std**2] * 2 + [self.cfg.init_vel_std**2] * 2)
        t = Track(track_id=self._next_id, x=np.array([z[0], z[1], 0.0, 0.0]), P=P, history=[z.copy()])
        self._next_id += 1
        self.tracks.append(t)
        return t

    def update(self, objects: Sequence[DetectedObject], stamp: float) -> List[DetectedObject]:
        """Predict tracks to ``stamp``, associate, correct, create and drop tracks; label the objects."""
        if self._stamp is not None:
            dt = stamp - self._stamp
            if dt < 0 or dt > self.cfg.max_gap:
                self.reset()
            elif dt > 0:
                self._predict(dt)
        self._stamp = stamp

        dets = np.array([o.center[:2] for o in objects], np.float64).reshape(-1, 2)  # (D, 2)
        pairs = []
        if len(self.tracks) and len(dets):
            pred = np.array([t.x[:2] for t in self.tracks])  # (T, 2)
            cost = np.linalg.norm(pred[:, None, :] - dets[None, :, :], axis=2)  # (T, D)
            big = 1e6
            rows, cols = linear_sum_assignment(np.where(cost <= self.cfg.gate, cost, big))
            pairs = [(r, c) for r, c in zip(rows, cols) if cost[r, c] <= self.cfg.gate]

        matched_tracks = {r for r, _ in pairs}
        det_track = {}
        for r, c in pairs:
            t = self.tracks[r]
            self._correct(t, dets[c])
            t.hits += 1
            t.missed = 0
            t.age += 1
            t.history = (t.history + [dets[c].copy()])[-10:]
            det_track[c] = t
        for i, t in enumerate(self.tracks):
            if i not in matched_tracks:
                t.missed += 1
                t.age += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.cfg.max_missed]
        for c in range(len(dets)):
            if c not in det_track:
                det_track[c] = self._new_track(dets[c])

        for c, obj in enumerate(objects):
            t = det_track[c]
            obj.track_id = t.track_id
            v = t.velocity if t.hits >= self.cfg.min_hits_for_velocity else np.zeros(2)
            obj.velocity = np.array([v[0], v[1], 0.0], np.float32)
        return list(objects)


# ---- kinematic predicates (pure functions; the robot sits at the origin, x forward, y left) ----


def closing_speed(position: np.ndarray, velocity: np.ndarray) -> float:
    """Speed (m/s) at which the object approaches the robot; negative when it moves away."""
    p = np.asarray(position, np.float64)[:2]
    v = np.asarray(velocity, np.float64)[:2]
    r = float(np.linalg.norm(p))
    if r < 1e-6:
        return float(np.linalg.norm(v))
    return float(-(p @ v) / r)


def is_approaching(position: np.ndarray, velocity: np.ndarray, min_speed: float = 0.3) -> bool:
    """True when the object closes in on the robot faster than ``min_speed`` m/s."""
    return closing_speed(position, velocity) > min_speed


def time_to_collision(position: np.ndarray, velocity: np.ndarray, radius: float = 1.0) -> float:
    """Seconds until the object comes within ``radius`` m of the robot at constant velocity.

    0 when it is already that close, +inf when its straight-line path never gets that close.
    """
    p = np.asarray(position, np.float64)[:2]
    v = np.asarray(velocity, np.float64)[:2]
    c = p @ p - radius * radius
    if c <= 0:
        return 0.0
    a = v @ v
    b = 2.0 * (p @ v)
    disc = b * b - 4 * a * c
    if a < 1e-12 or b >= 0 or disc < 0:
        return math.inf
    return float((-b - math.sqrt(disc)) / (2 * a))


def crossing_time(
    position: np.ndarray,
    velocity: np.ndarray,
    half_width: float = 1.0,
    max_ahead: float = 10.0,
    horizon: float = 3.0,
    min_lateral_speed: float = 0.2,
) -> Optional[float]:
    """Seconds until the object enters the robot's path, or None when it does not within ``horizon``.

    The path is the corridor ahead of the robot, 0 < x < ``max_ahead``, |y| <= ``half_width``. Only
    objects moving sideways (|vy| >= ``min_lateral_speed``) toward or through the corridor cross it;
    one already inside and moving sideways is crossing now (0).
    """
    p = np.asarray(position, np.float64)[:2]
    v = np.asarray(velocity, np.float64)[:2]
    if abs(v[1]) < min_lateral_speed:
        return None
    if abs(p[1]) <= half_width:
        t = 0.0
    else:
        edge = math.copysign(half_width, p[1])
        t = (edge - p[1]) / v[1]
        if t < 0:
            return None  # moving away from the corridor
    if t > horizon:
        return None
    x_at = p[0] + v[0] * t
    if not (0.0 < x_at < max_ahead):
        return None
    return float(t)
