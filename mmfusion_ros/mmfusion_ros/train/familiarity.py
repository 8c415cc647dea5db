"""Fit the familiarity statistics of a bundle (core/familiarity.py scores them on the robot).

Called at export (simulator training data) and by `mmfusion train --bags` (the user's own recordings,
which then become the familiar world). The bank is a random sample of training embeddings; the threshold
is the k-NN distance at `quantile` of frames the bank does not contain (so held-out frames of the training
distribution are flagged unfamiliar at about 1 - quantile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from mmfusion_ros.core.familiarity import Familiarity, ModalityStats, UNFAMILIAR_BELOW

FILE = "familiarity.npz"

Encode = Callable[[str, np.ndarray], np.ndarray]  # (modality, (B, ...) inputs) -> (B, D) embeddings


def embed_all(encode: Encode, modality: str, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """(N, ...) inputs -> (N, D) unit embeddings, in batches."""
    out = [np.asarray(encode(modality, np.ascontiguousarray(x[i:i + batch], np.float32)), np.float32)
           for i in range(0, len(x), batch)]
    e = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def fit_modality(emb: np.ndarray, bank_size: int = 2048, k: int = 10, quantile: float = 0.99,
                 seed: int = 0) -> ModalityStats:
    """(N, D) training embeddings -> statistics; N is split into a bank and the frames that set the threshold."""
    n = len(emb)
    if n < 2 * k + 2:
        raise ValueError(f"familiarity: {n} embeddings are too few to fit (need at least {2 * k + 2})")
    perm = np.random.default_rng(seed).permutation(n)
    n_bank = min(bank_size, n - max(k + 1, n // 5))  # keep at least a fifth (and k+1) frames out of the bank
    bank, rest = emb[perm[:n_bank]], emb[perm[n_bank:]]
    st = ModalityStats(bank.astype(np.float32), 1.0, k)
    d = np.array([st.distance(e) for e in rest])
    st.threshold = float(np.quantile(d, quantile))
    return st


def fit(encode: Encode, inputs: Mapping[str, np.ndarray], out_dir, bank_size: int = 2048, k: int = 10,
        quantile: float = 0.99, seed: int = 0, source: str = "") -> dict:
    """Fit every modality in `inputs` ({modality: (N, ...) model inputs}), write <out_dir>/familiarity.npz,
    return the manifest entry ("familiarity")."""
    arrays: Dict[str, np.ndarray] = {}
    mods: Dict[str, float] = {}
    for m, x in inputs.items():
        if x is None or len(x) == 0:
            continue
        st = fit_modality(embed_all(encode, m, x), bank_size, k, quantile, seed)
        arrays[f"bank_{m}"] = st.bank.astype(np.float16)  # half the bytes; scores move by < 1e-3
        mods[m] = st.threshold
    if not mods:
        raise ValueError("familiarity: no modality had data to fit")
    out = Path(out_dir)
    np.savez_compressed(out / FILE, **arrays)
    return {"file": FILE, "method": "knn_cosine", "k": int(k), "quantile": float(quantile), "sharpness": 8.0,
            "unfamiliar_below": UNFAMILIAR_BELOW, "modalities": mods, "fitted_on": source}


def write_into_bundle(model_dir, spec: dict) -> None:
    """Put a fitted entry into the bundle's manifest.json (the .npz is already in the bundle)."""
    path = Path(model_dir) / "manifest.json"
    man = json.loads(path.read_text())
    man["familiarity"] = spec
    path.write_text(json.dumps(man, indent=1))


def load(model_dir) -> Familiarity:
    from mmfusion_ros.runtime.manifest import load_manifest

    return Familiarity.from_manifest(load_manifest(model_dir), Path(model_dir))
