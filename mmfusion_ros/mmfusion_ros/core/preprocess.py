"""Turn raw sensor arrays into the fixed-size model inputs every backend expects.

These functions are the one definition of the model's input format: the simulator's dataset
writer, the trainer, the exporter and the live pipeline all call them, so a model never sees data
prepared differently from how it was trained. Everything here is numpy/OpenCV: TensorRT cannot run
an STFT, and the robot's runtime path must not need torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessConfig:
    """Input geometry of the model; changing any field needs a retrained model."""

    image_size: int = 128  # camera input is resized to image_size x image_size RGB
    image_resize: str = "squash"  # "squash": the whole frame to S x S (the simulator-trained encoders);
    #                               "shortest": shortest side to S, then a centre crop (OpenCLIP towers)
    image_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel mean of [0,1] RGB (ImageNet)
    image_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel std of [0,1] RGB (ImageNet)
    bev_range: float = 25.6  # LiDAR bird's-eye grid covers [-r, r] metres in x and y around the sensor
    bev_cells: int = 128  # grid cells per side (0.4 m at the defaults)
    bev_z_min: float = -2.0  # heights clipped to [z_min, z_max] metres in the LiDAR frame
    bev_z_max: float = 2.0
    audio_rate: int = 16000  # model audio sample rate, Hz
    audio_seconds: float = 1.0  # audio window length
    n_mels: int = 64  # mel bands
    n_fft: int = 512  # FFT size
    win_length: int = 400  # 25 ms window
    hop_length: int = 160  # 10 ms hop
    imu_rate: float = 200.0  # model IMU rate, Hz
    imu_seconds: float = 2.0  # IMU window length

    def validate(self) -> "PreprocessConfig":
        if self.image_resize not in IMAGE_RESIZE_MODES:
            raise ValueError(f"preprocess.image_resize: must be one of {IMAGE_RESIZE_MODES}, got {self.image_resize!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"preprocess.image_mean/std: three values each, std > 0; got {self.image_mean}, "
                             f"{self.image_std}")
        return self

    def to_dict(self) -> dict:
        """The fields as JSON writes and reads them (tuples as lists): dataset and bundle manifests."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) for v in [getattr(self, f.name)]}

    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_rate * self.audio_seconds))

    @property
    def audio_frames(self) -> int:
        return 1 + self.audio_samples // self.hop_length

    @property
    def imu_samples(self) -> int:
        return int(round(self.imu_rate * self.imu_seconds))

    def input_shapes(self) -> dict:
        """Per-modality model input shape without the batch dimension."""
        return {
            "camera": (3, self.image_size, self.image_size),
            "lidar": (BEV_CHANNELS, self.bev_cells, self.bev_cells),
            "audio": (1, self.n_mels, self.audio_frames),
            "imu": (6, self.imu_samples),
        }


IMAGE_RESIZE_MODES = ("squash", "shortest")
DEFAULT = PreprocessConfig()
BEV_CHANNELS = 4  # log point density, max height, mean height, mean intensity
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], np.float32)
GRAVITY = 9.80665


