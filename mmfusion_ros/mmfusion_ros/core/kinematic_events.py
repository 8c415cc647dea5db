"""Geometric events forecast from LiDAR tracks: constant-velocity extrapolation of each track.

The event head reads a few seconds of fused embeddings, a space trained to say *what* is there; how
far an object is and how fast it closes in are barely in it, so the head's collision, crossing and
approach warnings come late or not at all (model card: collision AP 0.09). The tracker
(core/tracking.py) measures exactly those quantities, so for the event types defined by geometry this
module extrapolates every confirmed track at its tracked velocity over the event horizons and tests
the same predicates the simulator's ground truth uses (sim/events.py):

- person_approaching: a track within ``approach_range`` m ahead whose own ground velocity points at the
  robot faster than ``approach_speed`` m/s, weighted by how sure we are it is a person: 1 when the camera
  named its crop a person, else the larger of the frame's published probability that a person is in the
  scene (for a track no larger than ``person_max_footprint``) and ``person_shape_prob`` for a track of a
  standing person's shape (``person_heights`` tall on a ``person_footprints`` footprint, its largest box
  seen): crop labels of distant, sparse clusters are unreliable (the demo's walking person is called a car
  or a dog), while the LiDAR measures the shape. ``person_shape_prob`` is the share of such tracks moving
  at the robot that are people, fitted by `mmfusion calibrate` (train/track_events.py person_shape_share);
- crossing_path: a track inside the corridor ahead moving sideways faster than ``cross_speed`` m/s;
- collision_imminent: a track in the robot's swept corridor, closing, with time to collision below
  ``ttc_threshold`` s;
- robot_impact: a track standing still in the world (own speed at most ``impact_max_own_speed``) in the swept
  corridor whose gap to the robot's front reaches zero. A moving person, dog or cyclist on a collision course
  steers clear more often than not (DS37 heldout: 18 of 22 impact forecasts that no impact followed were movers),
  so contact with a mover is not forecast; collision_imminent warns of it.

Tracks are in the robot frame, so their velocities are relative to the moving, turning robot: a static
object at p moves at -(v_ego + w x p), so a turn alone makes the cones ahead "cross" the path. The object's
own velocity (needed for "the person walks towards us", not "we drive towards the person", and for
crossing) is therefore v_rel + v_ego + w x p. The yaw rate w is the IMU's gyro z over its newest
``yaw_rate_window`` s when the frame has an IMU (its z axis taken along base_link's), else fitted with v_ego
from the tracks; v_ego is the median over the confirmed tracks of what each one says it is (most of what a
LiDAR tracks stands still), or zero with fewer than ``min_reference_tracks`` of them. A wheeled robot does not
slide sideways, so unless ``holonomic``, v_ego keeps only its forward part: on rough ground the clusters jump,
and a sideways v_ego read from them made standing people "walk at" the robot (DS37 heldout, person x rough
ground: 10 of the 11 approach forecasts no approach followed).

Partial views: a track's box is the largest it has been (a cluster seen end-on shrinks), small objects get half
their largest side both ways, and a confirmed track that stops being detected (inside the LiDAR's minimum
range just before contact, or occluded) is extrapolated on for ``coast_s``.

A forecast onset at tau seconds gives horizon h the probability ``max_probability`` when
tau <= h - time_sigma/2, 0 when tau >= h + time_sigma/2, and a linear ramp in between: a forecast near the
horizon's edge is uncertain. Written by hand: no library forecasts these predicates, and each is a few lines
of vector algebra over all tracks at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .types import DetectedObject

#: m: objects whose footprint is at most this are partial views more often than not (box size kept at its
#: largest, half its largest side both ways)
SMALL_OBJECT = 2.0
#: event types this module forecasts (the others stay the event head's alone)
KINEMATIC_EVENTS: Tuple[str, ...] = ("person_approaching", "crossing_path", "collision_imminent", "robot_impact")


@dataclass
class KinematicEventConfig:
    """Footprint, predicate thresholds and forecast confidence (SI units, robot frame x forward, y left)."""

    robot_length: float = 0.8  # footprint along x, m; the front bumper is robot_length / 2 ahead of the origin
    robot_width: float = 0.6  # footprint across, m
    corridor_length: float = 8.0  # crossing_path: the corridor ahead reaches this far, m
    corridor_margin: float = 0.5  # crossing_path: the corridor is this much wider than the robot on each side, m
    cross_speed: float = 0.3  # crossing_path: sideways speed of the object itself, m/s
    approach_range: float = 10.0  # person_approaching: a person within this range, m
    approach_speed: float = 0.4  # person_approaching: the person's own speed towards the robot, m/s
    speed_margin: float = 0.3  # m/s added to cross_speed and approach_speed in a forecast: partly seen objects' tracked velocities jitter by about this much
    impact_max_own_speed: float = 0.5  # robot_impact: only objects moving slower than this on their own, m/s (movers steer clear)
    impact_horizon: float = 1.0  # robot_impact: forecast only contacts this soon, s (further out the robot may still brake or swerve; collision_imminent warns then)
    ttc_threshold: float = 1.5  # collision_imminent: time to collision below this, s
    min_closing: float = 0.05  # a track closes in only faster than this, m/s (below: parked relative to us)
    person_max_footprint: float = 1.5  # person_approaching: a track longer or wider than this is no person, m
    person_heights: Tuple[float, float] = (1.4, 2.1)  # person_approaching: a standing person's box height, m (largest seen)
    person_footprints: Tuple[float, float] = (0.3, 1.0)  # person_approaching: ... and its longer side, m (a wall's edge is thinner)
    person_shape_prob: float = 0.8  # person_approaching: weight of a person-shaped track (the bundle's fitted value replaces it; CAL23: 0.80)
    structure_length: float = 8.0  # a track longer than this is structure (a wall's visible part slides as we pass), m
    pole_height: float = 2.5  # a track taller than this on a footprint under 1 m is a pole or a wall edge, m
    min_hits: int = 5  # sweeps a track must be seen in a row before its velocity is trusted
    min_reference_tracks: int = 2  # other confirmed tracks needed to estimate the robot's own velocity
    time_sigma: float = 0.3  # s, width of the probability ramp at a horizon's edge (the forecast onset's spread)
    max_probability: float = 0.9  # a certain forecast of a constant-velocity model, still a forecast
    step: float = 0.05  # s, time grid the predicates are tested on
    yaw_rate_window: float = 0.2  # s of the newest IMU samples whose mean gyro z is the robot's yaw rate
    holonomic: bool = False  # the robot can move sideways (mecanum wheels, legs); False: its own velocity is along its heading, as a wheeled robot's is
    coast_s: float = 1.0  # s a confirmed track that stops being detected (inside the LiDAR's min_range, occluded) is extrapolated on
    min_on_threshold: float = 0.5  # on-threshold floor for the types forecast here when the bundle has none fitted on the head + tracks merge (the head's own were fitted to the head alone)

    def validate(self) -> "KinematicEventConfig":
        if not (isinstance(self.coast_s, (int, float)) and math.isfinite(self.coast_s) and self.coast_s >= 0):
            raise ValueError(f"kinematic_events.coast_s: must be a finite number >= 0, got {self.coast_s!r}")
        for name in ("robot_length", "robot_width", "corridor_length", "approach_range", "ttc_threshold",
                     "person_max_footprint", "time_sigma", "step", "yaw_rate_window", "structure_length", "impact_horizon",
                     "pole_height"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"kinematic_events.{name}: must be a finite number > 0, got {v!r}")
        for name in ("corridor_margin", "cross_speed", "approach_speed", "min_closing", "speed_margin",
                     "impact_max_own_speed"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"kinematic_events.{name}: must be a finite number >= 0, got {v!r}")
        if not (0.0 < self.min_on_threshold <= 1.0):
            raise ValueError(f"kinematic_events.min_on_threshold: must be in (0, 1], got {self.min_on_threshold!r}")
        for name in ("person_heights", "person_footprints"):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                                      for x in v) and 0 <= v[0] <= v[1]):
                raise ValueError(f"kinematic_events.{name}: must be [low, high] with 0 <= low <= high, got {v!r}")
        if not (isinstance(self.person_shape_prob, (int, float)) and 0.0 <= self.person_shape_prob <= 1.0):
            raise ValueError(f"kinematic_events.person_shape_prob: must be in [0, 1], got {self.person_shape_prob!r}")
        if not (0.0 < self.max_probability <= 1.0):
            raise ValueError(f"kinematic_events.max_probability: must be in (0, 1], got {self.max_probability!r}")
        if not isinstance(self.holonomic, bool):
            raise ValueError(f"kinematic_events.holonomic: must be true or false, got {self.holonomic!r}")
        for name in ("min_hits", "min_reference_tracks"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"kinematic_events.{name}: must be an integer >= 1, got {v!r}")
        return self


@dataclass
class KinematicForecast:
    """One frame's forecast, in the caller's event-type order."""

    probs: np.ndarray  # (E, H) probability the event is active within each horizon; NaN: not forecast here
    track_ids: np.ndarray  # (E,) int, the track responsible for the most probable forecast (0: none)
    ego_velocity: np.ndarray  # (2,) the robot's own velocity estimate, m/s, robot frame
    yaw_rate: float = 0.0  # rad/s, the robot's yaw rate used (IMU, or fitted to the tracks)
    movers: List[Tuple[DetectedObject, np.ndarray]] = dataclasses.field(default_factory=list)  # each track
    #   forecast (its largest box seen, coasted ones included) with its own ground velocity (2,), m/s


def merge_forecast(head: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """(..., E, H) calibrated head probabilities and track forecasts (NaN: not forecast) -> their noisy-OR
    where the tracks forecast, the head's elsewhere: either source alone may warn."""
    have = np.isfinite(forecast)
    return np.where(have, 1.0 - (1.0 - head) * (1.0 - np.where(have, forecast, 0.0)), head)


