"""Does this encoder's input look like what it was trained on? One score in [0, 1] per present modality.

An encoder maps anything to some unit vector, and the shared space gives that vector a confident label,
so an input from another world (a real IMU for a simulator-trained model) would be described with full
confidence. Familiarity is the guard: the distance from a frame's input descriptor (a few hundred numbers
per modality computed from the model input: the coarse layout of an image or BEV grid, its gradient
statistics, the per-band level and variation of a log-mel, the spectrum of an IMU window) to its k nearest
training descriptors, scaled by the same distance's `quantile` on frames of other training scenes.

Chosen by measurement (MODEL_CARD.md "Familiarity"; `mmfusion eval` reports it): k-NN in the encoders' own
embedding space separates the simulator test split from real KITTI images and UrbanSound8K clips with an
AUROC of only about 0.8 (a contrastive encoder maps a real photo close to some rendered scene), while the
input descriptors separate every real set at AUROC >= 0.999 with under 5 % of simulator test frames flagged.

The statistics are fitted at export and by `mmfusion train --bags` (train/familiarity.py), shipped in the
bundle as one .npz and scored here in numpy on the robot's path: one descriptor and one (K,F) product per
modality, well under 1 ms.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)

#: Score below which a modality counts as unfamiliar (the threshold distance maps to exactly this).
UNFAMILIAR_BELOW = 0.5


def _block_means(x: np.ndarray, n: int = 8) -> np.ndarray:
    """(B, C, H, W) -> (B, C*n*n) means of an n x n grid of blocks (two contiguous sums: 4x faster than one
    strided mean over a 6-d view)."""
    b, c, h, w = x.shape
    rows = x.reshape(b * c * n, h // n, w).sum(1)  # (B*C*n, W)
    return (rows.reshape(b * c * n, n, w // n).sum(2) / float((h // n) * (w // n))).reshape(b, c * n * n)


@functools.lru_cache(maxsize=8)
def _imu_bands(n: int) -> tuple:
    """Log-spaced frequency bands over n rfft bins (DC left out): (band starts, band widths)."""
    edges = np.unique(np.clip(np.round(np.geomspace(1, n, 8)).astype(int), 1, n))
    return edges[:-1], np.diff(edges).astype(np.float32)


def describe(modality: str, x: np.ndarray) -> np.ndarray:
    """(B, ...) model inputs (core/preprocess.py layout) -> (B, F) float32 descriptors. Hand-written: these
    summary statistics are this package's own choice, fixed by the model input layout."""
    x = np.asarray(x, np.float32)
    b = len(x)
    if modality == "camera":  # (B, 3, S, S) normalised image, read at every 2nd pixel (half the cost, same statistics)
        x = np.ascontiguousarray(x[:, :, ::2, ::2])  # (B, 3, S/2, S/2)
        coarse = _block_means(x)  # (B, 192)
        dx = np.abs(np.diff(x, axis=3)).reshape(b, 3, -1)  # (B, 3, S/2*(S/2-1))
        dy = np.abs(np.diff(x, axis=2)).reshape(b, 3, -1)
        # how much of the image is flat, textured or edged (rendered scenes are mostly flat): shares above levels
        shares = np.concatenate([(dx > t).mean(2) for t in (0.02, 0.1, 0.5)], 1)  # (B, 9)
        grad = np.concatenate([dx.mean(2), dy.mean(2), shares, x.reshape(b, 3, -1).std(2)], 1)  # (B, 18)
        return np.concatenate([coarse, 4.0 * grad], 1).astype(np.float32)
    if modality == "lidar":  # (B, C, G, G) BEV grid
        c, g = x.shape[1], x.shape[-1]
        coarse = _block_means(x)  # (B, C*64)
        occupied = np.count_nonzero(x.reshape(b, c, -1), axis=2) / float(g * g)  # (B, C)
        return np.concatenate([coarse, occupied], 1).astype(np.float32)
    if modality == "audio":  # (B, 1, M, F) log-mel
        a = x[:, 0]  # (B, M, F)
        return np.concatenate([a.mean(2), a.std(2), np.abs(np.diff(a, axis=2)).mean(2)], 1).astype(np.float32)
    if modality == "imu":  # (B, 6, T) accel / g, gyro rad/s
        spec = np.abs(np.fft.rfft(x - x.mean(2, keepdims=True), axis=2))  # (B, 6, T/2+1)
        starts, widths = _imu_bands(spec.shape[2])
        sums = np.add.reduceat(spec, starts, axis=2)  # (B, 6, K) band sums, one call for all bands
        bands = np.log(sums / widths + 1e-4)  # (B, 6, K) band means
        return np.concatenate([x.mean(2), np.log(x.std(2) + 1e-4), bands.reshape(b, -1)], 1).astype(np.float32)
    raise KeyError(f"familiarity: no descriptor for modality {modality!r}")


