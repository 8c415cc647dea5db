"""Binding from a robot's own recordings: no labels, only co-located sensors (the ImageBind idea).

Frames come from the node's own sync code (core.sync.Collector fed from the bags by the `train`
command), so the windows the model learns from are exactly what it sees live. LiDAR, audio and IMU
learn to meet the frozen camera embedding of the same moment; the camera, and with it the link to
text, stays as the init checkpoint left it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
import torch

from mmfusion_ros.core.preprocess import model_inputs
from mmfusion_ros.core.types import SensorFrame
from mmfusion_ros.model.checkpoint import load_checkpoint, save_checkpoint
from mmfusion_ros.model.mmfusion import SENSOR_KEYS
from mmfusion_ros.train import metrics as M
from mmfusion_ros.train.losses import info_nce

BIND_KEYS = ["lidar", "audio", "imu"]


def windows_from_frames(frames: Iterable[SensorFrame], source: int = 0, tower=None) -> Dict[str, np.ndarray]:
    """SensorFrames -> model inputs of the frames where all four sensors are present. With a tower
    (train/towers.TowerSide) the camera "input" is its frozen image-tower embedding.

    Returns {"camera", "lidar", "audio", "imu": (N, ...) float32, "t": (N,), "source": (N,)} plus
    "skipped" (frames missing a sensor: they cannot pair every modality with the camera).
    """
    rows: Dict[str, List[np.ndarray]] = {k: [] for k in SENSOR_KEYS}
    ts: List[float] = []
    skipped = 0
    for f in frames:
        x = model_inputs(f)
        if any(k not in x for k in SENSOR_KEYS):
            skipped += 1
            continue
        if tower is not None:
            x["camera"] = tower.image_embeddings(np.asarray(f.image)[None])[0]  # (D,)
        for k in SENSOR_KEYS:
            rows[k].append(x[k])
        ts.append(f.stamp)
    if not ts:
        return {"skipped": np.array(skipped), "t": np.zeros(0), "source": np.zeros(0, np.int64)}
    out = {k: np.stack(v).astype(np.float32) for k, v in rows.items()}
    out["t"] = np.asarray(ts, np.float64)
    out["source"] = np.full(len(ts), source, np.int64)
    out["skipped"] = np.array(skipped)
    return out


def concat_windows(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["t"])]
    if not parts:
        raise ValueError("no frame had all four sensors (camera, LiDAR, audio, IMU): nothing to bind")
    out = {k: np.concatenate([p[k] for p in parts]) for k in SENSOR_KEYS + ["t", "source"]}
    return out


@torch.no_grad()
def _embed(model, data: Dict[str, np.ndarray], batch: int = 64) -> Dict[str, np.ndarray]:
    model.eval()
    n = len(data["t"])
    out = {}
    for k in SENSOR_KEYS:
        out[k] = np.concatenate([model.encode(k, torch.from_numpy(data[k][s:s + batch])).numpy() for s in range(0, n, batch)])
    return out  # {modality: (N, 384)}


def retrieval(model, data: Dict[str, np.ndarray], stride: int = 3) -> Dict[str, float]:
    """LiDAR/audio/IMU -> camera R@1/R@5 on every `stride`-th window (neighbours 0.1 s apart are
    near-duplicates, so a sparser gallery (0.3 s apart) measures what a user would call finding the moment)."""
    e = _embed(model, data)
    idx = np.arange(0, len(data["t"]), stride)
    match = np.eye(len(idx), dtype=bool)
    res = {"gallery_size": float(len(idx))}
    for k in BIND_KEYS:
        r = M.recall_at_k(e[k][idx], e["camera"][idx], match)
        res[f"{k}->camera R@1"] = r[1]
        res[f"{k}->camera R@5"] = r[5]
    return res


def train_on_windows(data: Dict[str, np.ndarray], init, out_dir, epochs: int = 3, seed: int = 0, batch_size: int = 32,
                     lr: float = 1e-3, positive_s: float = 0.15, threads: int = 2, log=print) -> dict:
    """Bind LiDAR/audio/IMU to the frozen camera on bag windows; writes out_dir/checkpoint.pt and
    out_dir/bags_report.json (retrieval before and after). Windows of the same recording less than
    ``positive_s`` apart also count as matches (they show the same moment)."""
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    rng = np.random.default_rng(seed)
    model, vocab, info = load_checkpoint(init)
    before = retrieval(model, data)
    log(f"before: {before}")
    cam = torch.from_numpy(_embed(model, data)["camera"])  # (N, 384) frozen anchors
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for k in BIND_KEYS:
        for m in (model.modality_trunks[k], model.modality_heads[k]):
            for p in m.parameters():
                p.requires_grad_(True)
                params.append(p)
        model.logit_scales[k].requires_grad_(True)
        params.append(model.logit_scales[k])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    n = len(data["t"])
    b = min(batch_size, n)
    if b < 2:
        raise ValueError(f"only {n} complete windows: need at least 2 to contrast")
    t = torch.from_numpy(data["t"])
    src = torch.from_numpy(data["source"])
    t0 = time.time()
    losses = []
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(n)
        for s in range(0, n - b + 1, b):
            idx = torch.from_numpy(perm[s:s + b])
            pos = (src[idx, None] == src[None, idx]) & ((t[idx, None] - t[None, idx]).abs() < positive_s)
            loss = sum(info_nce(model.encode(k, torch.from_numpy(data[k][idx.numpy()])), cam[idx], model.logit_scale(k), pos)
                       for k in BIND_KEYS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        log(f"bags epoch {ep + 1}/{epochs} loss {np.mean(losses[-max(1, n // b):]):.4f}")
    model.eval()
    after = retrieval(model, data)
    log(f"after: {after}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(info.get("metadata", {}))
    meta.update(bags_training={"init_sha256": info["sha256"], "windows": int(n), "epochs": epochs,
                               "seconds": time.time() - t0, "before": before, "after": after})
    from mmfusion_ros.train.familiarity import fit_from_windows

    # the robot's own recordings are now the familiar world: refit the statistics on them
    # (a frozen pretrained image tower is not judged by a few bags: its camera stays "not assessed")
    tower = "camera" in getattr(model, "tower_modalities", [])
    meta["familiarity"] = fit_from_windows({k: v for k, v in data.items() if not (tower and k == "camera")}, out,
                                           source=f"train --bags: {int(n)} windows")
    save_checkpoint(out / "checkpoint.pt", model, vocab, meta)
    # keep the init's caption memory next to the new checkpoint so the bundle stays complete
    mem = meta.get("caption_memory_file")
    src_dir = Path(init).parent if Path(init).is_file() else Path(init)
    if mem and (src_dir / mem).is_file() and not (out / mem).exists():
        (out / mem).write_bytes((src_dir / mem).read_bytes())
    report = {"windows": int(n), "before": before, "after": after, "loss_first": losses[0], "loss_last": losses[-1]}
    (out / "bags_report.json").write_text(json.dumps(report, indent=1))
    return report
