"""Evaluation metrics: retrieval, zero-shot accuracy, BLEU-4, CIDEr, event AP/F1/lead time.

BLEU and CIDEr are written here (small, tested against hand-computed values) rather than pulled in
from pycocoevalcap, which needs Java for its tokenizer and is not on this project's dependency list.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.model.vocab import tokenize


# --------------------------------------------------------------------------- retrieval / zero-shot
def recall_at_k(query: np.ndarray, gallery: np.ndarray, match: np.ndarray, ks=(1, 5)) -> Dict[int, float]:
    """query (Q,D), gallery (G,D) L2-normalised; match (Q,G) bool marks every correct item.

    A query counts as retrieved at k when any correct item is among its k most similar.
    """
    sim = query @ gallery.T  # (Q, G)
    order = np.argsort(-sim, axis=1)  # (Q, G)
    hits = np.take_along_axis(match, order, axis=1)  # (Q, G) correct-ness in rank order
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def zero_shot_accuracy(emb: np.ndarray, prompt_emb: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of labelling each embedding (N,D) with its most similar prompt (C,D)."""
    pred = np.argmax(emb @ prompt_emb.T, axis=1)  # (N,)
    return float((pred == labels).mean())


def _scene_resampled_sums(columns: Sequence[np.ndarray], scene: np.ndarray, n_boot: int, seed: int) -> Optional[list]:
    """Per column (N,), its sum over `n_boot` draws of whole scenes with replacement -> [(B,) ...]; None with
    fewer than two scenes. Frames of one scene are not independent, so intervals resample scenes."""
    _, inv = np.unique(np.asarray(scene), return_inverse=True)
    k = int(inv.max()) + 1 if len(inv) else 0
    if k < 2:
        return None
    pick = np.random.default_rng(seed).integers(0, k, (n_boot, k))  # (B, S) scenes drawn per replicate
    return [np.bincount(inv, weights=np.asarray(c, np.float64), minlength=k)[pick].sum(1) for c in columns]


def _interval(stat: np.ndarray, level: float) -> tuple:
    a = (1.0 - level) / 2.0
    return float(np.quantile(stat, a)), float(np.quantile(stat, 1.0 - a))


