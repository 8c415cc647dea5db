"""Scoring the node's recorded outputs against the simulator's ground truth (pure numpy, no ROS).

Event AP and lead time reuse train/metrics.py (the numbers the model card reports are computed the
same way); what is new here is turning a live recording into their inputs: ground-truth intervals
sampled at output frame times, latency from receive times and the /clock mapping, and drops counted
against the fusion rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.types import OBJECT_CLASSES
from ..train.metrics import average_precision, lead_times

Interval = Tuple[float, float]  # [onset, end) seconds


def intervals_from_samples(t: Sequence[float], active: Sequence[bool], period: Optional[float] = None) -> List[Interval]:
    """Runs of True in a sampled boolean signal -> [onset, end) intervals; each sample covers one period.

    t must be increasing; the period defaults to the median sample spacing (ground truth is 10 Hz).
    """
    t = np.asarray(t, np.float64)
    a = np.asarray(active, bool)
    if t.shape != a.shape or t.ndim != 1:
        raise ValueError(f"t and active must be equal-length 1-D, got {t.shape} and {a.shape}")
    if len(t) == 0:
        return []
    if period is None:
        period = float(np.median(np.diff(t))) if len(t) > 1 else 0.1
    edges = np.diff(np.r_[0, a.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # ends: index after the run
    return [(float(t[s]), float(t[e - 1] + period)) for s, e in zip(starts, ends)]


def active_at(intervals: Sequence[Interval], t: np.ndarray) -> np.ndarray:
    """(F,) bool: t inside any [onset, end)."""
    t = np.asarray(t, np.float64)
    out = np.zeros(t.shape, bool)
    for a, b in intervals:
        out |= (t >= a) & (t < b)
    return out


def active_within(intervals: Sequence[Interval], t: np.ndarray, horizon: float) -> np.ndarray:
    """(F,) bool: some interval overlaps [t, t + horizon] (active now or starting within the horizon)."""
    t = np.asarray(t, np.float64)
    out = np.zeros(t.shape, bool)
    for a, b in intervals:
        out |= (a <= t + horizon) & (b > t)
    return out


# ---------------------------------------------------------------------------------------- latency
def clock_offset(clock_recv: Sequence[float], clock_value: Sequence[float], rate: float = 1.0) -> float:
    """Wall time minus sim time / rate, from /clock messages and their receive (wall) times.

    The replay runs sim time at `rate` x wall time. Each /clock message arrives some delay after it
    was sent, never before, so the smallest difference is the best estimate (the lower envelope).
    """
    r = np.asarray(clock_recv, np.float64)
    v = np.asarray(clock_value, np.float64)
    if len(r) == 0 or len(r) != len(v):
        raise ValueError("need equal, non-zero numbers of /clock receive times and values")
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return float(np.min(r - v / rate))


def latency_ms(stamps: Sequence[float], recv: Sequence[float], offset: float, rate: float = 1.0) -> np.ndarray:
    """(F,) wall-clock milliseconds from an output's stamp (its frame time on the sim clock) to its reception."""
    return (np.asarray(recv, np.float64) - (np.asarray(stamps, np.float64) / rate + offset)) * 1000.0


def percentile(x: Sequence[float], q: float) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else float("nan")


# ------------------------------------------------------------------------------------------ drops
def expected_frames(t_start: float, t_end: float, rate_hz: float) -> int:
    """Ticks of a rate-triggered collector (frame times k / rate) within [t_start, t_end]."""
    if rate_hz <= 0 or not t_end >= t_start:
        return 0
    return int(math.floor(t_end * rate_hz + 1e-6) - math.ceil(t_start * rate_hz - 1e-6) + 1)


@dataclass
class Drops:
    expected: int  # frames the fusion rate asks for over the replayed span
    fused: int  # output frames received in that span
    dropped: int  # expected - fused, at least 0

    @property
    def rate(self) -> float:
        return self.dropped / self.expected if self.expected else float("nan")


def count_drops(frame_stamps: Sequence[float], t_start: float, t_end: float, rate_hz: float) -> Drops:
    s = np.asarray(frame_stamps, np.float64)
    fused = int(((s >= t_start - 1e-6) & (s <= t_end + 1e-6)).sum())
    exp = expected_frames(t_start, t_end, rate_hz)
    return Drops(exp, fused, max(0, exp - fused))


# ------------------------------------------------------------------------------------------ labels
def label_class(label: str) -> Optional[str]:
    """Published label -> object class: the class itself, or the class a prompt names ("a traffic cone").

    The longest class name found wins ("a dog next to a car" is ambiguous and gives the first found
    in the text); None when no class is named.
    """
    key = label.strip().lower().replace("_", " ")
    if key.replace(" ", "_") in OBJECT_CLASSES:
        return key.replace(" ", "_")
    found = [(key.find(c.replace("_", " ")), c) for c in OBJECT_CLASSES
             if f" {c.replace('_', ' ')} " in f" {key} ".replace(",", " ").replace(".", " ")]
    return min(found)[1] if found else None


