"""A tiny procedural dataset in the simulator's dataset format, for fast training tests.

Not a simulator: each scene's focus class leaves a simple, learnable trace in every modality (a
coloured square in the camera, a blob of class-dependent size in the BEV grid, a mel band in the
audio, a vibration frequency in the IMU), so tests can check that training learns and that the
training code reads the real format, without waiting for ray-cast rendering.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmfusion_ros.core.preprocess import DEFAULT
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, OBJECT_CLASSES

_COLORS = np.array([[230, 60, 60], [160, 110, 40], [40, 80, 230], [40, 200, 60], [250, 140, 0],
                    [170, 130, 90], [120, 40, 160], [90, 90, 90], [250, 250, 40]], np.uint8)


def write_synthetic_dataset(out_dir, n_scenes: int = 24, frames_per_scene: int = 12, frame_step: float = 0.2,
                            seed: int = 0, classes=None) -> Path:
    """Write out_dir/{manifest.json, <split>-0.npz/.json}; scenes are split train/val/test/heldout."""
    rng = np.random.default_rng(seed)
    classes = list(classes or OBJECT_CLASSES[:4])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre = DEFAULT
    s = pre.image_size
    split_of = ["train"] * n_scenes
    n_eval = max(1, n_scenes // 8)
    for i in range(n_eval):
        split_of[-1 - i] = "test"
        split_of[-1 - n_eval - i] = "val"
        split_of[-1 - 2 * n_eval - i] = "heldout"
    rows = {k: [] for k in ("train", "val", "test", "heldout")}
    for sc in range(n_scenes):
        c = sc % len(classes)
        cls_global = OBJECT_CLASSES.index(classes[c])
        onset = rng.uniform(0.8, frames_per_scene * frame_step - 0.6)
        for f in range(frames_per_scene):
            t = f * frame_step
            cam = rng.integers(0, 40, (s, s, 3)).astype(np.uint8)
            r, q = rng.integers(10, s - 40, 2)
            size = 20 + int(10 * t / (frames_per_scene * frame_step))
            cam[r:r + size, q:q + size] = _COLORS[cls_global]
            lidar = np.zeros((4, pre.bev_cells, pre.bev_cells), np.float16)
            cx, cy = rng.integers(30, pre.bev_cells - 30, 2)
            rad = 6 + 3 * c
            lidar[c % 4, cx - rad:cx + rad, cy - rad:cy + rad] = 1.0  # class -> BEV channel and blob size
            audio = rng.normal(-1.0, 0.1, (1, pre.n_mels, pre.audio_frames)).astype(np.float16)
            band = 6 + 12 * c
            audio[0, band:band + 6] += 1.5
            tt = np.arange(pre.imu_samples) / pre.imu_rate
            imu = rng.normal(0, 0.05, (6, pre.imu_samples)).astype(np.float32)
            imu[2] += 1.0
            imu[0] += 0.5 * np.sin(2 * np.pi * (2 + 3 * c) * tt)
            ev_now = np.zeros(len(EVENT_TYPES), np.uint8)
            ev_fut = np.zeros((len(EVENT_TYPES), len(EVENT_HORIZONS)), np.uint8)
            tto = np.full(len(EVENT_TYPES), np.inf, np.float32)
            e = c % len(EVENT_TYPES)  # each class drives one event type, starting at `onset`
            ev_now[e] = t >= onset
            for h, hz in enumerate(EVENT_HORIZONS):
                ev_fut[e, h] = (t + hz) >= onset
            if t < onset:
                tto[e] = onset - t
            present = np.zeros(len(OBJECT_CLASSES), np.uint8)
            present[cls_global] = 1
            name = classes[c].replace("_", " ")
            rows[split_of[sc]].append(dict(
                camera=cam, lidar=lidar, audio=audio, imu=imu.astype(np.float16), scene_id=sc, t=t,
                class_id=cls_global, classes_present=present, sound_class=cls_global, events_now=ev_now,
                events_future=ev_fut, time_to_onset=tto,
                caption=[f"a {name} is near the robot", f"the robot sees a {name}"],
                objects=[{"class": classes[c], "track_id": 1, "center": [3.0, 0.0, 0.0], "size": [1, 1, 1],
                          "yaw": 0.0, "velocity": [0, 0, 0]}]))
    dtypes = dict(camera=np.uint8, lidar=np.float16, audio=np.float16, imu=np.float16, scene_id=np.int32,
                  t=np.float32, class_id=np.int16, classes_present=np.uint8, sound_class=np.int16,
                  events_now=np.uint8, events_future=np.uint8, time_to_onset=np.float32)
    splits = {}
    for name, rs in rows.items():
        if not rs:
            continue
        np.savez(out / f"{name}-0.npz", **{k: np.stack([r[k] for r in rs]).astype(dt) for k, dt in dtypes.items()})
        (out / f"{name}-0.json").write_text(json.dumps({"captions": [r["caption"] for r in rs], "objects": [r["objects"] for r in rs]}))
        splits[name] = [f"{name}-0.npz"]
    man = {"format_version": 1, "seed": seed, "n_samples": n_scenes * frames_per_scene, "frame_step": frame_step,
           "preprocess": {}, "classes": OBJECT_CLASSES, "event_types": EVENT_TYPES, "horizons": EVENT_HORIZONS,
           "splits": splits, "heldout_combinations": [], "samples_per_second": 0.0, "synthetic": True}
    (out / "manifest.json").write_text(json.dumps(man, indent=1))
    return out
