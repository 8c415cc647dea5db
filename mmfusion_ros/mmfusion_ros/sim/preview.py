"""A picture of what the simulator produces: camera frames, LiDAR bird's-eye views, the audio
spectrogram and the IMU trace of one scenario (for docs/sim.md and a quick look after changes)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.preprocess import lidar_bev, mel_filterbank
from .config import SimConfig
from .runner import SceneRunner
from .scenarios import make_scenario


def bev_image(points: np.ndarray) -> np.ndarray:
    """(N,>=4) LiDAR points -> (C,C,3) float RGB: brightness from point density, hue from max height."""
    g = lidar_bev(points[:, :4])  # (4, C, C)
    import matplotlib

    rgb = matplotlib.colormaps["turbo"](g[1])[..., :3] * np.clip(g[0] * 1.5, 0, 1)[..., None]
    return rgb[::-1, ::-1]  # forward up, left on the left


def spectrogram(audio: np.ndarray, rate: int) -> np.ndarray:
    """(S,) -> (n_mels, frames) log-mel with 10 ms hop (same filterbank as the model's input)."""
    n_fft, hop = 512, 160
    win = np.hanning(400)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 400)[::hop] * win  # (F, 400)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2  # (F, n_fft//2+1)
    return np.log10(power @ mel_filterbank(rate, n_fft, 64).T + 1e-6).T


def write_preview(scenario: str, out: Path, seed: int = 0, seconds: float = 8.0,
                  times: Optional[Sequence[float]] = None, cfg: Optional[SimConfig] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    scene = make_scenario(scenario, seconds, seed, cfg)
    runner = SceneRunner(scene, seed=seed)
    times = list(times or [seconds * f for f in (0.2, 0.5, 0.8)])
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(12, 8.2), dpi=80)
    gs = fig.add_gridspec(3, len(times), height_ratios=[1.0, 1.0, 0.9], hspace=0.3, wspace=0.08)
    for k, t in enumerate(times):
        r = runner.render(t, rng)
        ax = fig.add_subplot(gs[0, k])
        ax.imshow(r["camera"].image)
        ax.set_title(f"camera t={t:.1f} s", fontsize=10)
        ax.axis("off")
        ax = fig.add_subplot(gs[1, k])
        ax.imshow(bev_image(r["lidar"].points), extent=[25.6, -25.6, -25.6, 25.6])
        for o in runner.objects(t):
            c, s = np.cos(o.yaw), np.sin(o.yaw)
            corners = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1], [1, 1]]) * o.size[:2] / 2
            xy = o.center[:2] + corners @ np.array([[c, s], [-s, c]])  # (5, 2) box outline in base_link
            ax.plot(xy[:, 1], xy[:, 0], color="w", lw=0.8)
            ax.text(o.center[1], o.center[0] + o.size[0] / 2 + 0.3, o.cls, color="w", fontsize=7, ha="center")
        ax.set_xlim(12, -12)
        ax.set_ylim(-3, 21)
        ax.set_title("LiDAR bird's-eye view (colour = height)", fontsize=9)
        ax.tick_params(labelsize=7)
    fs = scene.config.audio.rate
    a = runner.audio_window(seconds, seconds)
    ax = fig.add_subplot(gs[2, :2])
    ax.imshow(spectrogram(a, fs), origin="lower", aspect="auto", extent=[0, seconds, 0, 64], cmap="magma")
    for iv in runner.events.intervals():
        if iv["type"] in ("dog_barking", "alarm_sounding") and iv["end"] > 0 and iv["onset"] < seconds:
            ax.axvspan(max(iv["onset"], 0), min(iv["end"], seconds), 0.95, 1.0, color="c")
    ax.set_title("microphone: log-mel spectrogram (cyan: barking/alarm events)", fontsize=9)
    ax.set_xlabel("s", fontsize=8)
    ax.set_ylabel("mel band", fontsize=8)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[2, 2:])
    t_imu = scene.ego.t
    m = (t_imu >= 0) & (t_imu < seconds)
    for j, (lab, col) in enumerate(zip(["ax", "ay", "az - g"], ["C0", "C1", "C2"])):
        ax.plot(t_imu[m], runner.imu[m, j] - (9.80665 if j == 2 else 0), lw=0.6, color=col, label=lab)
    ax.plot(t_imu[m], runner.imu[m, 5] * 10, lw=1.0, color="k", label="gz x10")
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.set_title("IMU (m/s^2; yaw rate in rad/s x10)", fontsize=9)
    ax.set_xlabel("s", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.suptitle(f"mmfusion sim preview: scenario '{scenario}', seed {seed}", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    # a 256-colour palette keeps the PNG small enough for the docs (< 300 KB)
    Image.fromarray(img).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out
