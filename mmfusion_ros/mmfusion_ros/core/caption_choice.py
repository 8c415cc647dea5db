"""Which caption-memory entry a frame is captioned with: the nearest one, or, with a presence probe, the
one among the nearest whose named classes the sensors' evidence supports best.

The nearest memory entry to the fused embedding names the object ahead well but its distractors badly
(the fused embedding is mostly the focus object): on DS47 test 84 % of the classes it names are in the
frame and 69 % of the frame's classes are named. A per-class presence probe over the used sensors'
embeddings is a separate, cheap read of the same evidence; re-ranking the top-k entries by it is
written here by hand (a few array operations; no library does this choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

PRESENCE_FORMAT = 1  # caption_presence.npz layout version


@dataclass(frozen=True)
class CaptionPresence:
    """A linear per-class presence probe and the classes each caption-memory entry names."""

    weight: np.ndarray  # (4*D + 4, C) probe weights over [tokens of the used sensors (zeros else), used mask]
    bias: np.ndarray  # (C,) probe bias
    objects: np.ndarray  # (M, C) bool: the classes memory entry m names (objects or sounds)
    classes: List[str]  # (C,) class names, the simulator's order
    top_k: int  # how many of the nearest allowed entries are re-ranked (1 = nearest only)
    threshold: float  # a named class adds (p - threshold) to an entry's score: below it, naming it costs
    sim_weight: float  # weight of the cosine to the fused embedding in the score (keeps the layout close)

    def __post_init__(self):
        c = len(self.classes)
        if self.weight.ndim != 2 or self.weight.shape[1] != c or self.bias.shape != (c,):
            raise ValueError(f"caption presence: weight {self.weight.shape} / bias {self.bias.shape} do not fit {c} classes")
        if self.objects.ndim != 2 or self.objects.shape[1] != c:
            raise ValueError(f"caption presence: objects {self.objects.shape} do not fit {c} classes")
        if self.top_k < 1 or not 0.0 < self.threshold < 1.0 or not np.isfinite(self.sim_weight) or self.sim_weight < 0:
            raise ValueError(f"caption presence: need top_k >= 1, 0 < threshold < 1, sim_weight >= 0; got "
                             f"{self.top_k}, {self.threshold}, {self.sim_weight}")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise ValueError("caption presence: probe weights are not finite")

    @classmethod
    def load(cls, path, memory_size: int, embed_dim: int) -> "CaptionPresence":
        """Read caption_presence.npz; it must describe the memory it ships beside (same entry count)."""
        path = Path(path)
        try:
            with np.load(path) as z:
                fmt = int(z["format"])
                out = cls(weight=np.asarray(z["weight"], np.float32), bias=np.asarray(z["bias"], np.float32),
                          objects=np.asarray(z["objects"], bool), classes=[str(c) for c in z["classes"]],
                          top_k=int(z["top_k"]), threshold=float(z["threshold"]), sim_weight=float(z["sim_weight"]))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the caption presence probe: {e}") from e
        if fmt != PRESENCE_FORMAT:
            raise ValueError(f"{path}: caption presence format {fmt}, this package reads {PRESENCE_FORMAT}")
        if len(out.objects) != memory_size:
            raise ValueError(f"{path}: describes {len(out.objects)} memory entries, the caption memory has {memory_size}")
        if out.weight.shape[0] != 4 * embed_dim + 4:
            raise ValueError(f"{path}: probe input {out.weight.shape[0]} does not fit 4 x {embed_dim} + 4")
        return out

    def save(self, path) -> Path:
        path = Path(path)
        np.savez_compressed(path, format=np.int64(PRESENCE_FORMAT), weight=self.weight.astype(np.float32),
                            bias=self.bias.astype(np.float32), objects=self.objects.astype(bool),
                            classes=np.array(self.classes), top_k=np.int64(self.top_k),
                            threshold=np.float64(self.threshold), sim_weight=np.float64(self.sim_weight))
        return path

    def probs(self, tokens: np.ndarray, used: np.ndarray) -> np.ndarray:
        """tokens (N,4,D), used (N,4) or (4,) 0/1 -> (N,C) presence probabilities from the used sensors only."""
        return probe_probs(self.weight, self.bias, tokens, used)

    def choose(self, sims: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """sims (N,M) cosines to the memory, -inf where an entry is not allowed; probs (N,C) -> (N,) entry index.

        Among the top_k allowed entries: the highest sum over the classes an entry names of (p - threshold),
        plus sim_weight x its cosine. An entry naming nothing scores its cosine alone."""
        sims = np.asarray(sims, np.float64)
        k = min(self.top_k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k) the k nearest, any order
        s = np.take_along_axis(sims, top, axis=1)  # (N, k)
        order = np.argsort(-s, axis=1, kind="stable")  # nearest first, so a tie goes to the nearer entry
        top, s = np.take_along_axis(top, order, axis=1), np.take_along_axis(s, order, axis=1)
        gain = np.einsum("nkc,nc->nk", self.objects[top].astype(np.float64), np.asarray(probs, np.float64) - self.threshold)
        ok = np.isfinite(s)  # (N, k) allowed
        score = np.where(ok, gain + self.sim_weight * np.where(ok, s, 0.0), -np.inf)  # (N, k)
        return top[np.arange(len(top)), np.argmax(score, axis=1)]


def probe_features(tokens: np.ndarray, used: np.ndarray) -> np.ndarray:
    """tokens (N,4,D), used (N,4) or (4,) -> (N, 4*D+4): each sensor's embedding where used (zeros else), then the mask."""
    tokens = np.asarray(tokens, np.float32)
    u = np.broadcast_to(np.asarray(used, np.float32), tokens.shape[:2])  # (N, 4)
    return np.concatenate([(tokens * u[..., None]).reshape(len(tokens), -1), u], axis=1)


def probe_probs(weight: np.ndarray, bias: np.ndarray, tokens: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(N,C) sigmoid of the linear probe over probe_features."""
    z = probe_features(tokens, used) @ weight + bias  # (N, C)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def load_optional(model_dir, name: Optional[str], memory_size: int, embed_dim: int) -> Optional[CaptionPresence]:
    """The bundle's probe when the manifest names one, else None."""
    if not name:
        return None
    return CaptionPresence.load(Path(model_dir) / str(name), memory_size, embed_dim)
