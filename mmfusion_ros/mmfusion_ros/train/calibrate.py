"""Fit the bundle's calibration (core/calibration.py applies it on the robot) and measure calibration error.

`mmfusion calibrate --model BUNDLE --data DS --split val` runs the bundle's checkpoint over a dataset split,
fits one monotone map per output and presence subset, picks the event on-thresholds against a false-alarm
budget, and writes the result into BUNDLE/manifest.json under "calibration" (ONNX parts and checkpoint are
not touched: the maps act on their outputs).

Ground truth ("what counts as right"), from the simulator:
- seen classes: the classes the frame's first caption phrasing names in its object clauses (the simulator
  writes them from the rendered camera image: an object of at least 13 px), plus any class in
  `classes_present` that is not heard (classes_present = seen or heard); the caption names at most 3 seen
  objects, and the rule recovers the rest. Camera and LiDAR observe seen classes. (LiDAR also sees behind
  the robot, which the image does not; the dataset's focus objects are ahead, so this costs little.)
- heard classes: the classes the caption's sound clause names (the simulator writes it from sources above
  its audible level), plus `sound_class`. Audio observes heard classes; the IMU observes no class.
- a label is right when its prompt's class is among the classes the used modalities observe; a prompt
  with no simulator class (a user's own) is never counted as right, so it is not fitted on.
- an event is right at horizon h when `events_future[:, e, h]` (active at some time in (t, t + h]).
- a caption is right when each clause kind it publishes is right: its object clauses name only seen
  classes (and "nothing stands out" only when nothing is seen), its sound clause only heard classes ("it
  is quiet" only when nothing is heard), its ego clause equals the reference's ego clause; and it names
  at least one class when the used modalities observe one. It is judged after grounding
  (core.observability.grounded_caption with the used modalities), as the robot publishes it.

Method choice (`compare_methods`, scene-grouped two-fold cross-validation on the fitting data; figures in
MODEL_CARD.md "Calibration"): isotonic regression over equal-mass bins, stored as knots, against identity,
temperature scaling (labels), Platt scaling and plain histogram binning.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmfusion_ros.core.calibration import FORMAT_VERSION, Calibration, apply_knots, knots_to_json
from mmfusion_ros.core.events import STATE_START, EventTracker, EventTrackerConfig
from mmfusion_ros.core.observability import (EVENT_OBSERVERS, caption_clauses, grounded_caption, label_embedding,
                                             observable, subset_key)
from mmfusion_ros.core.pipeline import PipelineConfig

SENSORS = ["camera", "lidar", "audio", "imu"]
STRICT = 2e-3  # slope mixed into every fitted map so it is strictly increasing

# ---- ground truth ---------------------------------------------------------------------------------
# Class names as the simulator's captions write them (sim/captions.py NAME and SOUND, plus the source-free
# wordings core/observability.py uses when a sound is heard but not seen).
_OBJ = {"person": ["a person"], "dog": ["a dog"], "car": ["a car"], "bicycle": ["a bicycle"],
        "traffic_cone": ["a traffic cone"], "box": ["a box"], "chair": ["a chair"], "door": ["a door"],
        "alarm": ["an alarm"]}
_SND = {"person": ["someone talking", "voices and footsteps", "voices", "footsteps", "talking"],
        "dog": ["a dog barking", "barking"], "car": ["an engine humming", "engine noise", "engine"],
        "bicycle": ["a bicycle bell ringing", "a bell ringing", "a bell"],
        "traffic_cone": ["a plastic knocking", "knocking"], "box": ["something scraping", "scraping"],
        "chair": ["a chair squeaking", "squeaking"],
        "door": ["a door creaking and slamming", "a door slam", "creaking and slamming", "a slam"],
        "alarm": ["an alarm ringing", "an alarm beeping", "a ringing", "a beeping"]}


def _names(text: str, table: Dict[str, List[str]]) -> set:
    t = " " + re.sub(r"[^a-z ]+", " ", text.lower()) + " "
    return {c for c, phrases in table.items() if any(f" {p} " in t for p in phrases)}


def _ego(text: str) -> str:
    parts = [c for k, c in caption_clauses(text) if k == "ego"]
    e = parts[0] if parts else ""
    return "the robot is stationary" if e == "the robot stands still" else e


def frame_truth(classes: Sequence[str], captions: Sequence[Sequence[str]], classes_present: np.ndarray,
                sound_class: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(seen (N,C) bool, heard (N,C) bool, reference ego clause per frame) from a split's ground truth."""
    n, C = classes_present.shape
    idx = {c: i for i, c in enumerate(classes)}
    seen = np.zeros((n, C), bool)
    heard = np.zeros((n, C), bool)
    ego = []
    for i in range(n):
        ref = captions[i][0] if captions[i] else ""
        for kind, clause in caption_clauses(ref):
            for c in _names(clause, _OBJ if kind == "objects" else _SND if kind == "sounds" else {}):
                (seen if kind == "objects" else heard)[i, idx[c]] = True
        if sound_class[i] >= 0:
            heard[i, int(sound_class[i])] = True
        ego.append(_ego(ref))
    present = classes_present.astype(bool)
    seen |= present & ~heard
    return seen, heard, ego