def image_resize(image: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (S,S,3) uint8 RGB at model resolution (the dataset stores this).

    "shortest" is OpenCLIP's Resize(S) + CenterCrop(S) done with OpenCV: area interpolation when shrinking
    (close to PIL's antialiased bicubic), bicubic when enlarging."""
    s = cfg.image_size
    h, w = image.shape[:2]
    if h == s and w == s:
        return image
    if cfg.image_resize == "squash":
        return cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
    scale = s / min(h, w)
    nh, nw = max(s, int(round(h * scale))), max(s, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    big = cv2.resize(image, (nw, nh), interpolation=interp)  # (nh, nw, 3), shortest side S
    top, left = (nh - s) // 2, (nw - s) // 2
    return np.ascontiguousarray(big[top:top + s, left:left + s])


def image_normalise(image_small: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(S,S,3) uint8 RGB -> (3,S,S) float32, normalised with the model's mean/std (ImageNet by default)."""
    mean, std = _mean_std(cfg.image_mean, cfg.image_std)
    x = image_small.astype(np.float32) * (1.0 / 255.0)  # (S, S, 3)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, S, S)


@lru_cache(maxsize=8)
def _mean_std(mean: tuple, std: tuple) -> tuple:
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def preprocess_image(image: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (3,S,S) float32 model input."""
    return image_normalise(image_resize(image, cfg), cfg)


def lidar_bev(points: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(N,>=3) x,y,z[,intensity] in the LiDAR frame -> (4,C,C) float32 bird's-eye-view grid.

    Written with numpy scatter-adds: open3d's voxel grids do not give per-cell statistics as dense
    images. Row index grows with x (forward), column with y (left); NaN points are ignored.
    """
    c = cfg.bev_cells
    grid = np.zeros((BEV_CHANNELS, c, c), np.float32)
    if points is None or len(points) == 0:
        return grid
    pts = np.asarray(points, np.float32)
    xyz = pts[:, :3]
    inten = pts[:, 3] if pts.shape[1] > 3 else np.zeros(len(pts), np.float32)
    cell = 2.0 * cfg.bev_range / c
    ix = np.floor((xyz[:, 0] + cfg.bev_range) / cell)
    iy = np.floor((xyz[:, 1] + cfg.bev_range) / cell)
    ok = np.isfinite(ix) & np.isfinite(iy) & np.isfinite(xyz[:, 2])
    ok &= (ix >= 0) & (ix < c) & (iy >= 0) & (iy < c)
    if not ok.any():
        return grid
    ix, iy = ix[ok].astype(np.int64), iy[ok].astype(np.int64)
    z = np.clip(xyz[ok, 2], cfg.bev_z_min, cfg.bev_z_max)
    zn = (z - cfg.bev_z_min) / (cfg.bev_z_max - cfg.bev_z_min)  # (M,) in [0, 1]
    it = np.nan_to_num(inten[ok], nan=0.0)
    it = np.clip(it / 255.0 if it.max(initial=0.0) > 1.5 else it, 0.0, 1.0)
    flat = ix * c + iy  # (M,)
    count = np.bincount(flat, minlength=c * c).astype(np.float32)
    zmax = np.zeros(c * c, np.float32)
    np.maximum.at(zmax, flat, zn)
    zsum = np.bincount(flat, weights=zn, minlength=c * c).astype(np.float32)
    isum = np.bincount(flat, weights=it, minlength=c * c).astype(np.float32)
    nz = count > 0
    grid[0] = (np.log1p(count) / np.log(64.0)).reshape(c, c)
    grid[1] = zmax.reshape(c, c)
    grid[2][nz.reshape(c, c)] = (zsum[nz] / count[nz])
    grid[3][nz.reshape(c, c)] = (isum[nz] / count[nz])
    return grid


@lru_cache(maxsize=4)
def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft//2+1) float32 HTK-style triangular mel filters (written here: no librosa)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(hz_to_mel(20.0), hz_to_mel(rate / 2.0), n_mels + 2)
    hz = mel_to_hz(mel_pts)
    fb = np.zeros((n_mels, len(freqs)), np.float32)
    for i in range(n_mels):
        lo, ce, hi = hz[i], hz[i + 1], hz[i + 2]
        up = (freqs - lo) / max(ce - lo, 1e-6)
        down = (hi - freqs) / max(hi - ce, 1e-6)
        fb[i] = np.maximum(0.0, np.minimum(up, down))
    return fb


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Keep the newest n samples along axis 0, left-padding with zeros when shorter."""
    if len(x) >= n:
        return x[len(x) - n:]
    pad = np.zeros((n - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([pad, x], axis=0)


def log_mel(audio: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(S,) float32 mono at cfg.audio_rate -> (1, n_mels, frames) float32 log-mel spectrogram."""
    x = fit_length(np.nan_to_num(np.asarray(audio, np.float32)), cfg.audio_samples)
    pad = cfg.n_fft // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = cfg.audio_frames
    idx = np.arange(cfg.n_fft)[None, :] + cfg.hop_length * np.arange(n_frames)[:, None]  # (F, n_fft)
    window = np.zeros(cfg.n_fft, np.float32)
    off = (cfg.n_fft - cfg.win_length) // 2
    window[off:off + cfg.win_length] = np.hanning(cfg.win_length).astype(np.float32)
    frames = x[idx] * window  # (F, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (F, n_fft//2+1)
    mel = power.astype(np.float32) @ mel_filterbank(cfg.audio_rate, cfg.n_fft, cfg.n_mels).T  # (F, M)
    logmel = np.log10(mel + 1e-6)  # (F, M), about -6 (silence) to +3
    out = (logmel.T + 3.0) / 3.0  # (M, F) roughly zero-centred
    return out[None].astype(np.float32)  # (1, M, F)


def imu_window(imu: np.ndarray, cfg: PreprocessConfig = DEFAULT) -> np.ndarray:
    """(T,6) accel m/s^2 + gyro rad/s at cfg.imu_rate -> (6, cfg.imu_samples) float32, scaled.

    Accelerations are divided by g and gyro rates are left in rad/s, so both are of order one.
    """
    x = fit_length(np.nan_to_num(np.asarray(imu, np.float32)), cfg.imu_samples)  # (T, 6)
    x = x.copy()
    x[:, :3] /= GRAVITY
    return np.ascontiguousarray(x.T)  # (6, T)


def resample(t: np.ndarray, values: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Linear resampling of (T,C) samples stamped t onto t_new (both seconds, t increasing)."""
    values = np.asarray(values, np.float32)
    if values.ndim == 1:
        return np.interp(t_new, t, values).astype(np.float32)
    return np.stack([np.interp(t_new, t, values[:, k]) for k in range(values.shape[1])], 1).astype(np.float32)


def audio_resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(S,) or (S,C) at rate_in -> mono (S',) float32 at rate_out (channel mean, polyphase via OpenCV-free interp)."""
    a = np.asarray(audio, np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    if rate_in == rate_out or len(a) == 0:
        return a
    n_out = int(round(len(a) * rate_out / rate_in))
    if rate_in > rate_out:
        # box low-pass before decimation so high frequencies do not alias into the mel bands
        k = int(np.ceil(rate_in / rate_out))
        a = np.convolve(a, np.full(k, 1.0 / k, np.float32), mode="same")
    t_in = np.arange(len(a)) / rate_in
    t_out = np.arange(n_out) / rate_out
    return np.interp(t_out, t_in, a).astype(np.float32)


def model_inputs(frame, cfg: PreprocessConfig = DEFAULT) -> dict:
    """SensorFrame -> {modality name: model input array without batch dim} for the present ones."""
    out = {}
    if frame.image is not None:
        out["camera"] = preprocess_image(frame.image, cfg)
    if frame.lidar is not None:
        out["lidar"] = lidar_bev(frame.lidar, cfg)
    if frame.audio is not None:
        a = audio_resample(frame.audio, frame.audio_rate, cfg.audio_rate)
        out["audio"] = log_mel(a, cfg)
    if frame.imu is not None:
        out["imu"] = imu_window(frame.imu, cfg)
    return out


def shapes(cfg: PreprocessConfig = DEFAULT) -> Tuple[tuple, ...]:
    s = cfg.input_shapes()
    return s["camera"], s["lidar"], s["audio"], s["imu"]
