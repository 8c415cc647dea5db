"""Model inputs from the real recordings beside the project (../shared/data): the yardstick for familiarity.

Each loader returns (N, ...) float32 model inputs for one modality, made with the same core/preprocess.py
functions the robot's path uses, so a real sample reaches the encoder exactly as it would live. Windows
overlap by a hop so a short recording still gives a few dozen samples.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from mmfusion_ros.core.preprocess import (DEFAULT, GRAVITY, PreprocessConfig, audio_resample, imu_window,
                                          lidar_bev, log_mel, preprocess_image, resample)


def default_root() -> Optional[Path]:
    """../shared/data next to the repository when it exists (a user's clone has none)."""
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up.parent / "shared" / "data"
        if (up / ".git").exists() and cand.is_dir():
            return cand
    return None


def _imu_windows(t: np.ndarray, values: np.ndarray, hop_s: float, cfg: PreprocessConfig) -> np.ndarray:
    """(T,) stamps + (T,6) accel m/s^2, gyro rad/s at any rate -> (N, 6, S) windows resampled to cfg.imu_rate."""
    span = cfg.imu_samples / cfg.imu_rate
    out = []
    start = t[0] + span
    while start <= t[-1]:
        grid = start - span + np.arange(cfg.imu_samples) / cfg.imu_rate
        out.append(imu_window(resample(t, values, grid), cfg))
        start += hop_s
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 6, cfg.imu_samples), np.float32)


def husky_imu(bag: Path, hop_s: float = 1.0, cfg: PreprocessConfig = DEFAULT, max_windows: int = 400) -> np.ndarray:
    """The Husky's /imu/data (ROS 1 bag) -> (N, 6, S) IMU inputs."""
    from rosbags.highlevel import AnyReader

    ts, vals = [], []
    with AnyReader([Path(bag)]) as r:
        conns = [c for c in r.connections if c.msgtype == "sensor_msgs/msg/Imu"]
        for c, _, raw in r.messages(connections=conns):
            m = r.deserialize(raw, c.msgtype)
            ts.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)
            a, g = m.linear_acceleration, m.angular_velocity
            vals.append([a.x, a.y, a.z, g.x, g.y, g.z])
    t = np.asarray(ts)
    order = np.argsort(t, kind="stable")
    w = _imu_windows(t[order], np.asarray(vals, np.float32)[order], hop_s, cfg)
    return w[:: max(1, len(w) // max_windows)][:max_windows]


def st_imu(folder: Path, rate: float = 26.0, hop_s: float = 1.0, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """ST LSM6DSOX accelerometer logs (mg, 26 Hz, no gyro: zeros) -> (N, 6, S) IMU inputs, all files."""
    out = []
    for p in sorted(Path(folder).glob("*.txt")):
        acc = np.loadtxt(p, skiprows=1, dtype=np.float32) * (GRAVITY / 1000.0)  # (T, 3) m/s^2
        vals = np.concatenate([acc, np.zeros_like(acc)], axis=1)  # (T, 6)
        out.append(_imu_windows(np.arange(len(acc)) / rate, vals, hop_s, cfg))
    return np.concatenate(out) if out else np.zeros((0, 6, cfg.imu_samples), np.float32)


def urbansound(folder: Path, hop_s: float = 0.5, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """UrbanSound8K clips -> (N, 1, M, F) log-mel inputs, 1 s windows every hop_s."""
    from scipy.io import wavfile

    folder = Path(folder)
    out = []
    for row in csv.DictReader(open(folder / "labels.csv")):
        rate, raw = wavfile.read(folder / row["filename"])
        x = raw.astype(np.float32)
        if np.issubdtype(raw.dtype, np.integer):
            x /= float(np.iinfo(raw.dtype).max)
        a = audio_resample(x, rate, cfg.audio_rate)
        n, hop = cfg.audio_samples, int(hop_s * cfg.audio_rate)
        for s in range(0, max(1, len(a) - n + 1), hop):
            out.append(log_mel(a[s:s + n], cfg))
    return np.stack(out).astype(np.float32)


def kitti(folder: Path, cfg: PreprocessConfig = DEFAULT) -> Dict[str, np.ndarray]:
    """KITTI frame 000134 -> {"camera": (N,3,S,S), "lidar": (N,4,G,G)}: the whole image and overlapping
    square crops (what a robot's narrower camera would see), the whole scan and it rotated about z."""
    import cv2

    folder = Path(folder)
    png = next(folder.glob("*.png"))
    img = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    cams = [preprocess_image(img, cfg)]
    for x0 in np.linspace(0, w - h, 8).astype(int):
        cams.append(preprocess_image(np.ascontiguousarray(img[:, x0:x0 + h]), cfg))
    pts = np.fromfile(next(folder.glob("*.bin")), np.float32).reshape(-1, 4)
    lids = []
    for yaw in np.radians(np.arange(0, 360, 30)):
        c, s = np.cos(yaw), np.sin(yaw)
        p = pts.copy()
        p[:, 0], p[:, 1] = c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]
        lids.append(lidar_bev(p, cfg))
    return {"camera": np.stack(cams).astype(np.float32), "lidar": np.stack(lids).astype(np.float32)}


def real_sets(root: Optional[Path] = None, cfg: PreprocessConfig = DEFAULT) -> Dict[str, Dict[str, np.ndarray]]:
    """{set name: {modality: (N, ...) inputs}} for every real set found under root (empty when none)."""
    root = Path(root) if root else default_root()
    sets: Dict[str, Dict[str, np.ndarray]] = {}
    if root is None or not root.is_dir():
        return sets
    bag = root / "ros1_bags" / "robot_localization_husky_imu.bag"
    if bag.is_file():
        sets["husky_imu_bag"] = {"imu": husky_imu(bag, cfg=cfg)}
    if (root / "st_mlc_imu").is_dir():
        sets["st_imu_logs"] = {"imu": st_imu(root / "st_mlc_imu", cfg=cfg)}
    if (root / "kitti_000134").is_dir():
        sets["kitti_000134"] = kitti(root / "kitti_000134", cfg)
    if (root / "urbansound8k_samples" / "labels.csv").is_file():
        sets["urbansound8k"] = {"audio": urbansound(root / "urbansound8k_samples", cfg=cfg)}
    return sets


def modalities_of(sets: Dict[str, Dict[str, np.ndarray]]) -> List[str]:
    return sorted({m for s in sets.values() for m in s})