def forecast_on_threshold(head: float, fitted: Optional[float], floor: float) -> float:
    """On-threshold of a type the tracks forecast: the one fitted on the head + tracks merge (what the node
    thresholds) when the bundle has it, else the head's own raised to `floor` (fitted to the head alone, it
    would let the tracks' extra evidence through with no false-alarm budget)."""
    return float(fitted) if fitted is not None else max(float(head), float(floor))


def _turn(w: float, p: np.ndarray) -> np.ndarray:
    """(N, 2) velocity w x p of points p (N, 2) on a frame turning at w rad/s about z."""
    return w * np.stack([-p[:, 1], p[:, 0]], 1)


def person_shaped(size: np.ndarray, cfg: "KinematicEventConfig") -> bool:
    """A box (length, width, height) of a standing person's shape: cfg.person_heights tall on a footprint whose
    longer side is within cfg.person_footprints."""
    foot, h = float(max(size[0], size[1])), float(size[2])
    return (cfg.person_heights[0] <= h <= cfg.person_heights[1]
            and cfg.person_footprints[0] <= foot <= cfg.person_footprints[1])


def _person_weight(o: DetectedObject, person_prob: float, cfg: "KinematicEventConfig") -> float:
    """How sure we are the track is a person: 1 when the camera named its crop one, else the larger of the
    scene's person probability (a track that could be one by its size) and the person-shape weight."""
    if o.label_from_camera and "person" in str(o.label).lower():
        return 1.0
    w = person_prob if float(max(o.size[0], o.size[1])) <= cfg.person_max_footprint else 0.0
    return max(w, float(cfg.person_shape_prob)) if person_shaped(o.size, cfg) else w


