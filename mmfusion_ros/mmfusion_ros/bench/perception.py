"""Perception step timings (`mmfusion bench`): a 20k-point and a full 120k-point LiDAR sweep.

Sweeps are ray cast with open3d's RaycastingScene from a spinning multi-beam LiDAR over a street-like
scene (ground, optionally sloped; cars, people, poles and walls at random poses), so point density,
ground share and cluster count look like a real sweep rather than uniform noise. ``make_sweep`` is
also what the perception tests use for clouds with known objects.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import open3d as o3d

from ..core.perception import Perception, PerceptionConfig

#: object kind -> (length, width, height) in metres
KINDS = {"car": (4.3, 1.8, 1.5), "person": (0.6, 0.5, 1.75), "pole": (0.3, 0.3, 3.0), "wall": (12.0, 0.4, 2.5)}


@dataclass
class SceneBox:
    """A ground-truth box of a synthetic sweep (LiDAR frame, centre at half height)."""

    kind: str
    center: np.ndarray  # (3,)
    size: np.ndarray  # (3,) length, width, height
    yaw: float
    hits: int = 0  # LiDAR returns on this box in the last make_sweep that drew it


def ground_height(xy: np.ndarray, lidar_height: float, slope: float, slope_start: float) -> np.ndarray:
    """Ground z under (M,2) points: flat at -lidar_height, rising with ``slope`` beyond x = slope_start."""
    return -lidar_height + slope * np.maximum(np.asarray(xy)[..., 0] - slope_start, 0.0)


def make_scene_boxes(rng: np.random.Generator, n_cars: int, n_people: int, n_poles: int, n_walls: int,
                     max_range: float, lidar_height: float, slope: float, slope_start: float,
                     min_gap: float = 1.0) -> List[SceneBox]:
    """Random non-overlapping objects standing on the ground within ``max_range``."""
    boxes: List[SceneBox] = []
    for kind, n in (("wall", n_walls), ("car", n_cars), ("person", n_people), ("pole", n_poles)):
        for _ in range(n):
            size = np.array(KINDS[kind], float)
            for _try in range(100):
                r = rng.uniform(4.0, max_range)
                a = rng.uniform(-np.pi, np.pi)
                xy = np.array([r * np.cos(a), r * np.sin(a)])
                radius = 0.5 * np.hypot(size[0], size[1])
                if all(np.linalg.norm(xy - b.center[:2]) > radius + 0.5 * np.hypot(*b.size[:2]) + min_gap for b in boxes):
                    break
            else:
                continue
            z0 = float(ground_height(xy[None], lidar_height, slope, slope_start)[0])
            boxes.append(SceneBox(kind, np.array([xy[0], xy[1], z0 + size[2] / 2]), size, float(rng.uniform(-np.pi, np.pi))))
    return boxes


def make_sweep(
    beams: int = 64,
    columns: int = 2048,
    seed: int = 0,
    n_cars: int = 8,
    n_people: int = 12,
    n_poles: int = 6,
    n_walls: int = 2,
    slope: float = 0.0,
    slope_start: float = 5.0,
    lidar_height: float = 1.7,
    fov: Tuple[float, float] = (-24.9, 2.0),
    max_range: float = 60.0,
    noise: float = 0.01,
    boxes: Optional[List[SceneBox]] = None,
) -> Tuple[np.ndarray, List[SceneBox]]:
    """Ray-cast one sweep -> ((N,4) float32 x,y,z,intensity in the LiDAR frame, the scene's boxes)."""
    rng = np.random.default_rng(seed)
    if boxes is None:
        boxes = make_scene_boxes(rng, n_cars, n_people, n_poles, n_walls, max_range * 0.8, lidar_height, slope, slope_start)
    scene = o3d.t.geometry.RaycastingScene()
    # ground: a grid mesh following ground_height (piecewise planar, so 1 m cells represent it exactly)
    g = np.arange(-max_range - 5, max_range + 5.1, 1.0)
    X, Y = np.meshgrid(g, g, indexing="ij")
    Z = ground_height(np.stack([X, Y], -1), lidar_height, slope, slope_start)
    V = np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1).astype(np.float32)  # (G*G, 3)
    n = len(g)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    tris = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)]).astype(np.uint32)
    scene.add_triangles(o3d.core.Tensor(V), o3d.core.Tensor(tris))
    geometry_ids = []
    for b in boxes:
        m = o3d.geometry.TriangleMesh.create_box(*b.size)
        m.translate(-b.size / 2)
        m.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0, 0, b.yaw)), center=(0, 0, 0))
        m.translate(b.center)
        geometry_ids.append(scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m)))
    el = np.deg2rad(np.linspace(fov[0], fov[1], beams))
    az = np.linspace(-np.pi, np.pi, columns, endpoint=False)
    E, A = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)  # (R, 3)
    rays = np.concatenate([np.zeros_like(d), d], 1).astype(np.float32)  # (R, 6)
    hit = scene.cast_rays(o3d.core.Tensor(rays), nthreads=1)
    t = hit["t_hit"].numpy()  # (R,)
    ok = np.isfinite(t) & (t < max_range)
    gid = hit["geometry_ids"].numpy()[ok]  # (N,)
    for b, g in zip(boxes, geometry_ids):
        b.hits = int((gid == g).sum())
    rng_t = t[ok] + rng.normal(0, noise, ok.sum())
    pts = d[ok] * rng_t[:, None]  # (N, 3)
    inten = rng.uniform(0, 1, (len(pts), 1))
    return np.hstack([pts, inten]).astype(np.float32), boxes


