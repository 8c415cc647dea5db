"""Simulator throughput: per-frame render cost, dataset samples per second, bag writing speed."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

from . import fmt, pct, section, time_calls


def _render_rows(quick: bool) -> list:
    from ..sim.runner import SceneRunner
    from ..sim.scenarios import make_scenario

    iters = 10 if quick else 40
    scene = make_scenario("street_mix", 6.0, seed=0)
    rows = []
    for label, w, h, cam, lid in (("camera 640x480 (bag)", None, None, True, False),
                                  ("camera 128x128 (dataset)", 128, 128, True, False),
                                  ("LiDAR 32x1024", 128, 128, False, True)):
        runner = SceneRunner(scene, seed=0, cam_width=w, cam_height=h, nthreads=1)
        rng = np.random.default_rng(0)
        ts = iter(np.linspace(0.5, 5.5, iters + 3))
        ms = time_calls(lambda: runner.render(float(next(ts)), rng, camera=cam, lidar=lid), iters)
        rows.append([label, fmt(pct(ms, 50)), fmt(pct(ms, 99))])
    return rows


def _dataset_rows(quick: bool) -> tuple:
    """Dataset speed with 1 and 2 workers; in a full run also linear-probe accuracies of the second."""
    from ..sim.dataset import DatasetConfig, write_dataset
    from ..sim.probes import run_probes

    n = 120 if quick else 2000
    rows, probes = [], []
    for workers in (1, 2):
        tmp = Path(tempfile.mkdtemp(prefix="mmfusion_bench_sim_"))
        try:
            m = write_dataset(tmp, DatasetConfig(n=n, seed=0, workers=workers), progress=False)
            size = sum(p.stat().st_size for p in tmp.iterdir()) / n / 1024
            rows.append([workers, n, fmt(m["samples_per_second"], 1), fmt(m["cpu_ms_per_sample"], 1), fmt(size, 0)])
            if workers == 2 and not quick:
                acc = run_probes(tmp)
                probes = [[k, fmt(v, 2), fmt(1.0 / len(m["classes"]), 2)] for k, v in acc.items()]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows, probes


def _bag_rows(quick: bool) -> list:
    from ..commands.sim import write_bag
    from ..sim.scenarios import make_scenario

    rows = []
    for name, seconds in (("street_mix", 2.0 if quick else 20.0),):
        tmp = Path(tempfile.mkdtemp(prefix="mmfusion_bench_bag_"))
        try:
            scene = make_scenario(name, seconds, seed=0)
            t0 = time.perf_counter()
            info = write_bag(scene, tmp / "bag", seed=0)
            wall = time.perf_counter() - t0
            mb = sum(p.stat().st_size for p in (tmp / "bag").iterdir()) / 2**20
            rows.append([name, fmt(seconds, 0), info["messages"], fmt(wall, 1), fmt(wall / seconds, 2), fmt(mb, 0)])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def run(quick: bool) -> List[dict]:
    dataset_rows, probe_rows = _dataset_rows(quick)
    out = [
        section("Simulator rendering per frame (sim/render.py, open3d RaycastingScene, 1 thread)",
                ["sensor", "p50 ms", "p99 ms"], _render_rows(quick),
                "street_mix scene (6 objects, buildings), one ray-cast scene build per frame."),
        section("Simulator dataset writing (`mmfusion sim dataset`)",
                ["workers", "samples", "samples/s", "CPU ms/sample", "KB/sample on disk"], dataset_rows,
                "Whole pipeline: scene planning, audio/IMU synthesis, rendering at 128x128 + 32x1024 LiDAR, "
                "lidar_bev / log_mel / imu_window, captions, compressed shards. Target: >= 20 samples/s."),
        section("Simulator bag writing (`mmfusion sim --scenario`)",
                ["scenario", "sim s", "messages", "wall s", "wall s per sim s", "MB"], _bag_rows(quick),
                "camera 640x480 rgb8 at 15 Hz, LiDAR 10 Hz, audio 50 Hz, IMU 200 Hz, ground truth 10 Hz, mcap."),
    ]
    if probe_rows:
        out.append(section("Simulator dataset learnability: linear probes (sim/probes.py)",
                           ["modality", "accuracy", "chance"], probe_rows,
                           "Ridge classifier of the focus class on simple features of the stored model inputs, "
                           "5-fold cross-validation over whole scenes. Camera: colour histogram around the "
                           "projected focus box; LiDAR: BEV statistics around it; audio: mean/std log-mel; "
                           "IMU: window mean/std/roughness. A lower bound on what a network can learn."))
    return out
