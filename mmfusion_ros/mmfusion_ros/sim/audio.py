"""Microphone signal: a synthesised sound per object class, mixed by distance and delay, plus noise.

Each class's sound occupies its own part of the spectrum or has its own time structure, so an audio
encoder can tell them apart: car = 30-45 Hz engine harmonics, dog = 0.15 s barks near 500-700 Hz,
person = footsteps and formant babble (100-220 Hz voice), bicycle = decaying bell partials near
3-4 kHz, traffic cone = hollow knocks (350/900 Hz), box = 1.5-4 kHz scraping noise, chair = 1.8-2.6
kHz squeak chirps, door = low creak glide then a slam, alarm = steady 2.4-2.8 kHz square-wave beeps.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from .config import SimConfig
from .world import Scene, SimObject

#: relative source level per class (alarm loudest, chair quietest)
LOUDNESS: Dict[str, float] = {"person": 0.7, "dog": 1.0, "car": 1.0, "bicycle": 0.8, "traffic_cone": 0.8,
                              "box": 0.7, "chair": 0.6, "door": 0.9, "alarm": 1.2}


def _band(x: np.ndarray, lo: float, hi: float, fs: int, order: int = 2) -> np.ndarray:
    sos = butter(order, [lo, hi], btype="band", fs=fs, output="sos")
    return sosfilt(sos, x)


def _low(x: np.ndarray, f: float, fs: int) -> np.ndarray:
    return sosfilt(butter(2, f, btype="low", fs=fs, output="sos"), x)


def _resonator(x: np.ndarray, f: float, bw: float, fs: int) -> np.ndarray:
    """Two-pole resonance at f Hz with bandwidth bw Hz (a formant or a body mode)."""
    r = np.exp(-np.pi * bw / fs)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / fs), r * r], x)


def _gate(t: np.ndarray, intervals: List[Tuple[float, float]], ramp: float = 0.02) -> np.ndarray:
    g = np.zeros(len(t))
    for a, b in intervals:
        g = np.maximum(g, np.clip(np.minimum(t - a, b - t) / ramp, 0, 1))
    return g


def _onsets(rng: np.random.Generator, intervals, gap: Tuple[float, float], first: float = 0.05) -> List[float]:
    """Event start times inside the sounding intervals, spaced by random gaps."""
    out = []
    for a, b in intervals:
        s = a + rng.uniform(0, first)
        while s < b:
            out.append(s)
            s += rng.uniform(*gap)
    return out


def _place(sig: np.ndarray, t0: float, ev: np.ndarray, at: float, fs: int):
    i = int(round((at - t0) * fs))
    if i >= len(sig) or i + len(ev) <= 0:
        return
    a, b = max(i, 0), min(i + len(ev), len(sig))
    sig[a:b] += ev[a - i:b - i]


def car(t, iv, rng, fs):
    f0 = rng.uniform(30, 45) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t))
    ph = 2 * np.pi * np.cumsum(f0) / fs
    x = sum(np.sin(k * ph + rng.uniform(0, 6.28)) / k for k in range(1, 13))
    x = x + 0.6 * _low(rng.standard_normal(len(t)), 300, fs) * 4
    return x * _gate(t, iv, 0.3)


def dog(t, iv, rng, fs):
    x = np.zeros(len(t))
    for s in _onsets(rng, iv, (1.0, 1.8)):
        for j in range(rng.integers(2, 5)):
            d = rng.uniform(0.12, 0.2)
            tt = np.arange(int(d * fs)) / fs
            f = rng.uniform(480, 700) * (1.15 - 0.35 * tt / d)
            ph = 2 * np.pi * np.cumsum(f) / fs
            ev = sum(np.sin(k * ph) / k ** 0.7 for k in range(1, 7)) + 0.4 * rng.standard_normal(len(tt))
            env = np.minimum(tt / 0.01, 1) * np.exp(-tt / (0.4 * d))
            _place(x, t[0], ev * env * 1.8, s + j * rng.uniform(0.25, 0.35), fs)
    return _band(x, 300, 3500, fs)


def person(t, iv, rng, fs):
    g = _gate(t, iv, 0.1)
    x = np.zeros(len(t))
    step = rng.uniform(0.45, 0.56)
    for s in _onsets(rng, iv, (step, step + 0.02)):  # footsteps
        tt = np.arange(int(0.05 * fs)) / fs
        _place(x, t[0], 3.0 * rng.standard_normal(len(tt)) * np.exp(-tt / 0.012), s, fs)
    x = _band(x, 50, 400, fs)
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * 3.1 * t) + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    ph = np.cumsum(f0) / fs
    pulses = (np.diff(np.floor(ph), prepend=0) > 0).astype(float)  # glottal pulse train
    syll = np.clip(np.sin(2 * np.pi * rng.uniform(3.5, 5.0) * t + rng.uniform(0, 6)), 0, 1) ** 0.5
    talk = np.clip(np.sin(2 * np.pi * 0.23 * t + rng.uniform(0, 6)) + 0.4, 0, 1)  # phrases and pauses
    f1 = rng.uniform(500, 800)
    f2 = rng.uniform(1100, 2000)
    v = _resonator(pulses, f1, 90, fs) + 0.6 * _resonator(pulses, f2, 120, fs) + 0.3 * _resonator(pulses, 2600, 200, fs)
    v = v / (np.std(v) + 1e-9)
    return (x + 1.2 * v * syll * talk) * g


def bicycle(t, iv, rng, fs):
    x = np.zeros(len(t))
    f = rng.uniform(3000, 3500)
    for s in _onsets(rng, iv, (1.6, 2.6)):
        tt = np.arange(int(0.6 * fs)) / fs
        ring = sum(a * np.sin(2 * np.pi * f * r * tt) for a, r in ((1.0, 1.0), (0.5, 1.48), (0.3, 2.01)))
        ev = ring * np.exp(-tt / 0.18)
        _place(x, t[0], 2.5 * ev, s, fs)
        _place(x, t[0], 2.5 * ev, s + 0.22, fs)
    ticks = np.zeros(len(t))
    for s in _onsets(rng, iv, (0.09, 0.11)):  # freewheel ticking
        ticks[int((s - t[0]) * fs) % len(t)] = 1.0
    return x + 0.6 * _band(ticks, 4000, 7000, fs) * 8


def traffic_cone(t, iv, rng, fs):
    x = np.zeros(len(t))
    for s in _onsets(rng, iv, (0.45, 1.2)):
        tt = np.arange(int(0.12 * fs)) / fs
        ev = (np.sin(2 * np.pi * 350 * tt) + 0.7 * np.sin(2 * np.pi * 910 * tt)) * np.exp(-tt / 0.025)
        _place(x, t[0], 4.0 * ev, s, fs)
    return x


def box(t, iv, rng, fs):
    strokes = np.zeros(len(t))
    for s in _onsets(rng, iv, (0.8, 1.4)):
        d = rng.uniform(0.4, 0.8)
        a = int((s - t[0]) * fs)
        strokes[a:a + int(d * fs)] = 1.0
    strokes = _low(strokes, 20, fs)
    rough = 1 + 0.8 * np.sign(np.sin(2 * np.pi * rng.uniform(18, 30) * t))
    return 2.0 * _band(rng.standard_normal(len(t)), 1500, 4000, fs) * strokes * rough


def chair(t, iv, rng, fs):
    x = np.zeros(len(t))
    for s in _onsets(rng, iv, (0.6, 1.2)):
        d = rng.uniform(0.15, 0.3)
        tt = np.arange(int(d * fs)) / fs
        f = np.linspace(rng.uniform(1800, 2000), rng.uniform(2400, 2600), len(tt))
        ph = 2 * np.pi * np.cumsum(f) / fs
        ev = (np.sin(ph) + 0.3 * np.sin(2 * ph)) * np.sin(np.pi * tt / d)
        _place(x, t[0], 2.5 * ev, s, fs)
    return x


def door(t, iv, rng, fs):
    x = np.zeros(len(t))
    for s in _onsets(rng, iv, (2.0, 3.0)):
        d = rng.uniform(0.8, 1.3)
        tt = np.arange(int(d * fs)) / fs
        f = rng.uniform(30, 50) + 40 * tt / d
        ph = np.cumsum(f) / fs
        saw = 2 * (ph - np.floor(ph)) - 1
        creak = _resonator(saw, rng.uniform(600, 900), 80, fs) + _resonator(saw, 1200, 150, fs)
        creak = creak / (np.std(creak) + 1e-9) * np.sin(np.pi * tt / d)
        _place(x, t[0], creak, s, fs)
        ts = np.arange(int(0.35 * fs)) / fs
        click = rng.standard_normal(len(ts)) * np.exp(-ts / 0.005)
        slam = 3.0 * (np.sin(2 * np.pi * 80 * ts) + click) * np.exp(-ts / 0.08)
        _place(x, t[0], 2.5 * slam, s + d, fs)
    return x


def alarm(t, iv, rng, fs):
    f = rng.uniform(2400, 2800)
    period = rng.uniform(0.22, 0.3)
    on = (np.mod(t, period) < 0.6 * period).astype(float)
    sq = np.sign(np.sin(2 * np.pi * f * t))
    return 0.9 * _low(sq, 6000, fs) * on * _gate(t, iv, 0.01)


SYNTHS: Dict[str, Callable] = {"person": person, "dog": dog, "car": car, "bicycle": bicycle,
                               "traffic_cone": traffic_cone, "box": box, "chair": chair, "door": door, "alarm": alarm}


def source_signal(obj: SimObject, t: np.ndarray, fs: int) -> np.ndarray:
    """The object's dry sound on the time axis t (seconds), unit-ish RMS while sounding."""
    if not obj.sound:
        return np.zeros(len(t))
    rng = np.random.default_rng(obj.sound_seed)
    return SYNTHS[obj.cls](t, obj.sound, rng, fs)