@dataclass
class GTObject:
    """A ground-truth object in the robot's base frame (as on sim/ground_truth)."""

    cls: str
    center: np.ndarray  # (3,) metres
    size: np.ndarray  # (3,) length, width, height
    yaw: float
    sounding: bool
    track_id: int = 0


def in_view(objects: Sequence[GTObject], hfov: float, max_range: float = 30.0) -> List[GTObject]:
    """Objects ahead within the camera's horizontal field of view (radians) and range, nearest first.

    The camera sits at the LiDAR origin looking along +x (the simulator's layout); an object counts
    when its centre is inside the view cone.
    """
    out = []
    for o in objects:
        x, y = float(o.center[0]), float(o.center[1])
        r = math.hypot(x, y)
        if x > 0.5 and r <= max_range and abs(math.atan2(y, x)) <= hfov / 2:
            out.append((r, o))
    return [o for _, o in sorted(out, key=lambda p: p[0])]


def audible(objects: Sequence[GTObject], max_range: float = 40.0) -> List[GTObject]:
    return [o for o in objects if o.sounding and math.hypot(float(o.center[0]), float(o.center[1])) <= max_range]


@dataclass
class LabelScore:
    frames: int  # frames with something in view or audible (the others are not scored)
    nearest_correct: int  # top label = class of the nearest object in view
    nearest_frames: int  # frames with an object in view
    present_correct: int  # top label among classes in view or audible

    @property
    def nearest_accuracy(self) -> float:
        return self.nearest_correct / self.nearest_frames if self.nearest_frames else float("nan")

    @property
    def present_accuracy(self) -> float:
        return self.present_correct / self.frames if self.frames else float("nan")


def score_labels(top_labels: Sequence[Optional[str]], gt: Sequence[Sequence[GTObject]], hfov: float) -> LabelScore:
    """Top label of each frame against the ground truth at that frame's time."""
    if len(top_labels) != len(gt):
        raise ValueError(f"{len(top_labels)} labels but {len(gt)} ground-truth frames")
    frames = nearest_frames = nearest_ok = present_ok = 0
    for label, objs in zip(top_labels, gt):
        seen = in_view(objs, hfov)
        present = {o.cls for o in seen} | {o.cls for o in audible(objs)}
        if not present:
            continue
        cls = label_class(label) if label else None
        frames += 1
        present_ok += int(cls in present)
        if seen:
            nearest_frames += 1
            nearest_ok += int(cls == seen[0].cls)
    return LabelScore(frames, nearest_ok, nearest_frames, present_ok)


# ------------------------------------------------------------------------------------------ events
@dataclass
class EventScore:
    type: str
    ap: float  # average precision of the published probability for "active within the horizon"; NaN: never active
    positives: int  # frames where the event was active within the horizon
    onsets: int  # ground-truth onsets inside the recording
    detected: int  # onsets the node had flagged by the time they happened
    lead_s: float  # mean seconds the flag came before the onset (0 = exactly at it); NaN when none detected
    flagged: int  # frames the node flagged the event in
    flag_precision: float  # share of flagged frames where it was active within the horizon; NaN when never flagged


def score_events(t: np.ndarray, scores: np.ndarray, flagged: np.ndarray, gt: Dict[str, List[Interval]],
                 event_types: Sequence[str], horizon: float) -> List[EventScore]:
    """Per event type: AP and lead time of the node's events against ground-truth intervals.

    t (F,) frame times, increasing; scores (F,E) published probability (0 when the event was not
    published); flagged (F,E) bool, the event was published as started or ongoing; gt maps type ->
    intervals. AP is over "active now or within `horizon` s" (what the event head predicts);
    lead time per onset is train.metrics.lead_times over the frames.
    """
    t = np.asarray(t, np.float64)
    scores = np.asarray(scores, np.float64)
    flagged = np.asarray(flagged, bool)
    F, E = len(t), len(event_types)
    if scores.shape != (F, E) or flagged.shape != (F, E):
        raise ValueError(f"scores {scores.shape} and flagged {flagged.shape} must be ({F}, {E})")
    scene = np.zeros(F, np.int64)
    out = []
    for e, name in enumerate(event_types):
        iv = gt.get(name, [])
        y = active_within(iv, t, horizon)
        now = active_at(iv, t)
        ap = average_precision(y, scores[:, e]) if F else float("nan")
        leads = lead_times(flagged[:, e], now, scene, t) if F else []
        hits = [x for x in leads if not math.isnan(x)]
        nf = int(flagged[:, e].sum())
        out.append(EventScore(name, ap, int(y.sum()), len(leads), len(hits),
                              float(np.mean(hits)) if hits else float("nan"), nf,
                              float((flagged[:, e] & y).sum() / nf) if nf else float("nan")))
    return out


def nanmean(xs: Sequence[float]) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")
