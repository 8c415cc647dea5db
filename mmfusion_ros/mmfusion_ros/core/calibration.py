"""Calibrated confidence: raw model scores -> probabilities that mean what they say (runtime side, numpy only).

A confidence of 0.9 should be right nine times in ten. The model's raw scores are not: a label's softmax
score over the prompts does not know that an IMU-only embedding carries no object evidence, the event head's
sigmoid was trained with class weights, and the caption's token probability measures fluency, not truth.
This module applies maps fitted on the validation split (train/calibrate.py, `mmfusion calibrate`) and
shipped in the bundle's manifest.json under "calibration".

Method, chosen by measurement (train/calibrate.py `compare_methods`, numbers in MODEL_CARD.md "Calibration"):
each map is a monotone isotonic regression (pool-adjacent-violators over equal-mass bins of the raw score)
stored as piecewise-linear knots and applied with np.interp. It is one cheap call per output, it cannot
reorder scores (so rankings, AP and top-1 stay exactly as the model made them), and it fixes miscalibration
of any shape. Temperature scaling, the usual alternative, rescales one softmax and so keeps the label
scores summing to one: it cannot say "several of these labels are right" or "none is" (an IMU-only
frame), and it leaves the per-subset offsets in place; Platt scaling assumes a sigmoid shape the event head's
weighted scores do not have. Label and caption maps are fitted per presence subset
(core.observability.subset_key of the modalities the frame was fused from), because the same raw score
means different things from camera+audio and from LiDAR alone; a subset missing from the bundle uses a
fallback map fitted on all subsets pooled. Event maps are per event type and horizon.

What "right" means (simulator ground truth; train/calibrate.py documents the details):
- label: the prompt's class is among the frame's objects that the used modalities can observe
  (seen in the camera image for camera/LiDAR, heard for audio; nothing for the IMU);
- event: the event is active at some time within the horizon (the event head's own target);
- caption: every class the published (grounded) caption names is observable and really there, and it
  names at least one when something observable is there.

Event thresholds (`thresholds`) are on the calibrated scale and replace the manifest's raw
`event_thresholds` when calibration is present: the lowest on-threshold per type whose onsets, run through
core.events.EventTracker as the node runs it, give at most `budget_per_min` x `event_fit_margin` false
alarms per minute on the fitting data (the margin, 0.8, keeps new data within the budget; chosen by
cross-validation in train/calibrate.py). A false alarm is a start while the event is neither active nor due
within the horizon the event reports.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmfusion_ros.core.observability import subset_key

FORMAT_VERSION = 1
_IDENTITY = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def _knots(spec: Any, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """{"x": [...], "y": [...]} -> checked (x, y) arrays: increasing x in [0, 1], y in [0, 1], same length."""
    if not isinstance(spec, Mapping) or "x" not in spec or "y" not in spec:
        raise ValueError(f"manifest.calibration.{where}: expected {{'x': [...], 'y': [...]}}, got {type(spec).__name__}")
    x = np.asarray(spec["x"], np.float64)
    y = np.asarray(spec["y"], np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"manifest.calibration.{where}: x and y must be equal-length lists of >= 2 numbers")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"manifest.calibration.{where}: knots must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"manifest.calibration.{where}: x must be strictly increasing")
    if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
        raise ValueError(f"manifest.calibration.{where}: knots must lie in [0, 1]")
    return x, y


def apply_knots(scores: np.ndarray, knots: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Scores of any shape -> calibrated, by linear interpolation between knots (flat outside them)."""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), 0.0, 1.0)
    return np.interp(s, knots[0], knots[1])  # float64: a strictly increasing map keeps close scores apart


def knots_to_json(x: Sequence[float], y: Sequence[float], n: Optional[int] = None) -> dict:
    """(x, y) knots -> the manifest's JSON form (rounded to 6 decimals; still strictly increasing x)."""
    xs, ys = [], []
    for a, b in zip(x, y):
        a, b = round(float(a), 6), round(float(min(max(b, 0.0), 1.0)), 6)
        if xs and a <= xs[-1]:
            continue
        xs.append(a)
        ys.append(b)
    out: Dict[str, Any] = {"x": xs, "y": ys}
    if n is not None:
        out["n"] = int(n)
    return out