def street_boxes(seed: int, lidar_height: float = 1.73) -> List[SceneBox]:
    """A KITTI-like street: rows of parked cars (0.7-3 m gaps) on both sides, people on the pavements
    behind them, facades, two cars in the lane ahead (seen end-on) and a cyclist."""
    rng = np.random.default_rng(seed)
    g = -lidar_height
    boxes: List[SceneBox] = []
    for side in (-1, 1):
        x = rng.uniform(3, 8)
        while x < 40:
            size = np.array([rng.uniform(3.8, 4.8), rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.7)])
            boxes.append(SceneBox("car", np.array([x + size[0] / 2, side * rng.uniform(4.0, 4.6), g + size[2] / 2]),
                                  size, float(rng.normal(0, 0.03))))
            x += size[0] + rng.uniform(0.7, 3.0) + (rng.uniform(5, 10) if rng.random() < 0.15 else 0.0)
        for _ in range(4):
            boxes.append(SceneBox("person", np.array([rng.uniform(5, 35), side * rng.uniform(6.2, 8.0), g + 0.875]),
                                  np.array(KINDS["person"]), float(rng.uniform(-3, 3))))
        boxes.append(SceneBox("wall", np.array([25.0, side * 10.5, g + 4.0]), np.array([60.0, 0.5, 8.0]), 0.0))
    for d in rng.uniform(8, 35, 2):
        boxes.append(SceneBox("car", np.array([d, rng.uniform(-1.0, 1.0), g + 0.75]), np.array([4.4, 1.8, 1.5]),
                              float(rng.normal(0, 0.05))))
    boxes.append(SceneBox("cyclist", np.array([rng.uniform(10, 30), rng.uniform(-2.5, 2.5), g + 0.9]),
                          np.array([1.8, 0.6, 1.8]), float(rng.normal(0, 0.1))))
    keep: List[SceneBox] = []
    for b in boxes:  # drop overlapping objects (walls overlap nothing that matters)
        if b.kind == "wall" or all(
            k.kind == "wall" or np.linalg.norm(b.center[:2] - k.center[:2])
            > 0.5 * (np.hypot(*b.size[:2]) + np.hypot(*k.size[:2])) + 0.3 for k in keep):
            keep.append(b)
    return keep