def observable_truth(seen: np.ndarray, heard: np.ndarray, used: Sequence[str]) -> np.ndarray:
    """(N,C) classes the `used` modalities can observe in each frame."""
    out = np.zeros_like(seen)
    if observable("objects", used):
        out |= seen
    if observable("sounds", used):
        out |= heard
    return out


def published_clauses(text: str, used: Sequence[str]) -> List[Tuple[str, str]]:
    """The (kind, clause) pairs of a decoded caption that grounding keeps for `used` (what
    core.observability.grounded_caption renders), with their kinds from the decoded text."""
    return [(k, c) for k, c in caption_clauses(text) if observable(k, used)]


def caption_right(text: str, used: Sequence[str], seen_row: np.ndarray, heard_row: np.ndarray, ego_ref: str,
                  classes: Sequence[str]) -> Optional[bool]:
    """Is the grounded caption right (module docstring)? None when grounding leaves nothing to publish."""
    kept = published_clauses(text, used)
    if not kept:
        return None
    seen = {classes[j] for j in np.flatnonzero(seen_row)}
    heard = {classes[j] for j in np.flatnonzero(heard_row)}
    named = set()
    for kind, clause in kept:
        if kind == "objects":
            got = _names(clause, _OBJ)
            if clause == "nothing stands out" and seen:
                return False
            if not got <= seen:
                return False
            named |= got
        elif kind == "sounds":
            got = _names(clause, _SND)
            if not clause and heard:
                return False
            if not got <= heard:
                return False
            named |= got
        elif kind == "ego":
            e = "the robot is stationary" if clause == "the robot stands still" else clause
            if ego_ref and e != ego_ref:
                return False
    obs = (seen if observable("objects", used) else set()) | (heard if observable("sounds", used) else set())
    return bool(named) or not obs


