"""Event-head probabilities over time -> start / ongoing / end events with hysteresis.

The event head predicts, per event type and horizon, the probability that the event is active at
some time in (t, t + horizon]. Raw per-frame probabilities flicker around a threshold; an EMA plus
separate on/off thresholds turns them into the few state changes a robot should react to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.types import Event

STATE_START, STATE_ONGOING, STATE_END = 0, 1, 2


@dataclass
class EventTrackerConfig:
    """Smoothing and hysteresis of predicted events."""

    default_on: float = 0.5  # on-threshold for event types the manifest gives none for
    off_ratio: float = 0.7  # off-threshold = on-threshold * off_ratio (0.5 -> 0.35)
    alpha: float = 0.5  # EMA weight of the newest probabilities (1 = no smoothing)

    def validate(self) -> "EventTrackerConfig":
        if not (0.0 < self.default_on <= 1.0):
            raise ValueError(f"events.default_on: must be in (0, 1], got {self.default_on!r}")
        if not (0.0 < self.off_ratio <= 1.0):
            raise ValueError(f"events.off_ratio: must be in (0, 1], got {self.off_ratio!r}")
        if not (0.0 < self.alpha <= 1.0):
            raise ValueError(f"events.alpha: must be in (0, 1], got {self.alpha!r}")
        return self


class EventTracker:
    """Per event type: EMA over the (H,) horizon probabilities, then a two-threshold state machine.

    An event turns on when its smoothed probability at any horizon reaches the on-threshold and turns
    off when all horizons fall below the off-threshold. While on, it is reported at the shortest
    horizon whose smoothed probability is at least the off-threshold (the soonest it is expected).
    """

    def __init__(self, event_types: Sequence[str], horizons: Sequence[float],
                 thresholds: Optional[Dict[str, float]] = None, cfg: Optional[EventTrackerConfig] = None):
        self.cfg = (cfg or EventTrackerConfig()).validate()
        self.event_types = list(event_types)
        self.horizons = np.asarray(horizons, np.float32)  # (H,)
        if len(self.event_types) == 0 or self.horizons.ndim != 1 or len(self.horizons) == 0:
            raise ValueError("EventTracker needs at least one event type and one horizon")
        if np.any(np.diff(self.horizons) <= 0) or self.horizons[0] <= 0:
            raise ValueError(f"event horizons must be positive and increasing, got {list(horizons)}")
        thresholds = dict(thresholds or {})
        unknown = set(thresholds) - set(self.event_types)
        if unknown:
            raise ValueError(f"event_thresholds: unknown event types {sorted(unknown)}")
        self.on = np.array([float(thresholds.get(e, self.cfg.default_on)) for e in self.event_types], np.float32)
        if np.any(~np.isfinite(self.on)) or np.any(self.on <= 0) or np.any(self.on > 1):
            raise ValueError(f"event_thresholds: each must be in (0, 1], got {thresholds}")
        self.off = self.on * self.cfg.off_ratio  # (E,)
        self.reset()

    def set_threshold(self, event_type: str, on: float) -> None:
        """The on-threshold of `event_type` becomes `on` (its off-threshold follows)."""
        if not (math.isfinite(on) and 0.0 < on <= 1.0):
            raise ValueError(f"event threshold of {event_type}: must be in (0, 1], got {on!r}")
        e = self.event_types.index(event_type)
        self.on[e] = float(on)
        self.off = self.on * self.cfg.off_ratio

    def raise_thresholds(self, event_types: Sequence[str], floor: float) -> None:
        """On-thresholds of `event_types` become at least `floor` (their off-thresholds follow)."""
        for e, name in enumerate(self.event_types):
            if name in event_types:
                self.on[e] = max(float(self.on[e]), float(floor))
        self.off = self.on * self.cfg.off_ratio

    def reset(self) -> None:
        """Forget the smoothed state (e.g. when time jumps backwards)."""
        self.smoothed: Optional[np.ndarray] = None  # (E, H)
        self.active = np.zeros(len(self.event_types), bool)  # (E,)
        self._fresh = np.ones(len(self.event_types), bool)  # (E,) rows whose EMA restarts at the next update


    def update(self, probs: np.ndarray, observed: Optional[np.ndarray] = None,
               track_ids: Optional[np.ndarray] = None) -> List[Event]:
        """(E,H) probabilities for one frame -> events that start, continue or end at this frame.

        observed: (E,) bool, the types the frame's modalities can observe (default all). An unobserved type
        has no state: nothing of it is active or reported, and its smoothing restarts when evidence returns.
        track_ids: (E,) int, the tracked object each type's evidence comes from (0: none), put on its events."""
        p = np.asarray(probs, np.float32)
        shape = (len(self.event_types), len(self.horizons))
        if p.shape != shape:
            raise ValueError(f"event probabilities: expected shape {shape}, got {p.shape}")
        p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)  # a NaN from the model reads as "no evidence"
        a = self.cfg.alpha
        self.smoothed = p.copy() if self.smoothed is None else a * p + (1.0 - a) * self.smoothed  # (E, H)
        seen = np.ones(len(self.event_types), bool) if observed is None else np.asarray(observed, bool)  # (E,)
        self.smoothed[self._fresh] = p[self._fresh]
        self._fresh = ~seen
        self.active &= seen
        peak = self.smoothed.max(axis=1)  # (E,)
        ids = np.zeros(len(self.event_types), np.int64) if track_ids is None else np.asarray(track_ids, np.int64)
        events: List[Event] = []
        for e, name in enumerate(self.event_types):
            if not seen[e]:
                continue
            if not self.active[e] and peak[e] >= self.on[e]:
                self.active[e] = True
                events.append(self._event(e, STATE_START, int(ids[e])))
            elif self.active[e] and peak[e] < self.off[e]:
                self.active[e] = False
                events.append(self._event(e, STATE_END, int(ids[e])))
            elif self.active[e]:
                events.append(self._event(e, STATE_ONGOING, int(ids[e])))
        return events

    def _event(self, e: int, state: int, track_id: int = 0) -> Event:
        row = self.smoothed[e]  # (H,)
        hit = np.flatnonzero(row >= self.off[e])
        h = int(hit[0]) if len(hit) else int(np.argmax(row))
        # onset expected between the previous horizon and this one: report the middle of that interval
        prev = float(self.horizons[h - 1]) if h > 0 else 0.0
        tte = 0.5 * (prev + float(self.horizons[h])) if state != STATE_END else -1.0
        prob = float(row[h])
        if not math.isfinite(prob):
            prob = 0.0
        return Event(type=self.event_types[e], probability=prob, horizon=float(self.horizons[h]), state=state,
                     time_to_event=tte, track_id=max(track_id, 0))