def street_recall(seeds: int = 8, max_distance: float = 40.0, match_radius: float = 1.0,
                  cfg: Optional[PerceptionConfig] = None) -> List[list]:
    """Recall per kind on ``street_boxes`` scenes seen by a 64 x 2048 LiDAR 1.73 m up (KITTI's)."""
    from scipy.optimize import linear_sum_assignment

    tot: dict = {}
    for seed in range(seeds):
        boxes = street_boxes(seed)
        pts, _ = make_sweep(beams=64, columns=2048, seed=seed, boxes=boxes, lidar_height=1.73, max_range=70)
        objs = Perception(cfg or PerceptionConfig()).process(pts, 0.0)
        gts = [b for b in boxes if b.kind != "wall" and np.hypot(*b.center[:2]) < max_distance and b.hits >= 10]
        matched = set()
        if gts and objs:
            cost = np.linalg.norm(np.array([b.center[:2] for b in gts])[:, None]
                                  - np.array([o.center[:2] for o in objs])[None], axis=2)  # (G, O)
            r, c = linear_sum_assignment(np.where(cost <= match_radius, cost, 1e6))
            matched = {i for i, j in zip(r, c) if cost[i, j] <= match_radius}
        for i, b in enumerate(gts):
            t = tot.setdefault(b.kind, [0, 0])
            t[0] += 1
            t[1] += int(i in matched)
    rows = [[k, v[0], v[1], f"{100 * v[1] / v[0]:.0f}%"] for k, v in sorted(tot.items())]
    n, m = sum(v[0] for v in tot.values()), sum(v[1] for v in tot.values())
    return rows + [["all", n, m, f"{100 * m / max(n, 1):.1f}%"]]


def _stage_stats(samples: List[dict], key: str) -> float:
    return float(np.median([s.get(key, 0.0) for s in samples]))


def sim_accuracy(scenarios: List[str], seconds: float = 6.0, step: float = 0.1, max_distance: float = 25.0,
                 match_radius: float = 1.0, cfg: Optional[PerceptionConfig] = None) -> Tuple[list, dict]:
    """Recall and velocity error of the perception step on simulator scenarios (ground truth known).

    Counted: ground-truth objects within ``max_distance`` hit by >= 5 LiDAR rays, matched one-to-one
    (Hungarian) to a box whose BEV centre is within ``match_radius``. Velocity errors are taken after
    the first second, once tracks have converged. Returns per-class rows and totals.
    """
    from scipy.optimize import linear_sum_assignment

    from ..sim.runner import SceneRunner
    from ..sim.scenarios import make_scenario

    per_class: dict = {}
    verr: List[float] = []
    for name in scenarios:
        runner = SceneRunner(make_scenario(name, seconds, 0), 0, 64, 48, nthreads=1)
        per = Perception(cfg or PerceptionConfig())
        rng = np.random.default_rng(0)
        for t in np.arange(0.5, seconds, step):
            sweep = runner.render(float(t), rng, camera=False, lidar=True)["lidar"]
            objs = per.process(sweep.points[:, :4], float(t))
            hits = np.bincount(sweep.object_ids[sweep.object_ids > 0])
            gts = [g for g in runner.objects(float(t)) if np.hypot(*g.center[:2]) <= max_distance
                   and g.track_id < len(hits) and hits[g.track_id] >= 5]
            matches = []
            if gts and objs:
                cost = np.linalg.norm(np.array([g.center[:2] for g in gts])[:, None]
                                      - np.array([o.center[:2] for o in objs])[None], axis=2)  # (G, O)
                r, c = linear_sum_assignment(np.where(cost <= match_radius, cost, 1e6))
                matches = [(i, j) for i, j in zip(r, c) if cost[i, j] <= match_radius]
            for g in gts:
                per_class.setdefault(g.cls, [0, 0])[0] += 1
            for i, j in matches:
                per_class[gts[i].cls][1] += 1
                if t >= 1.5:
                    verr.append(float(np.linalg.norm(objs[j].velocity[:2] - gts[i].velocity[:2])))
    total = [sum(v[0] for v in per_class.values()), sum(v[1] for v in per_class.values())]
    rows = [[k, v[0], v[1], f"{100 * v[1] / v[0]:.0f}%"] for k, v in sorted(per_class.items())]
    rows.append(["all", total[0], total[1], f"{100 * total[1] / max(total[0], 1):.1f}%"])
    return rows, {"velocity_error_p50": float(np.median(verr)) if verr else float("nan"),
                  "velocity_error_p90": float(np.percentile(verr, 90)) if verr else float("nan")}


