"""Linear probes on a written dataset: is each class visible in each modality's model input?

A quick check of learnability that needs no training framework: simple per-modality features of the
stored model inputs and a ridge-regression classifier, scored by k-fold cross-validation with whole
scenes held out together. Camera and LiDAR features are taken around the focus object's ground-truth
position (from the shard's JSON side), so they measure whether the class is distinguishable there,
not whether a network can find it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..core.preprocess import DEFAULT
from .config import SimConfig


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
    cfg = SimConfig().camera  # the dataset's camera (rendered at model resolution)
    intr = cfg.intrinsics(cam.shape[2], cam.shape[1])
    T = cfg.lidar_to_camera()
    for i in range(len(lid)):
        focus = [o for o in side["objects"][i] if o["track_id"] == 1][0]
        r, c = _focus_cell(focus)
        crop = np.pad(lid[i], ((0, 0), (8, 8), (8, 8)))[:, r:r + 16, c:c + 16]  # (4, 16, 16) around the focus
        occ = crop[0] > 0
        m = occ.any()
        out["lidar"].append(np.array([occ.sum(), crop[1].max(), crop[2][occ].mean() if m else 0.0,
                                      crop[3][occ].mean() if m else 0.0, crop[3].max(), crop[0].max(),
                                      (crop[1] > 0.5).sum(), (crop[1] > 0.6).sum(), (crop[1] > 0.7).sum()]))
        # colour histogram of a window around the focus box centre projected into the image
        pc = T[:3, :3] @ np.asarray(focus["center"]) + T[:3, 3]  # optical frame
        u, v = (intr.project(pc[None])[0] if pc[2] > 0.3 else (-99, -99))
        s = cam.shape[1]
        u0, v0 = int(np.clip(u - 12, 0, s - 24)), int(np.clip(v - 12, 0, s - 24))
        win = cam[i, v0:v0 + 24, u0:u0 + 24]  # (24, 24, 3)
        q = (win // 64).astype(np.int64)  # 4x4x4 colour bins
        h = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / q[..., 0].size
        out["camera"].append(np.concatenate([h, win.reshape(-1, 3).std(0) / 255.0]))
    aud = z["audio"].astype(np.float32)[:, 0]  # (n, M, F)
    imu = z["imu"].astype(np.float32)  # (n, 6, T)
    feats = {k: np.stack(v) for k, v in out.items()}
    feats["audio"] = np.concatenate([aud.mean(2), aud.std(2)], 1)
    feats["imu"] = np.concatenate([imu.mean(2), imu.std(2), np.abs(np.diff(imu, axis=2)).mean(2)], 1)
    return feats, z["class_id"].astype(np.int64), z["scene_id"].astype(np.int64)


def _stack(folder: Path, files: List[str]):
    parts = [features(folder / f) for f in files]
    return ({k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]},
            np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def ridge_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, n_classes: int,
                   lam: float = 1.0) -> float:
    """Least-squares one-vs-all classifier (closed form; no sklearn in the requirements)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    A = np.c_[(xtr - mu) / sd, np.ones(len(xtr))]  # (n, F+1)
    Y = np.eye(n_classes)[ytr]  # (n, K)
    W = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Y)  # (F+1, K)
    pred = (np.c_[(xte - mu) / sd, np.ones(len(xte))] @ W).argmax(1)
    return float((pred == yte).mean())


def run_probes(folder: Path, folds: int = 5) -> Dict[str, float]:
    """{modality: accuracy} for a dataset written by `mmfusion sim dataset`, by k-fold cross-validation
    over whole scenes of the train, val and test splits (a few val/test scenes alone are too noisy)."""
    folder = Path(folder)
    m = json.loads((folder / "manifest.json").read_text())
    x, y, sid = _stack(folder, m["splits"]["train"] + m["splits"]["val"] + m["splits"]["test"])
    scenes = np.unique(sid)
    if len(scenes) < folds:
        raise ValueError(f"{folder}: {len(scenes)} scenes are too few for {folds}-fold probes")
    fold_of = dict(zip(np.random.default_rng(0).permutation(scenes).tolist(), np.arange(len(scenes)) % folds))
    fold = np.array([fold_of[int(s)] for s in sid])
    k = len(m["classes"])
    out = {}
    for mod in x:
        hits = sum(ridge_accuracy(x[mod][fold != f], y[fold != f], x[mod][fold == f], y[fold == f], k)
                   * (fold == f).sum() for f in range(folds))
        out[mod] = float(hits / len(y))
    return out