# ---- calibration error ----------------------------------------------------------------------------
def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - mean confidence|
    weighted by the bin's share of samples (NaN without samples)."""
    conf = np.clip(np.asarray(conf, np.float64).ravel(), 0.0, 1.0)
    correct = np.asarray(correct, np.float64).ravel()
    if len(conf) == 0:
        return float("nan")
    b = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    s_conf = np.bincount(b, weights=conf, minlength=n_bins)
    s_acc = np.bincount(b, weights=correct, minlength=n_bins)
    return float(np.sum(np.abs(s_acc - s_conf)) / len(conf))


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> List[dict]:
    """Per equal-width bin: {lo, hi, count, confidence (mean), accuracy} (empty bins left out)."""
    conf = np.clip(np.asarray(conf, np.float64).ravel(), 0.0, 1.0)
    correct = np.asarray(correct, np.float64).ravel()
    b = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out = []
    for k in range(n_bins):
        m = b == k
        if m.any():
            out.append({"lo": k / n_bins, "hi": (k + 1) / n_bins, "count": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
    return out


# ---- map fitting ----------------------------------------------------------------------------------
def _pav(y: np.ndarray, w: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[List[int]]]:
    """Pool-adjacent-violators: non-decreasing weighted fit of y; returns block means, weights, members."""
    means: List[float] = []
    weights: List[float] = []
    members: List[List[int]] = []
    for i, (v, wt) in enumerate(zip(y, w)):
        means.append(float(v))
        weights.append(float(wt))
        members.append([i])
        while len(means) > 1 and means[-2] >= means[-1]:
            m2, w2, i2 = means.pop(), weights.pop(), members.pop()
            tot = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / tot if tot > 0 else means[-1]
            weights[-1] = tot
            members[-1].extend(i2)
    return np.array(means), np.array(weights), members


def _equal_mass_bins(s: np.ndarray, y: np.ndarray, n_bins: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by score and cut into up to n_bins groups of equal count (ties kept together):
    (mean score, mean target, count) per group."""
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    n = len(s)
    edges = np.unique(np.round(np.linspace(0, n, n_bins + 1)).astype(int))
    # move each cut past runs of equal scores so a tie never straddles two bins
    cuts = [0]
    for e in edges[1:-1]:
        while 0 < e < n and s[e] == s[e - 1]:
            e += 1
        if e > cuts[-1] and e < n:
            cuts.append(int(e))
    cuts.append(n)
    ms, my, cnt = [], [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b > a:
            ms.append(s[a:b].mean())
            my.append(y[a:b].mean())
            cnt.append(b - a)
    return np.array(ms), np.array(my), np.array(cnt, np.float64)


def fit_isotonic(scores: np.ndarray, targets: np.ndarray, min_per_bin: int = 40, max_bins: int = 24,
                 prior: float = 2.0) -> Tuple[np.ndarray, np.ndarray]:
    """Monotone map score -> P(right) as (x, y) knots in [0, 1].

    Equal-mass bins (at least min_per_bin samples, at most max_bins), pool-adjacent-violators over the
    bins, one knot per pooled block at its mean score; each block's rate is shrunk toward the overall rate
    by `prior` pseudo-samples (a block of 40 frames with no positive does not become a hard 0). The ends are
    held flat to 0 and 1 so any score maps inside the fitted range."""
    s = np.clip(np.asarray(scores, np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(targets, np.float64).ravel()
    if len(s) == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    base = float(y.mean())
    n_bins = int(max(1, min(max_bins, len(s) // max(1, min_per_bin))))
    bs, by, bc = _equal_mass_bins(s, y, n_bins)
    means, w, members = _pav(by, bc)
    xs = np.array([np.average(bs[m], weights=bc[m]) for m in members])
    ys = (means * w + prior * base) / (w + prior)
    ys = np.maximum.accumulate(ys)  # shrinkage keeps order; guard rounding
    if len(xs) == 1:
        return np.array([0.0, 1.0]), np.array([ys[0], ys[0]])
    x = np.r_[0.0, xs, 1.0] if xs[0] > 0 else np.r_[xs, 1.0]
    yk = np.r_[ys[0], ys, ys[-1]] if xs[0] > 0 else np.r_[ys, ys[-1]]
    if xs[-1] >= 1.0:
        x, yk = x[:-1], yk[:-1]
    keep = np.r_[True, np.diff(x) > 1e-6]
    x, yk = x[keep], yk[keep]
    # a strictly increasing map keeps every ranking (top-1, AP) exactly as the model made it; moves <= 0.002
    return x, (1.0 - STRICT) * yk + STRICT * x


def fit_histogram(scores, targets, n_bins: int = 15):
    """Plain histogram binning (equal-width bins, empty bins fall back to the bin centre): apply(s)."""
    s = np.clip(np.asarray(scores, np.float64).ravel(), 0, 1)
    y = np.asarray(targets, np.float64).ravel()
    b = np.minimum((s * n_bins).astype(int), n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    rate = np.where(cnt > 0, np.bincount(b, weights=y, minlength=n_bins) / np.maximum(cnt, 1),
                    (np.arange(n_bins) + 0.5) / n_bins)
    return lambda q: rate[np.minimum((np.clip(np.asarray(q, np.float64), 0, 1) * n_bins).astype(int), n_bins - 1)]


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_platt(scores, targets, iters: int = 200):
    """Platt scaling on the logit of the score (Newton's method): apply(s)."""
    z = np.clip(_logit(np.asarray(scores).ravel()), -30, 30)
    y = np.asarray(targets, np.float64).ravel()
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(a * z + b, -50, 50)))
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        H = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return lambda q: 1 / (1 + np.exp(-np.clip(a * _logit(q) + b, -50, 50)))


def fit_temperature(probs: np.ndarray, targets: np.ndarray):
    """Temperature scaling of a softmax (N,P) by grid search on the multi-label log loss: apply(probs)."""
    logp = np.log(np.clip(probs, 1e-12, 1))

    def soft(lp, T):
        z = lp / T
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    best, bestT = float("inf"), 1.0
    for T in np.exp(np.linspace(np.log(0.25), np.log(8.0), 41)):
        p = np.clip(soft(logp, T), 1e-7, 1 - 1e-7)
        loss = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
        if loss < best:
            best, bestT = loss, T
    return lambda q: soft(np.log(np.clip(q, 1e-12, 1)), bestT)


# ---- model outputs on a split -----------------------------------------------------------------------
def all_subsets() -> List[Tuple[str, ...]]:
    """The 15 non-empty presence subsets, largest first, in model order."""
    return [tuple(SENSORS[j] for j in c) for r in range(4, 0, -1) for c in itertools.combinations(range(4), r)]


@dataclass
class SplitOutputs:
    """What the model says on a split, per presence subset, with the ground truth it is judged by."""

    classes: List[str]
    prompt_class: np.ndarray  # (P,) class index of each prompt, -1 when the prompt names no simulator class
    scene: np.ndarray  # (N,)
    t: np.ndarray  # (N,)
    frame_step: float
    seen: np.ndarray  # (N,C)
    heard: np.ndarray  # (N,C)
    label_probs: Dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (N,P) softmax scores
    label_right: Dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (N,P) bool
    caption_conf: Dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (n,) raw confidence
    caption_right: Dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (n,) bool
    caption_frame: Dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (n,) frame index
    caption_text: Dict[str, List[str]] = field(default_factory=dict)  # subset -> (n,) grounded caption
    caption_raw: Dict[str, List[str]] = field(default_factory=dict)  # subset -> (N,) caption as decoded
    event_probs: Optional[np.ndarray] = None  # (N,E,H) raw, all four present
    track_probs: Optional[np.ndarray] = None  # (N,E,H) LiDAR track forecasts (train/track_events.py); NaN where
    #                                           none (a type tracks do not forecast, a dataset without sweeps)
    events_future: Optional[np.ndarray] = None  # (N,E,H)
    events_now: Optional[np.ndarray] = None  # (N,E)
    event_types: List[str] = field(default_factory=list)
    horizons: List[float] = field(default_factory=list)


def softmax_labels(fused: np.ndarray, prompt_emb: np.ndarray, logit_scale: float, temperature: float = 1.0) -> np.ndarray:
    """(N,D) fused -> (N,P) label softmax exactly as core.pipeline.Pipeline._labels computes it."""
    z = logit_scale * (fused @ prompt_emb.T) / temperature  # (N, P)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def label_skill_weights(tokens: Sequence[np.ndarray], classes: Sequence[np.ndarray], prompt_emb: np.ndarray,
                        prompt_class: np.ndarray) -> Dict[str, Any]:
    """Per label sensor, how far its own embedding names the frame's class above chance on the fitting data:
    (top-1 - majority share) / (1 - majority share), clipped at 0. The labels' mean weights the sensors by it
    (core/observability.label_embedding), so a sensor whose zero-shot labels are at chance (the emergent LiDAR
    of the shipped model) stops pulling the camera's and the microphone's agreement towards noise.

    tokens: per fitting set (N,4,D); classes: per set (N,) class index in the prompts' class order
    (prompt_class maps prompt -> class, -1 for none). Returns {"weights": {sensor: w}, "top1": {...}, "chance": c}."""
    from mmfusion_ros.core.observability import label_modalities

    tok = np.concatenate([np.asarray(t, np.float32) for t in tokens])  # (N, 4, D)
    y = np.concatenate([np.asarray(c, np.int64) for c in classes])  # (N,)
    chance = float(np.bincount(y[y >= 0]).max() / max(1, int((y >= 0).sum())))
    pc = np.asarray(prompt_class)
    top1, weights = {}, {}
    for m in label_modalities(SENSORS):
        pred = pc[np.argmax(tok[:, SENSORS.index(m)] @ prompt_emb.T, axis=1)]  # (N,) class of the top prompt
        acc = float((pred == y)[y >= 0].mean())
        top1[m] = round(acc, 4)
        weights[m] = round(max(0.0, (acc - chance) / max(1e-6, 1.0 - chance)), 4)
    return {"weights": weights, "top1": top1, "chance": round(chance, 4), "frames": int((y >= 0).sum())}


def collect_weighted(evaluator, sets: Sequence[Tuple[Any, np.ndarray, int]], equal_weights: bool = False
                     ) -> Tuple["SplitOutputs", Optional[Dict[str, Any]]]:
    """The fitting data's outputs with the labels' skill weights fitted first (label_skill_weights; skipped with
    equal_weights) and set on the evaluator, so the label maps are fitted on the mean the pipeline will compute.
    sets: (split, its (N,4,D) embeddings, scene-id offset keeping scenes of different datasets apart)."""
    lw = None
    if not equal_weights:
        pc = prompt_classes(evaluator, sets[0][0].classes)
        lw = label_skill_weights([t for _, t, _ in sets], [split_classes(sp, pc) for sp, _, _ in sets],
                                 evaluator.prompt_emb, pc)
    evaluator.calibration.label_weights = lw["weights"] if lw else None
    parts = []
    for sp, tok, offset in sets:
        o = collect(evaluator, sp, tokens=tok)
        o.scene = o.scene.astype(np.int64) + offset
        parts.append(o)
    return concat_outputs(parts), lw


def add_label_weights(spec: dict, lw: Optional[Dict[str, Any]]) -> dict:
    """Write collect_weighted's skill weights (and what they were fitted from) into a fitted calibration entry."""
    if lw:
        spec["label_weights"] = lw["weights"]
        spec["label_weights_fit"] = {k: lw[k] for k in ("top1", "chance", "frames")}
    return spec


def prompt_classes(evaluator, classes: Sequence[str]) -> np.ndarray:
    """(P,) index into `classes` of each of the evaluator's prompts, -1 for a prompt naming no class."""
    names = [p["label"] for p in evaluator.prompts]
    return np.array([list(classes).index(n) if n in classes else -1 for n in names])


def split_classes(split, prompt_class: np.ndarray) -> np.ndarray:
    """(N,) each frame's focus class as an index into the split's classes (-1 when no prompt names it)."""
    c = np.asarray(split.arrays["class_id"], np.int64)
    named = set(int(x) for x in np.asarray(prompt_class) if x >= 0)
    return np.where(np.isin(c, list(named)), c, -1)


def collect(evaluator, split, subsets: Optional[Sequence[Tuple[str, ...]]] = None, captions: bool = True,
            tokens: Optional[np.ndarray] = None, log: Callable[[str], None] = print) -> SplitOutputs:
    """Run `evaluator` (train.evaluate.Evaluator) over `split` for every presence subset; labels read the
    evaluator's label weights (`evaluator.calibration.label_weights`) as the pipeline does."""
    subsets = list(subsets or all_subsets())
    a = split.arrays
    seen, heard, ego = frame_truth(split.classes, split.captions, a["classes_present"], a["sound_class"])
    names = [p["label"] for p in evaluator.prompts]
    pc = np.array([split.classes.index(n) if n in split.classes else -1 for n in names])
    out = SplitOutputs(list(split.classes), pc, a["scene_id"], a["t"], split.frame_step, seen, heard)
    if tokens is None:
        tokens = evaluator.embed(split)  # (N, 4, D)
    fused_by = {}
    for used in subsets:
        key = subset_key(used)
        mask = [1.0 if m in used else 0.0 for m in SENSORS]
        fused = evaluator.fuse(tokens, mask)  # (N, D)
        fused_by[key] = fused
        lab = label_embedding(tokens, used, fused, PipelineConfig().label_fusion,  # what the pipeline labels
                              weights=getattr(getattr(evaluator, "calibration", None), "label_weights", None))
        if lab is None:  # no label sensor: the pipeline publishes no labels; kept for the ungated view
            lab = fused
        probs = softmax_labels(lab, evaluator.prompt_emb, evaluator.logit_scale)
        truth = observable_truth(seen, heard, used)  # (N, C)
        right = np.zeros(probs.shape, bool)
        ok = pc >= 0
        right[:, ok] = truth[:, pc[ok]]
        out.label_probs[key] = probs
        out.label_right[key] = right
    if captions:
        captions_by = evaluator.runtime_captions({k: v for k, v in fused_by.items()}, tokens)
        for used in subsets:
            key = subset_key(used)
            texts, conf = captions_by[key]
            out.caption_raw[key] = list(texts)
            idx, cf, rt, tx = [], [], [], []
            for i, (text, c) in enumerate(zip(texts, conf)):
                r = caption_right(text, used, seen[i], heard[i], ego[i], split.classes)
                if r is None:
                    continue
                idx.append(i)
                cf.append(c)
                rt.append(r)
                tx.append(grounded_caption(text, used)[0])
            out.caption_frame[key] = np.array(idx, np.int64)
            out.caption_conf[key] = np.array(cf, np.float64)
            out.caption_right[key] = np.array(rt, bool)
            out.caption_text[key] = tx
    ev = evaluator.model.cfg.events
    split.build_histories(ev.history_len, ev.history_step)
    full = fused_by.get("camera+lidar+audio+imu")
    if full is None:
        full = evaluator.fuse(tokens, [1, 1, 1, 1])
    out.event_probs = evaluator.event_probs(full, split.history_index)
    if hasattr(evaluator, "track_forecast"):
        out.track_probs = evaluator.track_forecast(split, tokens, full)
    out.events_future = a["events_future"].astype(bool)
    out.events_now = a["events_now"].astype(bool)
    out.event_types = list(ev.event_types)
    out.horizons = [float(h) for h in ev.horizons]
    return out


def concat_outputs(parts: Sequence[SplitOutputs]) -> SplitOutputs:
    """Several splits' outputs as one (scene ids are unique across a dataset's splits)."""
    if len(parts) == 1:
        return parts[0]
    p0 = parts[0]
    offs = np.cumsum([0] + [len(p.scene) for p in parts[:-1]])
    out = SplitOutputs(p0.classes, p0.prompt_class, np.concatenate([p.scene for p in parts]),
                       np.concatenate([p.t for p in parts]), p0.frame_step,
                       np.concatenate([p.seen for p in parts]), np.concatenate([p.heard for p in parts]))
    for k in p0.label_probs:
        out.label_probs[k] = np.concatenate([p.label_probs[k] for p in parts])
        out.label_right[k] = np.concatenate([p.label_right[k] for p in parts])
    for k in p0.caption_conf:
        out.caption_conf[k] = np.concatenate([p.caption_conf[k] for p in parts])
        out.caption_right[k] = np.concatenate([p.caption_right[k] for p in parts])
        out.caption_frame[k] = np.concatenate([p.caption_frame[k] + o for p, o in zip(parts, offs)])
        out.caption_text[k] = [t for p in parts for t in p.caption_text[k]]
        out.caption_raw[k] = [t for p in parts for t in p.caption_raw[k]]
    out.event_probs = np.concatenate([p.event_probs for p in parts])
    if any(p.track_probs is not None for p in parts):
        out.track_probs = np.concatenate([p.track_probs if p.track_probs is not None
                                          else np.full(p.event_probs.shape, np.nan) for p in parts])
    out.events_future = np.concatenate([p.events_future for p in parts])
    out.events_now = np.concatenate([p.events_now for p in parts])
    out.event_types, out.horizons = p0.event_types, p0.horizons
    return out


def _fitted_labels(o: SplitOutputs, key: str) -> Tuple[np.ndarray, np.ndarray]:
    ok = o.prompt_class >= 0
    return o.label_probs[key][:, ok], o.label_right[key][:, ok]


def top1(probs: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per frame: (score of the top label, whether it is right)."""
    i = np.argmax(probs, axis=1)
    r = np.arange(len(i))
    return probs[r, i], right[r, i]


# ---- event thresholds against a false-alarm budget -------------------------------------------------
def run_tracker(probs: np.ndarray, scene: np.ndarray, event_types: Sequence[str], horizons: Sequence[float],
                thresholds: Dict[str, float], cfg: Optional[EventTrackerConfig] = None):
    """Run core.events.EventTracker over (N,E,H) probabilities in time order, reset at each scene start (a
    new recording). Returns (start (N,E) bool, start horizon index (N,E) int, active (N,E) bool)."""
    N, E, H = probs.shape
    tr = EventTracker(event_types, horizons, thresholds, cfg)
    hz = {float(h): j for j, h in enumerate(horizons)}
    idx = {e: j for j, e in enumerate(event_types)}
    start = np.zeros((N, E), bool)
    start_h = np.full((N, E), -1, np.int64)
    active = np.zeros((N, E), bool)
    for i in range(N):
        if i == 0 or scene[i] != scene[i - 1]:
            tr.reset()
        for ev in tr.update(probs[i]):
            j = idx[ev.type]
            if ev.state == STATE_START:
                start[i, j] = True
                start_h[i, j] = hz.get(float(ev.horizon), H - 1)
        active[i] = tr.active
    return start, start_h, active


def tracker_metrics(start, start_h, active, events_now, events_future, scene, t, frame_step) -> List[dict]:
    """Per event type: false alarms (starts while the event is neither active nor due within the reported
    horizon) per minute, onsets, onsets warned (the tracker on at the onset, as M.lead_times counts),
    warned strictly before the onset, mean lead."""
    from mmfusion_ros.train import metrics as M

    N, E = start.shape
    minutes = N * frame_step / 60.0
    out = []
    for e in range(E):
        s = np.flatnonzero(start[:, e])
        due = events_now[s, e] | events_future[s, e, np.maximum(start_h[s, e], 0)]
        fa = int((~due).sum())
        lt = M.lead_times(active[:, e], events_now[:, e], scene, t)
        warned = [x for x in lt if not math.isnan(x)]
        out.append({"false_alarms": fa, "false_alarms_per_min": fa / minutes if minutes else float("nan"),
                    "starts": int(len(s)), "onsets": len(lt), "warned": len(warned),
                    "warned_before_onset": int(sum(x > 0 for x in warned)),
                    "mean_lead_s": float(np.mean(warned)) if warned else float("nan")})
    return out


#: how choose_thresholds picks among the on-thresholds within the false-alarm budget
THRESHOLD_RULES = ("lowest", "fewest_false_alarms")


def choose_thresholds(probs: np.ndarray, o: SplitOutputs, budget_per_min: float = 1.0,
                      cfg: Optional[EventTrackerConfig] = None, grid: Optional[np.ndarray] = None,
                      min_positive_frames: int = 5, no_evidence_threshold: float = 0.5,
                      rule: str = "lowest") -> Tuple[Dict[str, float], Dict[str, dict]]:
    """Per type, of the on-thresholds (on `grid`) that keep the tracker's false alarms within `budget_per_min`
    on these outputs, together with every higher grid value: with rule "lowest", the lowest (the most frames
    flagged); with rule "fewest_false_alarms", those that warn the most onsets, of those the ones with the
    fewest false alarms, of those the lowest. The second does not spend the budget on flags that warn nothing
    (the tracks' robot_impact forecasts warned 0 of CAL23's 41 onsets at every threshold in budget), but it
    also raises thresholds where the fitting data has few onsets (MODEL_CARD.md "Revision 6"). probs (N,E,H)
    are on the scale the node will threshold (calibrated). A type with fewer than `min_positive_frames`
    positive frames gives no evidence either way (no false alarm can be seen where the model never fires): it gets
    `no_evidence_threshold` (on the calibrated scale: more likely than not)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule: one of {THRESHOLD_RULES}, got {rule!r}")
    grid = np.round(np.arange(0.10, 1.0001, 0.01), 3) if grid is None else np.asarray(grid)
    E = probs.shape[1]
    fa = np.zeros((len(grid), E))
    warned = np.zeros((len(grid), E), np.int64)
    rows = []
    for g, thr in enumerate(grid):
        st, sh, ac = run_tracker(probs, o.scene, o.event_types, o.horizons, {e: float(thr) for e in o.event_types}, cfg)
        m = tracker_metrics(st, sh, ac, o.events_now, o.events_future, o.scene, o.t, o.frame_step)
        fa[g] = [r["false_alarms_per_min"] for r in m]
        warned[g] = [r["warned"] for r in m]
        rows.append(m)
    chosen, info = {}, {}
    for e, name in enumerate(o.event_types):
        positives = int(o.events_future[:, e, :].any(axis=1).sum())
        ok = fa[:, e] <= budget_per_min + 1e-9
        tail_ok = np.flip(np.logical_and.accumulate(np.flip(ok)))  # ok here and at every higher threshold
        g = len(grid) - 1
        cand = np.flatnonzero(tail_ok)  # (K,) grid indices in budget, increasing
        if cand.size and rule == "lowest":
            g = int(cand[0])
        elif cand.size:
            cand = cand[warned[cand, e] == warned[cand, e].max()]  # the most onsets warned
            g = int(cand[np.argmin(fa[cand, e])])  # then the fewest false alarms (argmin: the lowest of ties)
        if positives < min_positive_frames:
            g = int(np.argmin(np.abs(grid - no_evidence_threshold)))
        chosen[name] = float(grid[g])
        info[name] = dict(rows[g][e], threshold=float(grid[g]), positive_frames=positives,
                          rule="budget" if positives >= min_positive_frames else "no evidence")
    return chosen, info


def fit_track_thresholds(cal_probs: np.ndarray, o: SplitOutputs, budget_per_min: float,
                         tracker: Optional[EventTrackerConfig] = None,
                         rule: str = "lowest") -> Optional[Tuple[Dict[str, float], dict]]:
    """On-thresholds for the types the LiDAR tracks forecast, fitted like the head's (choose_thresholds) on
    what the node thresholds for them: the calibrated head noisy-OR'd with the tracks (core/kinematic_events.py
    merge_forecast), on the frames of datasets that keep sweeps only. None without such frames."""
    from mmfusion_ros.core.kinematic_events import merge_forecast

    if o.track_probs is None:
        return None
    rows = np.isfinite(o.track_probs).any(axis=(1, 2))  # (N,) frames with sweeps
    types = np.isfinite(o.track_probs).any(axis=(0, 2))  # (E,) types forecast
    if not rows.any():
        return None
    sub = SplitOutputs(o.classes, o.prompt_class, o.scene[rows], o.t[rows], o.frame_step, o.seen[rows], o.heard[rows])
    sub.events_future, sub.events_now = o.events_future[rows], o.events_now[rows]
    sub.event_types, sub.horizons = o.event_types, o.horizons
    merged = merge_forecast(cal_probs[rows], o.track_probs[rows])  # (n, E, H)
    thr, info = choose_thresholds(merged, sub, budget_per_min, tracker, rule=rule)
    names = [e for e, k in zip(o.event_types, types) if k]
    figures = {e: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info[e].items()} for e in names}
    return {e: thr[e] for e in names}, dict(figures, frames=int(rows.sum()))


#: person-shaped tracks moving at the robot needed before their share of people replaces the default weight
MIN_SHAPE_TRACKS = 20


def fit_person_shape_prob(splits: Sequence[Any], min_tracks: int = MIN_SHAPE_TRACKS) -> Optional[dict]:
    """The approach forecast's weight of a person-shaped track (train/track_events.py person_shape_share) on the
    splits that keep LiDAR sweeps -> {"prob", "people", "tracks"}; None with fewer than `min_tracks` such tracks
    (the forecaster's default stays). Scenes restart the tracker, so the splits are counted one by one."""
    from mmfusion_ros.train.track_events import person_shape_share

    people = tracks = 0
    for sp in splits:
        if sp.sweeps is None:
            continue
        k, n = person_shape_share(sp.sweeps, sp.arrays["scene_id"], sp.objects, PipelineConfig().kinematic_config())
        people, tracks = people + k, tracks + n
    if tracks < min_tracks:
        return None
    return {"prob": round(people / tracks, 3), "people": people, "tracks": tracks}


# ---- the fit ----------------------------------------------------------------------------------------
#: Thresholds are fitted against budget x FIT_MARGIN so that new data stays within the budget. Chosen by
#: two-fold cross-validation over scenes on 12.3 min of fresh simulator data (seed 3): event types over a
#: 1/min budget on the held-out half 8 of 14 (margin 1.0), 3 of 14 (0.8), 2 of 14 (0.6); onsets warned
#: 68, 51, 41 of 124.
FIT_MARGIN = 0.8


def fit(o: SplitOutputs, budget_per_min: float = 1.0, tracker: Optional[EventTrackerConfig] = None,
        min_per_bin: int = 40, max_bins: int = 24, margin: float = FIT_MARGIN, threshold_rule: str = "lowest") -> dict:
    """Fitted maps and thresholds -> the manifest's "calibration" entry (JSON-ready)."""
    tracker = tracker or EventTrackerConfig()
    lab_sub, pool_s, pool_y = {}, [], []
    for key in o.label_probs:
        s, y = _fitted_labels(o, key)
        x, yk = fit_isotonic(s, y, min_per_bin, max_bins)
        lab_sub[key] = knots_to_json(x, yk, n=s.size)
        pool_s.append(s.ravel())
        pool_y.append(y.ravel())
    x, yk = fit_isotonic(np.concatenate(pool_s), np.concatenate(pool_y), min_per_bin, max_bins)
    labels = {"subsets": lab_sub, "fallback": knots_to_json(x, yk, n=sum(len(s) for s in pool_s))}

    cap_sub, pool_s, pool_y = {}, [], []
    for key in o.caption_conf:
        s, y = o.caption_conf[key], o.caption_right[key]
        if len(s) < min_per_bin:
            continue  # too few published captions for this subset: the fallback serves it
        x, yk = fit_isotonic(s, y, min_per_bin, max_bins)
        cap_sub[key] = knots_to_json(x, yk, n=len(s))
        pool_s.append(s)
        pool_y.append(y)
    caption = None
    if pool_s:
        x, yk = fit_isotonic(np.concatenate(pool_s), np.concatenate(pool_y), min_per_bin, max_bins)
        caption = {"subsets": cap_sub, "fallback": knots_to_json(x, yk, n=sum(len(s) for s in pool_s)),
                   "confidence_source": "backend.caption() confidence: mean probability of the chosen tokens "
                                        "(no text encoder, as the node runs)"}

    maps = {}
    for e, name in enumerate(o.event_types):
        maps[name] = []
        for h in range(len(o.horizons)):
            x, yk = fit_isotonic(o.event_probs[:, e, h], o.events_future[:, e, h], min_per_bin, max_bins)
            maps[name].append(knots_to_json(x, yk))
    events = {"event_types": list(o.event_types), "horizons": list(o.horizons), "maps": maps}
    spec = {"format_version": FORMAT_VERSION, "method": "isotonic regression over equal-mass bins (PAV), "
            "piecewise-linear knots applied with np.interp; labels and caption per presence subset",
            "labels": labels, "events": events}
    if caption:
        spec["caption"] = caption
    cal = Calibration(spec, o.event_types, o.horizons)
    cal_probs = cal.events(o.event_probs)
    thr, info = choose_thresholds(cal_probs, o, budget_per_min * margin, tracker, rule=threshold_rule)
    spec["event_thresholds"] = thr
    track = fit_track_thresholds(cal_probs, o, budget_per_min * margin, tracker, rule=threshold_rule)
    if track:
        spec["track_event_thresholds"], spec["track_fit_figures"] = track
    spec["event_budget_per_min"] = float(budget_per_min)
    spec["event_fit_margin"] = float(margin)
    spec["event_threshold_rule"] = threshold_rule
    spec["event_tracker"] = {"alpha": tracker.alpha, "off_ratio": tracker.off_ratio, "frame_step_s": o.frame_step}
    spec["fit_figures"] = {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                           for name, r in info.items()}
    return spec


# ---- method comparison (cross-validated on the fitting data) --------------------------------------
def compare_methods(o: SplitOutputs, min_per_bin: int = 40, max_bins: int = 24) -> Dict[str, Dict[str, float]]:
    """Scene-grouped two-fold cross-validated ECE of each method on each output (mean of both folds).

    labels_top1: the top label's calibrated score vs it being right; labels_all: every (frame, prompt)
    pair; events_1s: every (frame, type) at the 1 s horizon; caption: published captions."""
    scenes = np.unique(o.scene)
    fold_of = {s: i % 2 for i, s in enumerate(scenes)}
    fold = np.array([fold_of[s] for s in o.scene])
    methods = ["identity", "temperature", "platt", "histogram", "isotonic"]
    res = {m: {"labels_top1": [], "labels_all": [], "events_1s": [], "caption": []} for m in methods}
    h1 = o.horizons.index(1.0) if 1.0 in o.horizons else 0

    def fitter(method, s, y, probs=None):
        if method == "identity":
            return lambda q: np.asarray(q, np.float64)
        if method == "platt":
            return fit_platt(s, y)
        if method == "histogram":
            return fit_histogram(s, y)
        if method == "isotonic":
            kn = fit_isotonic(s, y, min_per_bin, max_bins)
            return lambda q: apply_knots(q, kn)
        return None

    for f in (0, 1):
        tr, te = fold != f, fold == f
        for m in methods:
            t1c, t1r, allc, allr = [], [], [], []
            for key in o.label_probs:
                s, y = _fitted_labels(o, key)
                if m == "temperature":
                    app = fit_temperature(s[tr], y[tr])
                    cal = app(s[te])
                else:
                    app = fitter(m, s[tr].ravel(), y[tr].ravel())
                    cal = np.asarray(app(s[te]), np.float64).reshape(s[te].shape)
                c1, r1 = top1(cal, y[te])
                t1c.append(c1)
                t1r.append(r1)
                allc.append(cal.ravel())
                allr.append(y[te].ravel())
            res[m]["labels_top1"].append(ece(np.concatenate(t1c), np.concatenate(t1r)))
            res[m]["labels_all"].append(ece(np.concatenate(allc), np.concatenate(allr)))
            if m == "temperature":
                continue
            ec, er = [], []
            for e in range(len(o.event_types)):
                s, y = o.event_probs[:, e, h1], o.events_future[:, e, h1]
                app = fitter(m, s[tr], y[tr])
                ec.append(np.asarray(app(s[te]), np.float64))
                er.append(y[te])
            res[m]["events_1s"].append(ece(np.concatenate(ec), np.concatenate(er)))
            cc, cr = [], []
            for key in o.caption_conf:
                fr = o.caption_frame[key]
                if len(fr) == 0:
                    continue
                ftr, fte = fold[fr] != f, fold[fr] == f
                s, y = o.caption_conf[key], o.caption_right[key]
                if ftr.sum() < 2 or fte.sum() == 0:
                    continue
                app = fitter(m, s[ftr], y[ftr])
                cc.append(np.asarray(app(s[fte]), np.float64))
                cr.append(y[fte])
            if cc:
                res[m]["caption"].append(ece(np.concatenate(cc), np.concatenate(cr)))
    return {m: {k: (float(np.mean(v)) if v else float("nan")) for k, v in d.items()} for m, d in res.items()}


def write_into_bundle(bundle, spec: dict) -> Path:
    """Rewrite BUNDLE/manifest.json in place with "calibration" = spec (every other key kept as it was)."""
    path = Path(bundle) / "manifest.json"
    man = json.loads(path.read_text())
    man["calibration"] = spec
    path.write_text(json.dumps(man, indent=1))
    return path
