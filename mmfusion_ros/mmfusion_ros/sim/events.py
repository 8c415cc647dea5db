"""Event definitions, computed from the simulator's ground truth so the event head can be scored.

Every event is a boolean function of the world state at time t (objects relative to the robot, in
base_link; the robot's own track). Its intervals [onset, end) are where it is true on a 20 Hz grid.

- person_approaching: a person within APPROACH_RANGE m, in front (x > 0), whose own ground velocity
  points at the robot faster than APPROACH_SPEED m/s.
- crossing_path: any object inside the corridor ahead (0 < x < CORRIDOR_LENGTH, |y| < half robot
  width + CORRIDOR_MARGIN + the object's half width) moving sideways faster than CROSS_SPEED m/s
  (its own velocity's y component in base_link).
- collision_imminent: an object in the robot's swept corridor (|y| < half robot width + object's
  half width) ahead, closing, with time to collision (gap / closing speed) below TTC_THRESHOLD s.
- alarm_sounding: an alarm device is sounding within HEARING_RANGE m.
- dog_barking: a dog is barking within HEARING_RANGE m.
- robot_impact: within IMPACT_DURATION s after an impact (bump or collision) of the robot.
- rough_ground: the robot is on rough ground and moving faster than ROUGH_MIN_SPEED m/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..core.types import EVENT_HORIZONS, EVENT_TYPES
from .world import PREROLL, TAIL, Scene

GRID_HZ = 20.0  # event evaluation grid
APPROACH_RANGE = 10.0
APPROACH_SPEED = 0.4
CORRIDOR_LENGTH = 8.0
CORRIDOR_MARGIN = 0.5
CROSS_SPEED = 0.3
TTC_THRESHOLD = 1.5
HEARING_RANGE = 40.0
IMPACT_DURATION = 0.4
ROUGH_MIN_SPEED = 0.2


@dataclass
class EventTimeline:
    """Event activity of a scene on the grid, plus the intervals derived from it."""

    t: np.ndarray  # (G,) seconds
    active: np.ndarray  # (G, E) bool, EVENT_TYPES order
    track: np.ndarray  # (G, E) int32 track id responsible (0: the robot itself / none)

    def intervals(self) -> List[Dict]:
        """[{type, onset, end, track_id}] for every maximal run of activity (end exclusive)."""
        out = []
        dt = 1.0 / GRID_HZ
        for e, name in enumerate(EVENT_TYPES):
            a = np.concatenate([[False], self.active[:, e], [False]])
            starts = np.flatnonzero(~a[:-1] & a[1:])
            ends = np.flatnonzero(a[:-1] & ~a[1:])
            for s, f in zip(starts, ends):
                out.append({"type": name, "onset": round(float(self.t[s]), 3),
                            "end": round(float(self.t[f - 1] + dt), 3), "track_id": int(self.track[s, e])})
        return sorted(out, key=lambda d: (d["onset"], d["type"]))

    def _idx(self, t: float) -> int:
        return int(np.clip(np.round((t - self.t[0]) * GRID_HZ), 0, len(self.t) - 1))

    def now(self, t: float) -> np.ndarray:
        """(E,) uint8 active at t."""
        return self.active[self._idx(t)].astype(np.uint8)

    def future(self, t: float, horizons=EVENT_HORIZONS) -> np.ndarray:
        """(E, H) uint8: active at any grid time in (t, t + h]."""
        i = self._idx(t)
        out = np.zeros((self.active.shape[1], len(horizons)), np.uint8)
        for k, h in enumerate(horizons):
            j = min(i + int(round(h * GRID_HZ)), len(self.t) - 1)
            out[:, k] = self.active[i + 1:j + 1].any(0) if j > i else 0
        return out

    def time_to_onset(self, t: float) -> np.ndarray:
        """(E,) float32 seconds from t to the next onset after t, +inf when there is none."""
        i = self._idx(t)
        a = self.active
        onset = np.zeros_like(a)
        onset[1:] = a[1:] & ~a[:-1]
        out = np.full(a.shape[1], np.inf, np.float32)
        for e in range(a.shape[1]):
            nxt = np.flatnonzero(onset[i + 1:, e])
            if len(nxt):
                out[e] = (nxt[0] + 1) / GRID_HZ
        return out


def compute(scene: Scene) -> EventTimeline:
    """Evaluate every event definition on the scene's 20 Hz grid."""
    cfg = scene.config
    t = np.arange(-PREROLL, scene.duration + TAIL - 1e-9, 1.0 / GRID_HZ)
    G, E = len(t), len(EVENT_TYPES)
    active = np.zeros((G, E), bool)
    track = np.zeros((G, E), np.int32)
    ix = {n: i for i, n in enumerate(EVENT_TYPES)}
    half_w = cfg.robot_width / 2.0

    def mark(name, mask, tid):
        e = ix[name]
        new = mask & ~active[:, e]
        track[new, e] = tid
        active[:, e] |= mask

    for o in scene.objects:
        rel = scene.relative(o, t)
        x, y = rel["xy"][:, 0], rel["xy"][:, 1]
        r = rel["range"]
        ohw = 0.5 * float(max(o.shape.size[0], o.shape.size[1]))  # conservative half width for any heading
        if o.cls == "person":
            vo = o.velocity(t)  # world
            toward = -np.sum(vo * (o.position(t) - scene.ego.xy[scene.ego.index(t)]), 1) / np.maximum(r, 1e-6)
            mark("person_approaching", (r < APPROACH_RANGE) & (x > 0) & (toward > APPROACH_SPEED), o.track_id)
        in_corr = (x > 0) & (x < CORRIDOR_LENGTH) & (np.abs(y) < half_w + CORRIDOR_MARGIN + ohw)
        mark("crossing_path", in_corr & (np.abs(rel["v_own"][:, 1]) > CROSS_SPEED), o.track_id)
        gap = x - ohw - cfg.robot_length / 2.0
        closing = -rel["v_rel"][:, 0]
        swept = (x > 0) & (np.abs(y) < half_w + ohw)
        ttc = np.where(closing > 0.05, np.maximum(gap, 0.0) / np.maximum(closing, 0.05), np.inf)
        mark("collision_imminent", swept & (ttc < TTC_THRESHOLD), o.track_id)
        if o.cls in ("alarm", "dog"):
            name = "alarm_sounding" if o.cls == "alarm" else "dog_barking"
            mark(name, o.sounding(t) & (r < HEARING_RANGE), o.track_id)
    imp = np.zeros(G, bool)
    for ti, _ in scene.ego.impacts:
        imp |= (t >= ti) & (t < ti + IMPACT_DURATION)
    mark("robot_impact", imp, 0)
    i = scene.ego.index(t)
    mark("rough_ground", scene.ego.rough[i] & (np.abs(scene.ego.v[i]) > ROUGH_MIN_SPEED), 0)
    return EventTimeline(t, active, track)
