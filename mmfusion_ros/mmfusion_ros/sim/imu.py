"""IMU readings (specific force and body rates) from the ego track, with bias and white noise."""

from __future__ import annotations

import numpy as np

from ..core.preprocess import GRAVITY
from .config import ImuConfig
from .world import CLOCK_HZ, EgoTrack


def synthesize(track: EgoTrack, cfg: ImuConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, 6) float32 ax, ay, az (m/s^2), gx, gy, gz (rad/s) on the track's 200 Hz clock.

    The accelerometer measures specific force R^T (a_world + g z_up); a robot at rest reads +9.81
    on z. Body rates use the small-angle approximation (roll and pitch stay within a few degrees).
    """
    if abs(cfg.rate - CLOCK_HZ) > 1e-6:
        raise ValueError(f"IMU rate must equal the sim clock ({CLOCK_HZ} Hz), got {cfg.rate}")
    dt = 1.0 / CLOCK_HZ
    yaw, roll, pitch = track.yaw, track.roll, track.pitch
    a_lat = track.v * track.w  # centripetal
    a_world = np.stack([track.a_long * np.cos(yaw) - a_lat * np.sin(yaw),
                        track.a_long * np.sin(yaw) + a_lat * np.cos(yaw),
                        np.gradient(np.gradient(track.z, dt), dt) + GRAVITY], 1)  # (N, 3)
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    # rows of R (body -> world) = Rz(yaw) Ry(pitch) Rx(roll); specific force in the body: R^T a
    R = np.stack([np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], 1),
                  np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], 1),
                  np.stack([-sp, cp * sr, cp * cr], 1)], 1)  # (N, 3, 3)
    acc = np.einsum("nji,nj->ni", R, a_world)  # (N, 3)
    gyro = np.stack([np.gradient(roll, dt), np.gradient(pitch, dt), track.w], 1)  # (N, 3)
    acc += rng.normal(0, cfg.accel_bias, 3) + rng.normal(0, cfg.accel_noise, acc.shape)
    gyro += rng.normal(0, cfg.gyro_bias, 3) + rng.normal(0, cfg.gyro_noise, gyro.shape)
    return np.concatenate([acc, gyro], 1).astype(np.float32)
