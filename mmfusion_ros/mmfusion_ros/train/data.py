"""Training data from a dataset folder written by `mmfusion sim dataset` (format in docs/architecture.md).

A split is loaded whole into memory in its stored dtypes (uint8/float16): 8000 samples are about
1.5 GB, and random access to in-memory arrays is far faster than decompressing npz shards per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.preprocess import IMAGE_MEAN, IMAGE_STD

ARRAYS = ["camera", "lidar", "audio", "imu", "scene_id", "t", "class_id", "classes_present", "sound_class",
          "events_now", "events_future", "time_to_onset"]
SENSOR_ARRAYS = ["camera", "lidar", "audio", "imu"]


class DatasetError(ValueError):
    """The dataset folder is missing, incomplete or inconsistent (the message names the file)."""


@dataclass
class Split:
    """One split of a dataset, all arrays concatenated in time order across its shards."""

    name: str
    arrays: Dict[str, np.ndarray]
    captions: List[List[str]]  # per sample, one or more phrasings
    objects: List[list]
    classes: List[str]
    event_types: List[str]
    horizons: List[float]
    frame_step: float
    history_index: Optional[np.ndarray] = field(default=None, repr=False)  # (N, T) frame indices, oldest first
    camera_embeddings: Optional[np.ndarray] = field(default=None, repr=False)  # (N, D) frozen image-tower embeddings:
    #                                             when set, they are the camera "input" (tower bundles, train/towers.py)
    sweeps: Optional[List[list]] = field(default=None, repr=False)  # per sample, the LiDAR sweeps since the previous
    #                                             one, [t, yaw rate, boxes] (sim/dataset.py); None: an older dataset

    def __len__(self) -> int:
        return len(self.arrays["scene_id"])

    def subset(self, idx: np.ndarray) -> "Split":
        """Whole scenes only make sense for histories, so histories are rebuilt after subsetting."""
        idx = np.sort(np.asarray(idx))
        s = Split(self.name, {k: v[idx] for k, v in self.arrays.items()}, [self.captions[i] for i in idx],
                  [self.objects[i] for i in idx], self.classes, self.event_types, self.horizons, self.frame_step)
        if self.camera_embeddings is not None:
            s.camera_embeddings = self.camera_embeddings[idx]
        if self.sweeps is not None:
            s.sweeps = [self.sweeps[i] for i in idx]
        return s

    def build_histories(self, history_len: int, history_step: float) -> np.ndarray:
        """(N, T) indices of the frames history_step apart ending at each frame, within its scene;
        before a scene's first frame the first frame is repeated (what the live pipeline does)."""
        stride = max(1, int(round(history_step / self.frame_step)))
        n = len(self)
        scene = self.arrays["scene_id"]
        start = np.zeros(n, np.int64)  # index of the first frame of each sample's scene
        for i in range(1, n):
            start[i] = start[i - 1] if scene[i] == scene[i - 1] else i
        offsets = stride * np.arange(history_len - 1, -1, -1)  # (T,) oldest first
        idx = np.arange(n)[:, None] - offsets[None, :]  # (N, T)
        self.history_index = np.maximum(idx, start[:, None])
        return self.history_index

    def camera_float(self, idx) -> np.ndarray:
        """(B,3,S,S) float32 ImageNet-normalised camera inputs for sample indices idx."""
        x = self.arrays["camera"][idx].astype(np.float32) * (1.0 / 255.0)  # (B, S, S, 3)
        x = (x - IMAGE_MEAN) / IMAGE_STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (B, 3, S, S)

    def inputs(self, idx, keys: Sequence[str] = SENSOR_ARRAYS) -> Dict[str, np.ndarray]:
        """{modality: (B, ...) float32 model input} for sample indices idx."""
        out = {}
        for k in keys:
            if k == "camera":
                out[k] = self.camera_float(idx) if self.camera_embeddings is None else self.camera_embeddings[idx]
            else:
                out[k] = self.arrays[k][idx].astype(np.float32)
        return out


def read_manifest(root) -> dict:
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"no manifest.json in {root} (write a dataset with `mmfusion sim dataset --out {root}`)")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: {e}") from e
    for k in ("splits", "classes", "event_types", "horizons", "frame_step"):
        if k not in man:
            raise DatasetError(f"{path}: missing key {k!r}")
    return man


def load_split(root, split: str = "train", max_samples: int = 0) -> Split:
    """Load one split; ``max_samples`` > 0 keeps the first shards up to that many samples (whole scenes)."""
    root = Path(root)
    man = read_manifest(root)
    if split not in man["splits"]:
        raise DatasetError(f"{root}/manifest.json has no split {split!r} (it has {sorted(man['splits'])})")
    parts: Dict[str, list] = {k: [] for k in ARRAYS}
    captions: List[List[str]] = []
    objects: List[list] = []
    sweeps: Optional[List[list]] = []  # None once a shard has none
    total = 0
    for shard in man["splits"][split]:
        p = root / shard
        try:
            with np.load(p) as z:
                missing = [k for k in ARRAYS if k not in z]
                if missing:
                    raise DatasetError(f"{p}: missing arrays {missing}")
                arrs = {k: z[k] for k in ARRAYS}
        except (OSError, ValueError) as e:
            if isinstance(e, DatasetError):
                raise
            raise DatasetError(f"cannot read shard {p}: {e}") from e
        side = p.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        n = len(arrs["scene_id"])
        caps = meta.get("captions", [[""]] * n)
        if len(caps) != n:
            raise DatasetError(f"{side}: {len(caps)} captions for {n} samples")
        for k in ARRAYS:
            parts[k].append(arrs[k])
        captions.extend([c if isinstance(c, list) else [c] for c in caps])
        objects.extend(meta.get("objects", [[]] * n))
        sw = meta.get("sweeps")
        if sweeps is not None and isinstance(sw, list) and len(sw) == n:
            sweeps.extend(sw)
        else:
            sweeps = None
        total += n
        if max_samples and total >= max_samples:
            break
    if total == 0:
        raise DatasetError(f"split {split!r} of {root} is empty")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return Split(split, arrays, captions, objects, list(man["classes"]), list(man["event_types"]),
                 [float(h) for h in man["horizons"]], float(man["frame_step"]), sweeps=sweeps)


def shard_indices(n: int, rank: int, world: int, seed: int, epoch: int, drop_last: bool = True, batch: int = 1) -> np.ndarray:
    """This rank's share of a seeded permutation of range(n) (DistributedSampler semantics, with
    every rank getting the same number of full batches so collective ops stay in step)."""
    perm = np.random.default_rng(seed + 1000 * epoch).permutation(n)
    per = n // world
    mine = perm[rank * per:(rank + 1) * per]
    if drop_last:
        mine = mine[: (len(mine) // batch) * batch]
    return mine