SIM_SCENARIOS = ["person_crossing", "person_approaching", "car_passing", "street_mix", "bicycle_bell",
                 "rough_terrain", "dog_crossing", "office_chairs"]


def run(quick: bool = False) -> List[dict]:
    """Median and p99 perception time per sweep size, with per-stage medians."""
    from . import machine, pct, section

    iters = 10 if quick else 40
    rows = []
    cases = [("20k (32 beams)", dict(beams=32, columns=680), {}),
             ("120k (64 beams)", dict(beams=64, columns=1950), {}),
             ("120k, open3d DBSCAN clustering", dict(beams=64, columns=1950), {"cluster_method": "dbscan"})]
    stages = ["filter", "voxel", "ground", "cluster", "boxes", "camera", "tracking"]
    for name, kw, overrides in cases:
        sweeps = [make_sweep(seed=s, **kw)[0] for s in range(3)]
        per = Perception(PerceptionConfig(**overrides))
        for s in sweeps:  # warm-up
            per.process(s, 0.0)
        totals, cpu, samples = [], [], []
        for k in range(iters):
            t0, c0 = time.perf_counter(), time.process_time()
            objs = per.process(sweeps[k % len(sweeps)], 0.1 * (k + 1))
            totals.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
            samples.append(dict(per.timings_ms))
        p50 = pct(totals, 50)
        target = 30.0 if len(sweeps[0]) < 60000 else 80.0
        rows.append([name, int(np.mean([len(s) for s in sweeps])), len(objs), f"{p50:.1f}", f"{pct(totals, 99):.1f}",
                     f"{pct(cpu, 50):.1f}", f"{target:g}", f"{p50 / target:.2f}"]
                    + [f"{_stage_stats(samples, st):.1f}" for st in stages])
    m = machine()
    scen = SIM_SCENARIOS[:3] if quick else SIM_SCENARIOS
    acc_rows, vel = sim_accuracy(scen)
    accuracy = section(
        "Perception recall on simulator scenarios (BEV centre within 1 m)",
        ["class", "objects (frame x object)", "matched", "recall"],
        acc_rows,
        f"Scenarios {', '.join(scen)} (seed 0, 6 s, sweeps every 0.1 s, 32-beam simulated LiDAR); objects within "
        f"25 m hit by >= 5 rays. Tracked velocity error (after 1.5 s): p50 {vel['velocity_error_p50']:.2f} m/s, "
        f"p90 {vel['velocity_error_p90']:.2f} m/s. Real-data check: `mmfusion eval-kitti` (docs/perception.md).",
    )
    street = section(
        "Perception recall on synthetic KITTI-like streets (BEV centre within 1 m)",
        ["kind", "objects", "matched", "recall"],
        street_recall(seeds=3 if quick else 8),
        "bench/perception.py street_boxes: parked-car rows, people behind them, facades, cars ahead, a cyclist; "
        "64 x 2048 LiDAR 1.73 m up; objects within 40 m with >= 10 returns.",
    )
    return [accuracy, street, section(
        "Perception step per LiDAR sweep (ms)",
        ["sweep", "points", "objects", "p50", "p99", "CPU p50", "target p50", "p50/target"] + [f"{s} p50" for s in stages],
        rows,
        f"{iters} sweeps each, ray-cast street scenes (bench/perception.py make_sweep), PerceptionConfig defaults "
        f"(the last row: cluster_method dbscan, for comparison), "
        f"no camera labelling (the encoder call is timed in the model benchmarks). Wall-clock p50/p99 and "
        f"process CPU time p50 (CPU time does not grow when other processes share the cores; load average "
        f"{os.getloadavg()[0]:.1f} at the end). Stage columns are wall-clock medians. Machine: {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')}.",
    )]