def _half_extents(o: DetectedObject, small: float = SMALL_OBJECT) -> Tuple[float, float]:
    """Half extents (m) of the object's box along the robot's x and y. A small object's cluster is often a
    partial view whose yaw flips from sweep to sweep, so it gets half its largest side both ways (the
    simulator's definitions do the same); a large one (a wall beside the path) its oriented extents, so
    it is long, but not wide across the path."""
    L, W = float(o.size[0]), float(o.size[1])
    if not (math.isfinite(L) and math.isfinite(W)):
        return 0.0, 0.0
    if max(L, W) <= small or not math.isfinite(float(o.yaw)):
        return 0.5 * max(L, W), 0.5 * max(L, W)
    c, s = abs(math.cos(float(o.yaw))), abs(math.sin(float(o.yaw)))
    return 0.5 * (L * c + W * s), 0.5 * (L * s + W * c)


class KinematicEventForecaster:
    """Keeps how long each track has been seen; ``update`` forecasts the geometric events of one sweep."""

    def __init__(self, event_types: Sequence[str], horizons: Sequence[float],
                 cfg: Optional[KinematicEventConfig] = None):
        self.cfg = (cfg or KinematicEventConfig()).validate()
        self.event_types = list(event_types)
        self.horizons = np.asarray(horizons, np.float64)  # (H,)
        if self.horizons.ndim != 1 or len(self.horizons) == 0 or np.any(self.horizons <= 0):
            raise ValueError(f"kinematic events: horizons must be positive, got {list(horizons)}")
        self.rows = {e: i for i, e in enumerate(self.event_types) if e in KINEMATIC_EVENTS}
        n = int(math.ceil(float(self.horizons.max()) / self.cfg.step))
        self.tau = np.arange(0, n + 1, dtype=np.float64) * self.cfg.step  # (K,) 0 = now
        self.reset()

    def reset(self) -> None:
        """Forget track ages (time jumped, or the tracker was reset)."""
        self._seen: Dict[int, int] = {}
        self._last: Dict[int, Tuple[DetectedObject, float]] = {}  # confirmed track -> (newest detection, stamp)
        self._size: Dict[int, np.ndarray] = {}  # small track -> (3,) largest box seen: a partial view shrinks it

    @property
    def forecast_types(self) -> List[str]:
        return list(self.rows)

    def update(self, objects: Sequence[DetectedObject], person_prob: float = 0.0,
               yaw_rate: Optional[float] = None, stamp: Optional[float] = None) -> KinematicForecast:
        """Tracked objects of one sweep (robot frame) -> per-type probabilities over the horizons.

        person_prob: the frame's probability that a person is in the scene (its published labels), for
        tracks the camera did not name. yaw_rate: the robot's, rad/s (None: fitted to the tracks).
        stamp: the sweep's time, s; with it, a confirmed track that is no longer detected is extrapolated
        at its last velocity for ``coast_s`` (an object inside the LiDAR's minimum range is about to be hit)."""
        person_prob = float(np.clip(np.nan_to_num(person_prob), 0.0, 1.0))
        E, H = len(self.event_types), len(self.horizons)
        probs = np.full((E, H), np.nan, np.float64)
        for r in self.rows.values():
            probs[r] = 0.0
        ids = np.zeros(E, np.int64)
        seen = {}
        for o in objects:
            if o.track_id > 0:
                tid = int(o.track_id)  # a confirmed track detected again after coasting stays confirmed
                seen[tid] = self.cfg.min_hits if tid in self._last else self._seen.get(tid, 0) + 1
        self._seen = seen
        sizes = {}
        for o in objects:  # small objects only: a large box's axes swap as its yaw flips, maxima would mix them
            tid = int(o.track_id)
            if tid > 0 and np.all(np.isfinite(o.size)) and max(o.size[0], o.size[1]) <= SMALL_OBJECT \
                    and o.size[2] <= self.cfg.pole_height:  # a pole keeps its own thin box
                big = np.maximum(self._size.get(tid, o.size), o.size)
                sizes[tid] = big if max(big[0], big[1]) <= SMALL_OBJECT else o.size
        self._size = {**{t: v for t, v in self._size.items() if t in self._last}, **sizes}
        objects = [dataclasses.replace(o, size=sizes[int(o.track_id)]) if int(o.track_id) in sizes else o
                   for o in objects]
        conf = [o for o in objects if o.track_id > 0 and seen[int(o.track_id)] >= self.cfg.min_hits
                and np.all(np.isfinite(o.center[:2])) and np.all(np.isfinite(o.velocity[:2]))]
        coasted = self._coast(conf, stamp)
        if not conf and not coasted or not self.rows:
            return KinematicForecast(probs.astype(np.float32), ids, np.zeros(2, np.float32))
        ego, w = self._ego_motion(np.array([o.center[:2] for o in conf], np.float64).reshape(-1, 2),
                                  np.array([o.velocity[:2] for o in conf], np.float64).reshape(-1, 2),
                                  yaw_rate)  # (2,), rad/s: from the detected tracks
        # walls and poles stand still whatever their tracked velocity says: they move as the static world does
        tracks = conf + coasted
        static = -(ego[None, :] + _turn(w, np.array([o.center[:2] for o in tracks], np.float64)))  # (N, 2)
        tracks = [dataclasses.replace(o, velocity=np.array([*static[i], 0.0], np.float32)) if self._structure(o) else o
                  for i, o in enumerate(tracks)]
        p = np.array([o.center[:2] for o in tracks], np.float64)  # (N, 2)
        v = np.array([o.velocity[:2] for o in tracks], np.float64)  # (N, 2) relative to the robot
        half = np.array([_half_extents(o) for o in tracks], np.float64)  # (N, 2) along the robot's x and y
        person = np.array([_person_weight(o, person_prob, self.cfg) for o in tracks])  # (N,)
        own = v + ego[None, :] + _turn(w, p)  # (N, 2) each object's own velocity
        onset = self._onsets(p, v, half, person, own)  # name -> (N,) first tau the predicate holds, inf: never
        cfg = self.cfg
        for name, r in self.rows.items():
            tau = onset[name]  # (N,)
            # (N, H): the event is active at some time within the horizon, smoothly at its edge
            ramp = (self.horizons[None, :] - np.minimum(tau, 1e6)[:, None]) / cfg.time_sigma + 0.5
            pr = cfg.max_probability * np.clip(ramp, 0.0, 1.0)  # (N, H)
            if name == "person_approaching":
                pr = pr * person[:, None]
            probs[r] = pr.max(0)
            if pr.max() > 0:
                ids[r] = int(tracks[int(np.argmax(pr.max(1)))].track_id)
        return KinematicForecast(probs.astype(np.float32), ids, ego.astype(np.float32), float(w),
                                 list(zip(tracks, own.astype(np.float32))))

    def _structure(self, o: DetectedObject) -> bool:
        """Walls and poles do not move: their tracked velocity is the visible part sliding, not motion (a bus,
        longer than structure_length, would be taken for a wall: this is a ground robot's trade)."""
        L, W, Hh = (float(x) for x in o.size[:3])
        return max(L, W) > self.cfg.structure_length or (Hh > self.cfg.pole_height and max(L, W) < 1.0)

    def _coast(self, conf: List[DetectedObject], stamp: Optional[float]) -> List[DetectedObject]:
        """Remember this sweep's confirmed tracks; return the remembered ones not detected now, moved on at
        their last relative velocity, while they are younger than coast_s."""
        if stamp is None or not math.isfinite(stamp):
            self._last = {}
            return []
        now = {int(o.track_id) for o in conf}
        out = []
        for tid, (o, t0) in list(self._last.items()):
            dt = float(stamp) - t0
            if tid in now or not (0.0 < dt <= self.cfg.coast_s):
                if tid not in now:
                    del self._last[tid]
                continue
            c = o.center.astype(np.float64).copy()
            c[:2] += o.velocity[:2] * dt
            out.append(dataclasses.replace(o, center=c))
        for o in conf:
            self._last[int(o.track_id)] = (o, float(stamp))
        return out

    def _ego_motion(self, p: np.ndarray, v: np.ndarray, yaw_rate: Optional[float]) -> Tuple[np.ndarray, float]:
        """(N, 2) positions and relative velocities -> the robot's velocity (2,) and yaw rate (rad/s).

        Each static track says v_ego = -(v_rel + w x p); the median over tracks ignores the few that move.
        Without a yaw rate, (vx, vy, w) are fitted by least squares, once more without the tracks whose
        residual is over 0.5 m/s (the movers)."""
        n = len(v)
        w = float(yaw_rate) if yaw_rate is not None and math.isfinite(yaw_rate) else None
        if n < self.cfg.min_reference_tracks:
            return np.zeros(2), (w or 0.0)
        if w is None and n >= 3:
            # v_rel_x = -vx + w y, v_rel_y = -vy - w x: two rows per track, unknowns (vx, vy, w)
            A = np.zeros((2 * n, 3))
            A[0::2, 0], A[0::2, 2] = -1.0, p[:, 1]
            A[1::2, 1], A[1::2, 2] = -1.0, -p[:, 0]
            b = v.reshape(-1)
            keep = np.ones(n, bool)
            for _ in range(2):
                rows = np.repeat(keep, 2)
                u = np.linalg.lstsq(A[rows], b[rows], rcond=None)[0]
                res = np.linalg.norm((A @ u - b).reshape(n, 2), axis=1)
                keep = res < 0.5
                if keep.sum() < 3:
                    break
            w = float(u[2])
        w = w or 0.0
        says = -(v + _turn(w, p))  # (N, 2) v_ego by each track
        med = np.median(says, axis=0)
        return (med if self.cfg.holonomic else np.array([med[0], 0.0])), w

    def _onsets(self, p: np.ndarray, v: np.ndarray, half: np.ndarray, person: np.ndarray,
                own: np.ndarray) -> Dict[str, np.ndarray]:
        cfg = self.cfg
        tau = self.tau  # (K,)
        x = p[:, None, 0] + v[:, None, 0] * tau[None]  # (N, K) positions under constant relative velocity
        y = p[:, None, 1] + v[:, None, 1] * tau[None]  # (N, K)
        hw = 0.5 * cfg.robot_width
        closing = -v[:, 0]  # (N,) along the robot's heading
        hx, hy = half[:, 0:1], half[:, 1:2]  # (N, 1) the box's half extents along x and y
        swept = (x > 0) & (np.abs(y) < hw + hy)  # (N, K)
        gap = x - hx - 0.5 * cfg.robot_length  # (N, K)
        closing_ok = (closing > cfg.min_closing)[:, None]  # (N, 1)
        ttc = np.where(closing_ok, np.maximum(gap, 0.0) / np.maximum(closing, cfg.min_closing)[:, None], np.inf)
        r = np.hypot(x, y)  # (N, K)
        toward = -(own[:, None, 0] * x + own[:, None, 1] * y) / np.maximum(r, 1e-6)  # (N, K) own speed at us
        corridor = (x > 0) & (x < cfg.corridor_length) & (np.abs(y) < hw + cfg.corridor_margin + hy)
        masks = {
            "person_approaching": (person > 0)[:, None] & (r < cfg.approach_range) & (x > 0)
                                  & (toward > cfg.approach_speed + cfg.speed_margin),
            "crossing_path": corridor & (np.abs(own[:, 1]) > cfg.cross_speed + cfg.speed_margin)[:, None],
            "collision_imminent": swept & closing_ok & (ttc < cfg.ttc_threshold),
            "robot_impact": swept & closing_ok & (gap <= 0.0) & (tau <= cfg.impact_horizon)[None, :]
                            & (np.hypot(own[:, 0], own[:, 1]) <= cfg.impact_max_own_speed)[:, None],
        }
        out = {}
        for name, m in masks.items():  # (N, K) -> (N,) first tau where it holds
            first = np.argmax(m, axis=1)
            out[name] = np.where(m.any(1), tau[first], np.inf)
        return out
