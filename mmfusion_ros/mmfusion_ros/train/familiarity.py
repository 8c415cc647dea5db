"""Fit the familiarity statistics of a bundle (core/familiarity.py scores them on the robot).

Called at export (simulator training data) and by `mmfusion train --bags` (the user's own recordings,
which then become the familiar world). The bank is a random sample of training embeddings; the threshold
is the k-NN distance at `quantile` of frames from scenes the bank does not contain (so new frames of the
training world are flagged unfamiliar at about 1 - quantile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping

import numpy as np

from mmfusion_ros.core.familiarity import UNFAMILIAR_BELOW, Familiarity, ModalityStats, describe

FILE = "familiarity.npz"

def fit_modality(modality: str, train_x: np.ndarray, holdout_x: np.ndarray, bank_size: int = 1024, k: int = 10,
                 quantile: float = 0.995, seed: int = 0) -> ModalityStats:
    """Training-scene inputs fill the bank; inputs of other scenes of the same world (`holdout_x`, e.g. the val
    split) set the threshold, so a new scene of the familiar world is not called unfamiliar."""
    if len(train_x) < k + 1 or len(holdout_x) < 10:
        raise ValueError(f"familiarity: {modality}: {len(train_x)} training and {len(holdout_x)} held-out frames "
                         f"are too few (need {k + 1} and 10)")
    desc = np.concatenate([describe(modality, train_x[i:i + 256]) for i in range(0, len(train_x), 256)])  # (N, F)
    mean, std = desc.mean(0), desc.std(0) + 1e-3
    pick = np.random.default_rng(seed).permutation(len(desc))[:bank_size]
    bank = ((desc[pick] - mean) / std).astype(np.float16).astype(np.float32)  # as shipped (float16)
    st = ModalityStats(mean.astype(np.float32), std.astype(np.float32), bank, 1.0, k)
    d = np.concatenate([st.distances(describe(modality, holdout_x[i:i + 256])) for i in range(0, len(holdout_x), 256)])
    st.threshold = float(np.quantile(d[np.isfinite(d)], quantile))
    return st


def fit(train_inputs: Mapping[str, np.ndarray], holdout_inputs: Mapping[str, np.ndarray], out_dir,
        bank_size: int = 1024, k: int = 10, quantile: float = 0.995, seed: int = 0, source: str = "") -> dict:
    """Fit every modality with data ({modality: (N, ...) model inputs}), write <out_dir>/familiarity.npz and
    return the manifest entry ("familiarity")."""
    arrays: Dict[str, np.ndarray] = {}
    mods: Dict[str, float] = {}
    for m, x in train_inputs.items():
        h = holdout_inputs.get(m)
        if x is None or len(x) == 0 or h is None or len(h) == 0:
            continue
        st = fit_modality(m, x, h, bank_size, k, quantile, seed)
        arrays.update({f"mean_{m}": st.mean, f"std_{m}": st.std, f"bank_{m}": st.bank.astype(np.float16)})
        mods[m] = st.threshold
    if not mods:
        raise ValueError("familiarity: no modality had data to fit")
    np.savez_compressed(Path(out_dir) / FILE, **arrays)
    return {"file": FILE, "method": "knn_input_descriptors", "k": int(k), "quantile": float(quantile),
            "sharpness": 8.0, "unfamiliar_below": UNFAMILIAR_BELOW, "modalities": mods, "fitted_on": source}


def fit_from_splits(train, holdout, out_dir, max_frames: int = 8000, modalities=None, **kw) -> dict:
    """Fit from two train.data.Split objects (simulator datasets); `modalities` (default all four) names which."""
    idx = lambda s: np.linspace(0, len(s) - 1, min(len(s), max_frames)).astype(int)
    mods = list(modalities or ["camera", "lidar", "audio", "imu"])
    ti, hi = idx(train), idx(holdout)
    return fit({m: train.inputs(ti, [m])[m] for m in mods}, {m: holdout.inputs(hi, [m])[m] for m in mods}, out_dir,
               **kw)


def fit_from_windows(data: Mapping[str, np.ndarray], out_dir, every: int = 5, **kw) -> dict:
    """Fit from bag windows (train/bags.py): every `every`-th window sets the threshold, the rest fill the
    bank, so the user's own recordings become the familiar world."""
    mods = [m for m in ("camera", "lidar", "audio", "imu") if m in data and len(data[m])]
    n = min(len(data[m]) for m in mods) if mods else 0
    hold = np.arange(n) % every == every - 1
    return fit({m: data[m][~hold] for m in mods}, {m: data[m][hold] for m in mods}, out_dir, **kw)


def write_into_bundle(model_dir, spec: dict) -> None:
    """Put a fitted entry into the bundle's manifest.json (the .npz is already in the bundle)."""
    path = Path(model_dir) / "manifest.json"
    man = json.loads(path.read_text())
    man["familiarity"] = spec
    path.write_text(json.dumps(man, indent=1))


def load(model_dir) -> Familiarity:
    from mmfusion_ros.runtime.manifest import load_manifest

    return Familiarity.from_manifest(load_manifest(model_dir), Path(model_dir))