class Calibration:
    """Calibration maps of one bundle; identity with `available` False when the bundle ships none."""

    def __init__(self, spec: Optional[Mapping] = None, event_types: Sequence[str] = (),
                 horizons: Sequence[float] = (), raw_thresholds: Optional[Mapping[str, float]] = None):
        self.event_types: List[str] = [str(e) for e in event_types]
        self.horizons: List[float] = [float(h) for h in horizons]
        self.available = bool(spec)
        self.spec: Dict[str, Any] = dict(spec or {})
        self.budget_per_min: float = float("nan")
        self._labels: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self._labels_fallback = _IDENTITY
        self._caption: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self._caption_fallback = _IDENTITY
        self._events: Optional[List[List[Tuple[np.ndarray, np.ndarray]]]] = None  # [E][H]
        self.thresholds: Dict[str, float] = {k: float(v) for k, v in (raw_thresholds or {}).items()}
        # per label sensor: how much its embedding counts in the labels' mean (core/observability.label_embedding);
        # None: equal weights
        self.label_weights: Optional[Dict[str, float]] = None
        # on-thresholds of the types the LiDAR tracks forecast, fitted on the head + tracks merge (the node's
        # probabilities for them) against the same budget; empty: the pipeline's floor alone
        self.track_thresholds: Dict[str, float] = {}
        # weight of a person-shaped LiDAR track in the approach forecast (core/kinematic_events.py), fitted as the
        # share of such tracks moving at the robot that are people; None: the forecaster's default
        self.track_person_shape_prob: Optional[float] = None
        if self.available:
            self._read(self.spec)

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: Mapping) -> "Calibration":
        """The bundle's calibration (manifest "calibration"); identity (available False) when absent.

        A present but malformed entry is an error (ValueError naming the key): a bundle that says it is
        calibrated and is not would publish wrong probabilities silently."""
        get = manifest.get if hasattr(manifest, "get") else (lambda k, d=None: d)
        return cls(get("calibration"), get("event_types", []) or [], get("horizons", []) or [],
                   get("event_thresholds", {}) or {})

    def _read(self, spec: Mapping) -> None:
        fmt = spec.get("format_version", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise ValueError(f"manifest.calibration.format_version: {fmt!r} is not supported (this runtime reads {FORMAT_VERSION})")
        for name in ("labels", "caption"):
            part = spec.get(name)
            if part is None:
                continue
            maps = {str(k): _knots(v, f"{name}.subsets.{k}") for k, v in (part.get("subsets") or {}).items()}
            fb = _knots(part["fallback"], f"{name}.fallback") if "fallback" in part else _IDENTITY
            if name == "labels":
                self._labels, self._labels_fallback = maps, fb
            else:
                self._caption, self._caption_fallback = maps, fb
        ev = spec.get("events")
        if ev is not None:
            types = [str(t) for t in ev.get("event_types", self.event_types)]
            if self.event_types and types != self.event_types:
                raise ValueError(f"manifest.calibration.events.event_types {types} differ from the model's {self.event_types}")
            self.event_types = types
            maps = ev.get("maps") or {}
            rows = []
            for e in types:
                per_h = maps.get(e)
                if per_h is None:  # a type without a map keeps its raw probabilities
                    rows.append([_IDENTITY] * max(1, len(self.horizons)))
                    continue
                if self.horizons and len(per_h) != len(self.horizons):
                    raise ValueError(f"manifest.calibration.events.maps.{e}: {len(per_h)} maps for {len(self.horizons)} horizons")
                rows.append([_knots(m, f"events.maps.{e}[{h}]") for h, m in enumerate(per_h)])
            self._events = rows
        thr = spec.get("event_thresholds")
        if thr is not None:
            unknown = set(thr) - set(self.event_types) if self.event_types else set()
            if unknown:
                raise ValueError(f"manifest.calibration.event_thresholds: unknown event types {sorted(unknown)}")
            for k, v in thr.items():
                v = float(v)
                if not (0.0 < v <= 1.0) or not math.isfinite(v):
                    raise ValueError(f"manifest.calibration.event_thresholds.{k}: must be in (0, 1], got {v!r}")
                self.thresholds[str(k)] = v
        for k, v in (spec.get("track_event_thresholds") or {}).items():
            if self.event_types and k not in self.event_types:
                raise ValueError(f"manifest.calibration.track_event_thresholds: unknown event type {k!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < float(v) <= 1.0):
                raise ValueError(f"manifest.calibration.track_event_thresholds.{k}: must be in (0, 1], got {v!r}")
            self.track_thresholds[str(k)] = float(v)
        shape = spec.get("track_person_shape_prob")
        if shape is not None:
            if isinstance(shape, bool) or not isinstance(shape, (int, float)) or not (0.0 <= float(shape) <= 1.0):
                raise ValueError(f"manifest.calibration.track_person_shape_prob: must be in [0, 1], got {shape!r}")
            self.track_person_shape_prob = float(shape)
        self.budget_per_min = float(spec.get("event_budget_per_min", float("nan")))
        lw = spec.get("label_weights")
        if lw is not None:
            if not isinstance(lw, Mapping) or not set(lw) <= {"camera", "lidar", "audio", "imu"}:
                raise ValueError(f"manifest.calibration.label_weights: a mapping of sensor names, got {lw!r}")
            for k, v in lw.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"manifest.calibration.label_weights.{k}: must be a finite number >= 0, got {v!r}")
            self.label_weights = {str(k): float(v) for k, v in lw.items()}

    # ---- applying ----------------------------------------------------------------------------------
    def labels(self, probs: np.ndarray, used: Sequence[str]) -> np.ndarray:
        """(P,) (or (N,P)) softmax label scores of a frame fused from `used` -> calibrated P(label is right)."""
        return apply_knots(probs, self._labels.get(subset_key(used), self._labels_fallback))

    def events(self, probs: np.ndarray) -> np.ndarray:
        """(E,H) (or (N,E,H)) raw event-head output -> calibrated P(event within the horizon)."""
        p = np.asarray(probs, np.float32)
        if self._events is None:
            return np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)
        E, H = len(self._events), len(self._events[0])
        if p.shape[-2:] != (E, H):
            raise ValueError(f"calibration.events: expected (..., {E}, {H}) probabilities, got {p.shape}")
        out = np.empty(p.shape, np.float64)
        for e in range(E):
            for h in range(H):
                out[..., e, h] = apply_knots(p[..., e, h], self._events[e][h])
        return out

    def caption(self, confidence: float, used: Sequence[str]) -> float:
        """Raw caption confidence of a caption resting on `used` -> calibrated P(caption is right)."""
        return float(apply_knots(np.float64(confidence), self._caption.get(subset_key(used), self._caption_fallback)))

    def subsets(self, output: str = "labels") -> List[str]:
        """Presence subsets with their own fitted map for `output` ("labels" or "caption")."""
        return sorted(self._labels if output == "labels" else self._caption)