def mix(scene: Scene, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """Microphone track of the whole scene: (S,) float32 in [-1, 1] and the time of sample 0."""
    cfg: SimConfig = scene.config
    fs = cfg.audio.rate
    t0 = float(scene.ego.t[0])
    n = int(round((scene.ego.t[-1] - t0) * fs))
    t = t0 + np.arange(n) / fs
    out = np.zeros(n)
    ct = scene.ego.t
    for o in scene.objects:
        if not o.sound:
            continue
        src = source_signal(o, t, fs)
        r_clock = scene.relative(o, ct)["range"]  # (N,) at 200 Hz
        r = np.interp(t, ct, r_clock)
        tau = t - r / cfg.audio.speed_of_sound  # emission time of what arrives now
        delayed = np.interp(tau, t, src, left=0.0)
        out += cfg.audio.reference_gain * LOUDNESS[o.cls] * o.loudness / np.maximum(r, 1.0) * delayed
    # the robot itself: drive rumble grows with speed, rattle on rough ground, thuds on impact
    v = np.interp(t, ct, np.abs(scene.ego.v))
    rough = np.interp(t, ct, scene.ego.rough.astype(float))
    out += 0.004 * v * _low(rng.standard_normal(n), 150, fs) * 3
    out += 0.02 * rough * np.clip(v, 0, 1.5) * _band(rng.standard_normal(n), 150, 900, fs)
    for ti, s in scene.ego.impacts:
        tt = np.arange(int(0.3 * fs)) / fs
        click = 0.5 * rng.standard_normal(len(tt)) * np.exp(-tt / 0.01)
        thud = (np.sin(2 * np.pi * 60 * tt) + click) * np.exp(-tt / 0.06)
        _place(out, t0, 0.5 * s * thud, ti, fs)
    # ambient: pink-ish noise (first-order low-passed white plus a little white)
    amb = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))
    amb = amb / (np.std(amb) + 1e-9) + 0.3 * rng.standard_normal(n)
    out += cfg.audio.ambient_level * amb
    return np.clip(out, -1.0, 1.0).astype(np.float32), t0


def window(track: np.ndarray, t0: float, t_end: float, seconds: float, fs: int) -> np.ndarray:
    """The newest `seconds` of the track ending at t_end, (S,) float32 (zero-padded before the start)."""
    b = int(round((t_end - t0) * fs))
    a = b - int(round(seconds * fs))
    if a >= 0:
        return track[a:b]
    return np.concatenate([np.zeros(-a, np.float32), track[:max(b, 0)]])


def sound_clock(scene: Scene) -> np.ndarray:
    """(N,) on the 200 Hz clock: index of the loudest sounding object at the robot, -1 when none."""
    ct = scene.ego.t
    best = np.full(len(ct), -1)
    best_level = np.full(len(ct), 0.05)  # below this level (20 m at loudness 1) a source counts as silent
    for k, o in enumerate(scene.objects):
        if not o.sound:
            continue
        level = LOUDNESS[o.cls] * o.loudness / np.maximum(scene.relative(o, ct)["range"], 1.0)
        on = o.sounding(ct) & (level > best_level)
        best[on] = k
        best_level[on] = level[on]
    return best
