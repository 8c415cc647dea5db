"""Sensor and world configuration of the simulator (dataclasses; `config/sim.yaml` mirrors them).

Frames: the simulated robot's `base_link` sits at the LiDAR's optical centre (x forward, y left,
z up), `lidar_height` metres above the ground, so LiDAR points and ground-truth boxes share one
frame. The camera's optical frame is x right, y down, z forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import yaml

from ..core.types import CameraIntrinsics


@dataclass
class CameraConfig:
    """Pinhole camera and its pose relative to the LiDAR (= base_link)."""

    width: int = 640  # image width, pixels
    height: int = 480  # image height, pixels
    fx: float = 500.0  # focal length x, pixels (about 65 deg horizontal field of view at 640 px)
    fy: float = 500.0  # focal length y, pixels
    cx: float = 320.0  # principal point x, pixels
    cy: float = 240.0  # principal point y, pixels
    translation: Tuple[float, float, float] = (0.10, 0.0, -0.15)  # camera centre in the LiDAR frame, metres
    rpy: Tuple[float, float, float] = (0.0, 0.02, 0.0)  # roll, pitch (down positive), yaw of the camera, radians
    noise_std: float = 3.0  # Gaussian pixel noise, in 0..255 units
    shadows: bool = True  # cast shadow rays towards the sun (about +40 % camera render time)
    rate: float = 15.0  # frames per second in bags
    frame_id: str = "camera_optical"  # frame of the image messages

    def intrinsics(self, width: Optional[int] = None, height: Optional[int] = None) -> CameraIntrinsics:
        """Intrinsics, optionally scaled to another resolution (as a resize of the full image would)."""
        w, h = width or self.width, height or self.height
        sx, sy = w / self.width, h / self.height
        K = np.array([[self.fx * sx, 0.0, (self.cx + 0.5) * sx - 0.5],
                      [0.0, self.fy * sy, (self.cy + 0.5) * sy - 0.5],
                      [0.0, 0.0, 1.0]])
        return CameraIntrinsics(width=w, height=h, K=K, frame_id=self.frame_id)

    def lidar_to_camera(self) -> np.ndarray:
        """(4,4) transform taking LiDAR-frame points to camera optical-frame points."""
        r, p, y = self.rpy
        # camera body (x fwd, y left, z up) rotated by yaw, pitch, roll in the LiDAR frame
        cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
        Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        R_body = Rz @ Ry @ Rx  # camera body -> LiDAR
        body_to_optical = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)
        R = body_to_optical @ R_body.T  # LiDAR -> optical
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = -R @ np.asarray(self.translation, float)
        return T


@dataclass
class LidarConfig:
    """Spinning multi-beam LiDAR."""

    beams: int = 32  # vertical channels (ring 0 = lowest)
    columns: int = 1024  # azimuth steps per revolution
    fov_up: float = 15.0  # highest beam elevation, degrees
    fov_down: float = -25.0  # lowest beam elevation, degrees
    max_range: float = 60.0  # returns beyond this are dropped, metres
    min_range: float = 0.3  # returns closer than this are dropped, metres
    range_noise: float = 0.02  # Gaussian range noise, metres
    dropout: float = 0.02  # probability that a return is lost
    rate: float = 10.0  # sweeps per second in bags
    frame_id: str = "base_link"  # frame of the cloud (the LiDAR's optical centre)


@dataclass
class AudioConfig:
    """Microphone on the robot."""

    rate: int = 16000  # samples per second
    frame_ms: int = 20  # samples per AudioFrame message, milliseconds
    ambient_level: float = 0.004  # RMS of ambient (wind/hum) noise, full scale 1.0
    reference_gain: float = 0.25  # source amplitude at 1 m before class loudness
    speed_of_sound: float = 343.0  # m/s, for propagation delay
    frame_id: str = "microphone"


@dataclass
class ImuConfig:
    """IMU on the robot (axes of base_link)."""

    rate: float = 200.0  # samples per second
    accel_noise: float = 0.03  # m/s^2 white-noise std per sample
    gyro_noise: float = 0.002  # rad/s white-noise std per sample
    accel_bias: float = 0.05  # m/s^2, std of the per-run constant bias
    gyro_bias: float = 0.003  # rad/s, std of the per-run constant bias
    frame_id: str = "imu_link"


@dataclass
class SimConfig:
    """The whole simulated robot."""

    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    imu: ImuConfig = field(default_factory=ImuConfig)
    lidar_height: float = 1.0  # LiDAR (= base_link) height above the ground, metres
    robot_length: float = 0.8  # ego footprint, metres (for time to collision and impacts)
    robot_width: float = 0.6
    ground_truth_rate: float = 10.0  # GroundTruth messages per second in bags

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists, as they come back from JSON or YAML)."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v
        return plain(asdict(self))


def _fill(cls, data: dict):
    """Build dataclass `cls` from a dict, rejecting unknown keys so typos are not silently ignored."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    defaults = cls()
    for k, v in data.items():
        cur = getattr(defaults, k)
        if is_dataclass(cur):
            if not isinstance(v, dict):
                raise ValueError(f"{cls.__name__}.{k} must be a mapping, got {v!r}")
            kwargs[k] = _fill(type(cur), v)
        elif isinstance(cur, tuple):
            if not isinstance(v, (list, tuple)) or len(v) != len(cur):
                raise ValueError(f"{cls.__name__}.{k} needs {len(cur)} values, got {v}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{cls.__name__}.{k} must be numbers, got {v}")
            kwargs[k] = tuple(float(x) for x in v)
        elif isinstance(cur, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{cls.__name__}.{k} must be true or false, got {v!r}")
            kwargs[k] = v
        elif isinstance(cur, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{cls.__name__}.{k} must be an integer, got {v!r}")
            kwargs[k] = v
        elif isinstance(cur, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(f"{cls.__name__}.{k} must be a finite number, got {v!r}")
            kwargs[k] = float(v)
        else:
            if not isinstance(v, str):
                raise ValueError(f"{cls.__name__}.{k} must be a string, got {v!r}")
            kwargs[k] = v
    return cls(**kwargs)


def load_config(path: Optional[str] = None) -> SimConfig:
    """SimConfig from a YAML file (top-level key `sim`, or the fields directly); defaults when None."""
    if path is None:
        return SimConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    data = data.get("sim", data)
    cfg = _fill(SimConfig, data)
    if cfg.lidar.beams < 1 or cfg.lidar.columns < 8 or cfg.camera.width < 8 or cfg.camera.height < 8:
        raise ValueError("sim config: sensor resolution too small")
    positive = {"camera.fx": cfg.camera.fx, "camera.fy": cfg.camera.fy, "camera.rate": cfg.camera.rate,
                "lidar.rate": cfg.lidar.rate, "lidar.max_range": cfg.lidar.max_range, "audio.rate": cfg.audio.rate,
                "audio.frame_ms": cfg.audio.frame_ms, "audio.speed_of_sound": cfg.audio.speed_of_sound,
                "imu.rate": cfg.imu.rate, "lidar_height": cfg.lidar_height, "ground_truth_rate": cfg.ground_truth_rate}
    bad = [k for k, v in positive.items() if not v > 0]
    nonneg = {"camera.noise_std": cfg.camera.noise_std, "lidar.range_noise": cfg.lidar.range_noise,
              "lidar.min_range": cfg.lidar.min_range, "audio.ambient_level": cfg.audio.ambient_level,
              "imu.accel_noise": cfg.imu.accel_noise, "imu.gyro_noise": cfg.imu.gyro_noise}
    bad += [k for k, v in nonneg.items() if v < 0]
    if not 0.0 <= cfg.lidar.dropout < 1.0:
        bad.append("lidar.dropout")
    if not cfg.lidar.fov_down < cfg.lidar.fov_up or not cfg.lidar.min_range < cfg.lidar.max_range:
        bad.append("lidar.fov_down/fov_up or min_range/max_range order")
    if bad:
        raise ValueError(f"sim config: out of range: {', '.join(bad)}")
    return cfg
