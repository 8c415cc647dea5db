"""Does this encoder's input look like what it was trained on? One score in [0, 1] per present modality.

An encoder maps anything to some unit vector, and the shared space gives that vector a confident label,
so an input from another world (a real IMU for a simulator-trained model) would be described with full
confidence. Familiarity is the guard: the distance from the frame's embedding to its k nearest training
embeddings (cosine), scaled by the same distance's `quantile` on held-out frames of the training
distribution. k-NN distance was chosen over a Mahalanobis distance by measurement (MODEL_CARD.md,
"Familiarity"): it needs no Gaussian assumption about a space shaped by contrastive training.

The statistics are fitted at export (train/familiarity.py), shipped in the bundle as one .npz, and scored
here in numpy on the robot's path (one (K,D) matrix-vector product per modality: well under 1 ms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)

#: Score below which a modality counts as unfamiliar (the threshold distance maps to exactly this).
UNFAMILIAR_BELOW = 0.5


@dataclass
class ModalityStats:
    """k-NN statistics of one encoder's training embeddings."""

    bank: np.ndarray  # (K, D) float32 unit rows: a sample of training embeddings
    threshold: float  # mean k-NN cosine distance at the fitted quantile of held-out training-distribution frames
    k: int = 10  # neighbours averaged
    sharpness: float = 8.0  # how fast the score falls past the threshold (logistic in log-distance)

    def distance(self, emb: np.ndarray) -> float:
        """Mean cosine distance from one (D,) embedding to its k nearest bank rows."""
        e = np.asarray(emb, np.float32).reshape(-1)
        n = float(np.linalg.norm(e))
        if not np.isfinite(n) or n == 0.0:
            return float("inf")
        d = 1.0 - self.bank @ (e / n)  # (K,)
        k = min(self.k, len(d))
        return float(np.mean(np.partition(d, k - 1)[:k]))

    def score(self, emb: np.ndarray) -> float:
        d = self.distance(emb)
        if not np.isfinite(d):
            return 0.0
        r = max(d, 1e-9) / max(self.threshold, 1e-9)
        return float(1.0 / (1.0 + r ** self.sharpness))


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

    def score(self, modality: str, embedding: np.ndarray) -> float:
        """(D,) embedding of `modality` -> familiarity in [0, 1]; 1.0 for a modality with no statistics
        (not assessed: callers report it as such, see `assessed`)."""
        st = self.stats.get(modality)
        return 1.0 if st is None else st.score(embedding)

    def familiar(self, modality: str, embedding: np.ndarray) -> bool:
        return self.score(modality, embedding) >= self.threshold

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
                    bank = np.asarray(z[f"bank_{m}"], np.float32)  # (K, D)
                    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
                    stats[m] = ModalityStats(bank, float(thr), int(spec.get("k", 10)),
                                             float(spec.get("sharpness", 8.0)))
        except (OSError, KeyError, ValueError) as e:
            log.warning("familiarity statistics %s cannot be read (%s): familiarity is not assessed", path, e)
            return cls(source="not assessed")
        return cls(stats, float(spec.get("unfamiliar_below", UNFAMILIAR_BELOW)), str(path))