@dataclass
class ModalityStats:
    """k-NN statistics of one modality's training descriptors."""

    mean: np.ndarray  # (F,) descriptor mean over training frames
    std: np.ndarray  # (F,) descriptor standard deviation (+ a floor), for z-scoring
    bank: np.ndarray  # (K, F) z-scored descriptors of a sample of training frames
    threshold: float  # mean k-NN distance at the fitted quantile of frames from other training scenes
    k: int = 10  # neighbours averaged
    sharpness: float = 8.0  # how fast the score falls past the threshold (logistic in log-distance)

    def __post_init__(self):
        self.bank = np.asarray(self.bank, np.float32)
        self._bank_sq = (self.bank ** 2).sum(1)  # (K,)

    def distances(self, desc: np.ndarray) -> np.ndarray:
        """(B, F) descriptors -> (B,) mean Euclidean distance to the k nearest bank rows (z-scored)."""
        z = (np.asarray(desc, np.float32) - self.mean) / self.std  # (B, F)
        d2 = (z ** 2).sum(1)[:, None] + self._bank_sq[None] - 2.0 * z @ self.bank.T  # (B, K)
        k = min(self.k, d2.shape[1])
        near = np.partition(d2, k - 1, axis=1)[:, :k]  # (B, k)
        d = np.sqrt(np.maximum(near, 0.0)).mean(1)
        return np.where(np.all(np.isfinite(z), axis=1), d, np.inf)

    def scores(self, desc: np.ndarray) -> np.ndarray:
        r = np.maximum(self.distances(desc), 1e-9) / max(self.threshold, 1e-9)  # (B,)
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + r ** self.sharpness)).astype(np.float32)


@dataclass
class Familiarity:
    """Per-modality familiarity of a bundle; `available` False when the bundle ships no statistics."""

    stats: Dict[str, ModalityStats] = field(default_factory=dict)
    threshold: float = UNFAMILIAR_BELOW
    source: str = ""

    @property
    def available(self) -> bool:
        return bool(self.stats)

    def assessed(self, modality: str) -> bool:
        return modality in self.stats

    def score(self, modality: str, model_input: np.ndarray) -> float:
        """One model input of `modality` (no batch dim, core/preprocess.py layout) -> familiarity in [0, 1];
        1.0 for a modality with no statistics (not assessed: callers report it as such, see `assessed`)."""
        st = self.stats.get(modality)
        if st is None:
            return 1.0
        return float(st.scores(describe(modality, np.asarray(model_input)[None]))[0])

    def scores(self, modality: str, model_inputs: np.ndarray) -> np.ndarray:
        """(B, ...) model inputs -> (B,) familiarity (evaluation: many frames at once)."""
        st = self.stats.get(modality)
        if st is None:
            return np.ones(len(model_inputs), np.float32)
        return st.scores(describe(modality, model_inputs))

    def familiar(self, modality: str, model_input: np.ndarray) -> bool:
        return self.score(modality, model_input) >= self.threshold

    @classmethod
    def from_manifest(cls, manifest, model_dir: Optional[Path] = None) -> "Familiarity":
        """Read the bundle's statistics (manifest "familiarity": {"file", "k", "quantile", "modalities"}).

        A bundle without them (older exports) loads with one WARN and every modality "not assessed"."""
        spec = manifest.get("familiarity") if hasattr(manifest, "get") else None
        root = Path(model_dir) if model_dir is not None else Path(getattr(manifest, "model_dir", "") or ".")
        if not spec:
            log.warning("model bundle %s has no familiarity statistics: familiarity is not assessed, every "
                        "present modality is used (refit with `mmfusion train --bags` or re-export)", root)
            return cls(source="not assessed")
        path = root / spec["file"]
        try:
            with np.load(path) as z:
                stats = {}
                for m, thr in spec["modalities"].items():
                    stats[m] = ModalityStats(np.asarray(z[f"mean_{m}"], np.float32), np.asarray(z[f"std_{m}"], np.float32),
                                             np.asarray(z[f"bank_{m}"], np.float32), float(thr),
                                             int(spec.get("k", 10)), float(spec.get("sharpness", 8.0)))
        except (OSError, KeyError, ValueError) as e:
            log.warning("familiarity statistics %s cannot be read (%s): familiarity is not assessed", path, e)
            return cls(source="not assessed")
        return cls(stats, float(spec.get("unfamiliar_below", UNFAMILIAR_BELOW)), str(path))
