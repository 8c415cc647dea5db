"""Linear probes on a written dataset: is each class visible in each modality's model input?

A quick check of learnability that needs no training framework: simple per-modality features of the
stored model inputs, a ridge-regression classifier fitted on the train split and scored on val+test
(whole scenes apart). Camera and LiDAR features are taken around the focus object's ground-truth
position (from the shard's JSON side), so they measure whether the class is distinguishable there,
not whether a network can find it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..core.preprocess import DEFAULT


def _focus_cell(obj: dict) -> Tuple[int, int]:
    cell = 2 * DEFAULT.bev_range / DEFAULT.bev_cells
    x, y = obj["center"][:2]
    return int(np.floor((x + DEFAULT.bev_range) / cell)), int(np.floor((y + DEFAULT.bev_range) / cell))


def features(shard: Path) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Per-modality feature matrices (n, F) and labels (n,) of one shard."""
    z = np.load(shard)
    side = json.loads(shard.with_suffix(".json").read_text())
    lid = z["lidar"].astype(np.float32)  # (n, 4, C, C)
    cam = z["camera"]  # (n, S, S, 3); read once (NpzFile decompresses on every item access)
    out: Dict[str, List[np.ndarray]] = {"lidar": [], "camera": []}
    for i in range(len(lid)):
        focus = [o for o in side["objects"][i] if o["track_id"] == 1][0]
        r, c = _focus_cell(focus)
        crop = np.pad(lid[i], ((0, 0), (8, 8), (8, 8)))[:, r:r + 16, c:c + 16]  # (4, 16, 16) around the focus
        occ = crop[0] > 0
        m = occ.any()
        out["lidar"].append(np.array([occ.sum(), crop[1].max(), crop[2][occ].mean() if m else 0.0,
                                      crop[3][occ].mean() if m else 0.0, crop[3].max(), crop[0].max(),
                                      (crop[1] > 0.5).sum(), (crop[1] > 0.6).sum(), (crop[1] > 0.7).sum()]))
        img = cam[i].astype(np.float32) / 255.0  # (S, S, 3)
        q = (cam[i] // 64).astype(np.int64)  # 4x4x4 colour histogram of the whole image
        h = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / q[..., 0].size
        out["camera"].append(np.concatenate([h, img.mean((0, 1))]))
    aud = z["audio"].astype(np.float32)[:, 0]  # (n, M, F)
    imu = z["imu"].astype(np.float32)  # (n, 6, T)
    feats = {k: np.stack(v) for k, v in out.items()}
    feats["audio"] = np.concatenate([aud.mean(2), aud.std(2)], 1)
    feats["imu"] = np.concatenate([imu.mean(2), imu.std(2), np.abs(np.diff(imu, axis=2)).mean(2)], 1)
    return feats, z["class_id"].astype(np.int64)


def _stack(folder: Path, files: List[str]):
    parts = [features(folder / f) for f in files]
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts])


def ridge_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, n_classes: int,
                   lam: float = 1.0) -> float:
    """Least-squares one-vs-all classifier (closed form; no sklearn in the requirements)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    A = np.c_[(xtr - mu) / sd, np.ones(len(xtr))]  # (n, F+1)
    Y = np.eye(n_classes)[ytr]  # (n, K)
    W = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Y)  # (F+1, K)
    pred = (np.c_[(xte - mu) / sd, np.ones(len(xte))] @ W).argmax(1)
    return float((pred == yte).mean())


def run_probes(folder: Path) -> Dict[str, float]:
    """{modality: held-out accuracy} for a dataset folder written by `mmfusion sim dataset`."""
    folder = Path(folder)
    m = json.loads((folder / "manifest.json").read_text())
    xtr, ytr = _stack(folder, m["splits"]["train"])
    xte, yte = _stack(folder, m["splits"]["val"] + m["splits"]["test"])
    k = len(m["classes"])
    return {mod: ridge_accuracy(xtr[mod], ytr, xte[mod], yte, k) for mod in xtr}