def scene_bootstrap_ci(values: np.ndarray, scene: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple:
    """(low, high) percentile interval of the mean of per-frame `values` (N,), resampling whole scenes
    with replacement: frames of one scene are not independent, so the interval is over scenes."""
    sums = _scene_resampled_sums([values, np.ones(len(values))], scene, n_boot, seed)
    if sums is None:
        return float("nan"), float("nan")
    return _interval(sums[0] / sums[1], level)  # (B,) means


# --------------------------------------------------------------------------- captions
def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions n=1..4, geometric mean,
    brevity penalty with the closest reference length; no smoothing."""
    match = [0] * 4
    total = [0] * 4
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h = tokenize(hyp)
        rs = [tokenize(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1] if rs else 0
        for n in range(1, 5):
            hc = _ngrams(h, n)
            maxref: Counter = Counter()
            for r in rs:
                maxref |= _ngrams(r, n)
            match[n - 1] += sum(min(c, maxref[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if min(total) == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4.0
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / max(hyp_len, 1))
    return float(bp * math.exp(log_p))


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n_max: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015): TF-IDF n-gram cosine per n with a length penalty,
    clipped hypothesis counts, averaged over n and references, times 10. IDF from the references."""
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    n_img = len(refs)
    if n_img == 0:
        return 0.0
    df: List[Counter] = [Counter() for _ in range(n_max)]
    for rs in refs:
        for n in range(1, n_max + 1):
            seen = set()
            for r in rs:
                seen |= set(_ngrams(r, n))
            df[n - 1].update(seen)
    log_n = math.log(float(n_img))

    def vec(words, n):
        c = _ngrams(words, n)
        return {g: tf * (log_n - math.log(max(1.0, df[n - 1][g]))) for g, tf in c.items()}, c

    scores = []
    for h, rs in zip(hyps, refs):
        s = np.zeros(n_max)
        for r in rs:
            for n in range(1, n_max + 1):
                vh, ch = vec(h, n)
                vr, cr = vec(r, n)
                # CIDEr-D clips the hypothesis vector by the reference's values
                dot = sum(min(vh[g], vr[g]) * vr[g] for g in vh if g in vr)
                nh = math.sqrt(sum(v * v for v in vh.values()))
                nr = math.sqrt(sum(v * v for v in vr.values()))
                val = dot / (nh * nr) if nh > 0 and nr > 0 else 0.0
                s[n - 1] += val * math.exp(-((len(h) - len(r)) ** 2) / (2 * sigma ** 2))
        scores.append(float(s.mean()) / max(len(rs), 1) * 10.0)
    return float(np.mean(scores))


def mentions(text: str, vocabulary: Dict[str, Sequence[str]]) -> set:
    """Which classes a caption names: vocabulary maps class -> the words/phrases that mean it."""
    words = " " + " ".join(tokenize(text)) + " "
    return {c for c, phrases in vocabulary.items() if any(f" {p} " in words for p in phrases)}


def precision_recall(pred: Sequence[set], truth: Sequence[set]) -> Dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted vs true sets."""
    tp = sum(len(p & t) for p, t in zip(pred, truth))
    np_ = sum(len(p) for p in pred)
    nt = sum(len(t) for t in truth)
    prec = tp / np_ if np_ else 0.0
    rec = tp / nt if nt else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"precision": prec, "recall": rec, "f1": f1}


def scene_bootstrap_f1(pred: Sequence[set], truth: Sequence[set], scene: np.ndarray, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple:
    """(low, high) interval of precision_recall's micro F1, resampling whole scenes with replacement."""
    tp = [len(p & t) for p, t in zip(pred, truth)]
    sums = _scene_resampled_sums([tp, [len(p) for p in pred], [len(t) for t in truth]], scene, n_boot, seed)
    if sums is None:
        return float("nan"), float("nan")
    t, p_, n_ = sums  # (B,) each
    f1 = np.where(p_ + n_ > 0, 2 * t / np.maximum(p_ + n_, 1e-12), 0.0)  # micro F1 = 2 tp / (|pred| + |truth|)
    return _interval(f1, level)


# --------------------------------------------------------------------------- events
def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (sklearn's
    definition, written out to avoid a scikit-learn dependency). NaN when there are no positives."""
    y = np.asarray(y).astype(bool).ravel()
    score = np.asarray(score, np.float64).ravel()
    if not y.any():
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    ys, ss = y[order], score[order]
    # treat tied scores as one threshold step
    distinct = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tp = np.cumsum(ys)[distinct]
    fp = (distinct + 1) - tp
    prec = tp / (tp + fp)
    rec = tp / y.sum()
    rec_prev = np.r_[0.0, rec[:-1]]
    return float(np.sum((rec - rec_prev) * prec))


def scene_bootstrap_map(y: np.ndarray, score: np.ndarray, scene: np.ndarray, n_boot: int = 200, seed: int = 0,
                        level: float = 0.95) -> tuple:
    """(low, high) interval of the mean over columns of the average precision of y (N, E) by score (N, E),
    resampling whole scenes with replacement (as scene_bootstrap_ci); columns without positives in a
    replicate are left out of its mean."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, np.float64)
    _, inv = np.unique(np.asarray(scene), return_inverse=True)
    k = int(inv.max()) + 1 if len(inv) else 0
    if k < 2:
        return float("nan"), float("nan")
    rows = [np.flatnonzero(inv == j) for j in range(k)]  # frames of each scene
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[j] for j in rng.integers(0, k, k)])
        aps = [average_precision(y[idx, e], score[idx, e]) for e in range(y.shape[1])]
        aps = [a for a in aps if not math.isnan(a)]
        if aps:
            means.append(float(np.mean(aps)))
    if not means:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def f1_at(y: np.ndarray, score: np.ndarray, thr: float) -> float:
    y = np.asarray(y).astype(bool)
    p = np.asarray(score) >= thr
    tp = float((p & y).sum())
    fp = float((p & ~y).sum())
    fn = float((~p & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def best_f1_threshold(y: np.ndarray, score: np.ndarray, floor: float = 0.05) -> float:
    """Threshold in [floor, 0.95] maximising F1 (ties -> the higher threshold, fewer false alarms).

    The floor keeps rare, poorly separated events from getting a near-zero threshold that maximises
    F1 by flagging almost every frame."""
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    grid = grid[grid >= floor - 1e-9] if (grid >= floor - 1e-9).any() else grid[-1:]
    f1s = [f1_at(y, score, t) for t in grid]
    best = max(f1s)
    return float(grid[max(i for i, f in enumerate(f1s) if f == best)])


def _prev(x: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """x shifted one frame later within each scene (False at each scene's first frame)."""
    prev = np.r_[False, x[:-1]]
    prev[np.r_[True, scene[1:] != scene[:-1]]] = False
    return prev


def lead_times(alarm: np.ndarray, active: np.ndarray, scene: np.ndarray, t: np.ndarray) -> List[float]:
    """Per onset (a frame where ``active`` turns on within a scene): seconds from the start of the
    unbroken run of alarm frames reaching the onset frame to the onset; 0 when the alarm only fires
    at the onset frame; NaN when the onset was missed. Frames are time-ordered within each scene."""
    alarm = np.asarray(alarm).astype(bool)
    active = np.asarray(active).astype(bool)
    onsets = np.flatnonzero(active & ~_prev(active, scene))
    onsets = onsets[np.r_[True, scene[1:] != scene[:-1]][onsets] == False]  # noqa: E712  a scene starting active has no onset to predict
    out = []
    for i in onsets:
        if not alarm[i] and not (i > 0 and scene[i - 1] == scene[i] and alarm[i - 1]):
            out.append(float("nan"))
            continue
        j = i if alarm[i] else i - 1
        while j - 1 >= 0 and scene[j - 1] == scene[i] and alarm[j - 1]:
            j -= 1
        out.append(float(t[i] - t[j]))
    return out


def false_alarms_per_minute(alarm: np.ndarray, future: np.ndarray, scene: np.ndarray, frame_step: float) -> float:
    """Rising edges of the alarm while the event is neither active nor coming within the horizon
    (``future`` false), per minute of data."""
    alarm = np.asarray(alarm).astype(bool)
    rising = alarm & ~_prev(alarm, scene)
    false = rising & ~np.asarray(future).astype(bool)
    minutes = len(alarm) * frame_step / 60.0
    return float(false.sum() / minutes) if minutes > 0 else 0.0
