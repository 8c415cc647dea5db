"""Training data writer: sharded .npz files of whole scenes in the docs/architecture.md format.

Scenes are planned up front from the seed (split, focus class, held-out combination), generated
one per task (in worker processes when asked) and written in plan order, so the bytes depend
only on the seed and the options, never on timing or the number of workers.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import resource
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core import preprocess as pp
from ..core.types import EVENT_HORIZONS, EVENT_TYPES, OBJECT_CLASSES
from . import events as events_mod
from .config import SimConfig
from .events import EventTimeline
from .runner import SceneRunner
from .scenarios import focus_scene
from .world import PREROLL, TAIL

#: (class, event) pairs the train/val/test splits never contain; the heldout split has only these
HELDOUT_COMBINATIONS: List[Tuple[str, str]] = [
    ("dog", "crossing_path"),
    ("person", "rough_ground"),
    ("bicycle", "collision_imminent"),
    ("alarm", "robot_impact"),
]
MAX_ATTEMPTS = 200  # scene draws per planned scene before giving up on its constraints


@dataclass
class DatasetConfig:
    """What `mmfusion sim dataset` writes."""

    n: int = 1000  # total samples (frames) over all splits
    seed: int = 0  # everything is derived from it
    frames_per_scene: int = 40  # consecutive frames per scene (the last scene may be shorter)
    frame_step: float = 0.2  # seconds between frames
    scenes_per_shard: int = 8  # whole scenes per shard file
    val_fraction: float = 0.1  # of the non-heldout scenes
    test_fraction: float = 0.1
    heldout_fraction: float = 0.08  # of all scenes
    workers: int = 1  # processes generating scenes
    captions_per_sample: int = 3  # phrasings per sample
    lidar_sweeps: bool = True  # keep each frame's LiDAR boxes (core/perception.py clustering) and gyro yaw rate:
    #                            `mmfusion eval` replays the node's track forecasts (core/kinematic_events.py) over them
    sweep_step: float = 0.1  # s between kept sweeps (a 10 Hz LiDAR, as the node tracks it): frame_step / sweep_step
    #                          sweeps per frame, the frame's own the last
    preroll_sweeps: int = 10  # sweeps detected before a scene's first frame, so its tracks are confirmed by then
    #                           (as on a node that has been running)
    ego_follows_class: bool = False  # True: each class its own robot reaction (datasets before the fusion issue;
    #                                  it lets the IMU learn the class, a shortcut). False: one menu for all classes
    view_variety: float = 0.0  # train split only: share of scenes whose focus object stands anywhere in view (2-9 m,
    #                          +-28 deg, any heading; sim/scenarios.py focus_scene), where otherwise only held-out event
    #                          pairs bring some classes. Off by default: at 0.3 it cost the camera 5-10 points on DS21
    #                          heldout over two seeds (bicycles up, people and dogs down; MODEL_CARD.md "Revision 6")
    sim: SimConfig = field(default_factory=SimConfig)


@dataclass
class ScenePlan:
    scene_id: int
    split: str
    focus: str
    require: Optional[str]  # the held-out event the scene must contain
    frames: int


def plan_scenes(cfg: DatasetConfig) -> List[ScenePlan]:
    """Split, focus class and frame count of every scene; classes balanced within each split."""
    if cfg.n < 1:
        raise ValueError(f"--n must be >= 1, got {cfg.n}")
    if not 0.0 < cfg.sweep_step <= cfg.frame_step:
        raise ValueError(f"sweep_step must be in (0, frame_step], got {cfg.sweep_step!r}")
    if not 0.0 <= cfg.view_variety <= 1.0:
        raise ValueError(f"view_variety must be in [0, 1], got {cfg.view_variety!r}")
    if not isinstance(cfg.preroll_sweeps, int) or cfg.preroll_sweeps < 0:
        raise ValueError(f"preroll_sweeps must be an integer >= 0, got {cfg.preroll_sweeps!r}")
    F = cfg.frames_per_scene
    n_scenes = math.ceil(cfg.n / F)
    frames = [F] * n_scenes
    frames[-1] = cfg.n - F * (n_scenes - 1)
    rng = np.random.default_rng([cfg.seed, 1])
    # every split gets at least one scene once there are enough scenes to go round
    n_held = max(1, int(round(cfg.heldout_fraction * n_scenes))) if n_scenes >= 4 and cfg.heldout_fraction > 0 else 0
    rest = n_scenes - n_held
    n_val = max(1, int(round(cfg.val_fraction * rest))) if rest >= 3 and cfg.val_fraction > 0 else 0
    n_test = max(1, int(round(cfg.test_fraction * rest))) if rest >= 3 and cfg.test_fraction > 0 else 0
    splits = ["train"] * (rest - n_val - n_test) + ["val"] * n_val + ["test"] * n_test + ["heldout"] * n_held
    plans = []
    counters = {s: int(rng.integers(len(OBJECT_CLASSES))) for s in ("train", "val", "test")}
    class_order = rng.permutation(len(OBJECT_CLASSES))
    h = 0
    for sid, split in enumerate(splits):
        if split == "heldout":
            c, e = HELDOUT_COMBINATIONS[h % len(HELDOUT_COMBINATIONS)]
            h += 1
            plans.append(ScenePlan(sid, split, c, e, frames[sid]))
        else:
            c = OBJECT_CLASSES[class_order[counters[split] % len(OBJECT_CLASSES)]]
            counters[split] += 1
            plans.append(ScenePlan(sid, split, c, None, frames[sid]))
    return plans


def _scene_ok(ev: EventTimeline, plan: ScenePlan, seconds: float, frame_step: float) -> bool:
    span = (ev.t >= -PREROLL) & (ev.t < seconds + TAIL)
    active = ev.active[span].any(0)
    for c, e in HELDOUT_COMBINATIONS:
        if c == plan.focus and active[EVENT_TYPES.index(e)] and plan.require != e:
            return False
    # the held-out event must be on at one of the frames, not only in the pre-roll, the tail or between frames
    if plan.require is not None and not any(ev.now(k * frame_step)[EVENT_TYPES.index(plan.require)]
                                            for k in range(plan.frames)):
        return False
    return True


def generate_scene(plan: ScenePlan, cfg: DatasetConfig) -> Dict:
    """All samples of one scene as arrays plus their JSON side (captions, objects)."""
    seconds = plan.frames * cfg.frame_step
    sim = cfg.sim
    small = pp.DEFAULT.image_size
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([cfg.seed, 2, plan.scene_id, attempt])
        scene = focus_scene(rng, plan.focus, seconds, sim, cfg.ego_follows_class,
                            cfg.view_variety if plan.split == "train" else 0.0)
        scene.seed = cfg.seed
        if _scene_ok(events_mod.compute(scene), plan, seconds, cfg.frame_step):  # cheap: no audio or rendering yet
            break
    else:
        raise RuntimeError(f"scene {plan.scene_id}: no draw of class {plan.focus} met its event constraints "
                           f"in {MAX_ATTEMPTS} attempts")
    runner = SceneRunner(scene, seed=int(rng.integers(2**31)), cam_width=small, cam_height=small, nthreads=1)
    rng = np.random.default_rng([cfg.seed, 3, plan.scene_id])
    n = plan.frames
    C, E, H = len(OBJECT_CLASSES), len(EVENT_TYPES), len(EVENT_HORIZONS)
    shp = pp.DEFAULT.input_shapes()
    out = {
        "camera": np.zeros((n, small, small, 3), np.uint8),
        "lidar": np.zeros((n,) + shp["lidar"], np.float16),
        "audio": np.zeros((n,) + shp["audio"], np.float16),
        "imu": np.zeros((n,) + shp["imu"], np.float16),
        "scene_id": np.full(n, plan.scene_id, np.int32),
        "t": (np.arange(n) * cfg.frame_step).astype(np.float32),
        "class_id": np.full(n, OBJECT_CLASSES.index(plan.focus), np.int16),
        "classes_present": np.zeros((n, C), np.uint8),
        "sound_class": np.full(n, -1, np.int16),
        "events_now": np.zeros((n, E), np.uint8),
        "events_future": np.zeros((n, E, H), np.uint8),
        "time_to_onset": np.zeros((n, E), np.float32),
    }
    captions, objects, sweeps = [], [], []
    detect = _SweepDetector(runner) if cfg.lidar_sweeps else None
    if detect is not None:
        # pre-roll sweeps draw from their own stream: the frames' bytes do not depend on them
        pre_rng = np.random.default_rng([cfg.seed, 4, plan.scene_id])
        per_frame = max(1, int(round(cfg.frame_step / cfg.sweep_step)))  # sweeps per frame

        def between(t0: float, k: int) -> list:  # the k sweeps before time t0, sweep_step apart
            return [detect(t, runner.render(t, pre_rng, camera=False)["lidar"].points)
                    for t in t0 - cfg.sweep_step * np.arange(k, 0, -1)]
    for i in range(n):
        t = float(out["t"][i])
        r = runner.render(t, rng)
        cam, lid = r["camera"], r["lidar"]
        if detect is not None:
            sweeps.append(between(t, cfg.preroll_sweeps if i == 0 else per_frame - 1) + [detect(t, lid.points)])
        out["camera"][i] = cam.image  # rendered directly at model resolution
        out["lidar"][i] = pp.lidar_bev(lid.points[:, :4])
        out["audio"][i] = pp.log_mel(runner.audio_window(t, pp.DEFAULT.audio_seconds))
        out["imu"][i] = pp.imu_window(runner.imu_window(t, pp.DEFAULT.imu_seconds))
        seen = runner.seen(cam)
        out["classes_present"][i] = runner.classes_present(seen, t)
        out["sound_class"][i] = runner.sound_class(t)
        out["events_now"][i] = runner.events.now(t)
        out["events_future"][i] = runner.events.future(t)
        out["time_to_onset"][i] = runner.events.time_to_onset(t)
        captions.append(runner.captions(t, seen, rng, cfg.captions_per_sample))
        objects.append([o.to_dict() for o in runner.objects(t)])
    res = {"arrays": out, "captions": captions, "objects": objects, "scene": scene.name,
           "events": runner.events.intervals()}
    if detect is not None:
        res["sweeps"] = sweeps
    return res


#: what each LiDAR box of a dataset sweep holds, in order (the manifest repeats it)
SWEEP_BOX_FIELDS = ["x", "y", "z", "length", "width", "height", "yaw", "label", "score", "points"]


class _SweepDetector:
    """The node's LiDAR clustering on one simulated sweep -> [t, gyro yaw rate, boxes] (SWEEP_BOX_FIELDS),
    in the LiDAR frame and before tracking: the tracker runs where the boxes are replayed."""

    def __init__(self, runner: SceneRunner):
        from ..core.kinematic_events import KinematicEventConfig
        from ..core.perception import Perception
        self.perception = Perception()
        self.runner = runner
        self.yaw_window = KinematicEventConfig().yaw_rate_window  # s of gyro z averaged, as the pipeline does

    def __call__(self, t: float, points: np.ndarray) -> list:
        xyz, _, labels = self.perception.segment(points)
        boxes = [[*(round(float(v), 3) for v in o.center), *(round(float(v), 3) for v in o.size),
                  round(float(o.yaw), 4), o.label, round(float(o.score), 3), int(o.point_count)]
                 for o in self.perception.boxes(xyz, labels)]
        gz = self.runner.imu_window(t, self.yaw_window)[:, 5]
        return [round(float(t), 3), round(float(gz.mean()), 5) if len(gz) else None, boxes]


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed zip timestamps so equal data gives equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in arrays.items():
            info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(v), allow_pickle=False)
            zf.writestr(info, buf.getvalue(), compresslevel=1)


def _remove_previous(out: Path) -> None:
    """Delete the shards a previous dataset in `out` listed, so none of them outlives its manifest."""
    old = out / "manifest.json"
    if not old.is_file():
        return
    try:
        splits = json.loads(old.read_text()).get("splits", {})
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{old} exists and is not a dataset manifest; choose another --out") from None
    for files in splits.values():
        for f in files:
            for p in (out / f, (out / f).with_suffix(".json")):
                if p.parent == out and p.is_file():
                    p.unlink()
    old.unlink()


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _worker(args):
    plan, cfg = args
    return generate_scene(plan, cfg)


def _init_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_dataset(out: Path, cfg: DatasetConfig, progress: bool = True) -> Dict:
    """Generate and write the dataset; returns the manifest (also written to out/manifest.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_scenes(cfg)
    _remove_previous(out)
    # shards: consecutive scenes of one split, in plan order
    shards: List[Tuple[str, List[ScenePlan]]] = []
    for split in ("train", "val", "test", "heldout"):
        ps = [p for p in plans if p.split == split]
        for k in range(0, len(ps), cfg.scenes_per_shard):
            shards.append((split, ps[k:k + cfg.scenes_per_shard]))
    order = [p for _, ps in shards for p in ps]
    try:
        from tqdm import tqdm
        bar = tqdm(total=cfg.n, unit="sample", desc="sim dataset", disable=not progress)
    except ImportError:  # tqdm is a dependency; progress is cosmetic
        bar = None
    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    split_files: Dict[str, List[str]] = {"train": [], "val": [], "test": [], "heldout": []}
    scene_index = []
    pool = mp.get_context("fork").Pool(cfg.workers, initializer=_init_worker) if cfg.workers > 1 else None
    try:
        it = pool.imap(_worker, [(p, cfg) for p in order]) if pool else (generate_scene(p, cfg) for p in order)
        pos = 0
        counts = {s: 0 for s in split_files}
        for split, ps in shards:
            scenes = []
            for p in ps:
                res = next(it)
                assert order[pos].scene_id == p.scene_id
                pos += 1
                scenes.append(res)
                scene_index.append({"scene_id": p.scene_id, "split": split, "focus": p.focus, "scenario": res["scene"],
                                    "frames": p.frames, "events": res["events"]})
                if bar is not None:
                    bar.update(p.frames)
            name = f"{split}-{counts[split]}"
            counts[split] += 1
            arrays = {k: np.concatenate([s["arrays"][k] for s in scenes]) for k in scenes[0]["arrays"]}
            write_npz(out / f"{name}.npz", arrays)
            side = {"captions": [c for s in scenes for c in s["captions"]],
                    "objects": [o for s in scenes for o in s["objects"]]}
            if cfg.lidar_sweeps:  # per sample: the LiDAR sweeps since the previous sample, its own last
                side["sweeps"] = [w for s in scenes for w in s["sweeps"]]
            (out / f"{name}.json").write_text(json.dumps(side, separators=(",", ":")))
            split_files[split].append(f"{name}.npz")
    finally:
        if pool:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start
    cpu = _cpu_seconds() - cpu_start
    (out / "scenes.json").write_text(json.dumps(scene_index, indent=1))
    manifest = {
        "format_version": 1,
        "seed": cfg.seed,
        "n_samples": cfg.n,
        "frame_step": cfg.frame_step,
        "frames_per_scene": cfg.frames_per_scene,
        "preprocess": pp.DEFAULT.to_dict(),
        "classes": list(OBJECT_CLASSES),
        "event_types": list(EVENT_TYPES),
        "horizons": list(EVENT_HORIZONS),
        "splits": split_files,
        "split_samples": {s: int(sum(p.frames for p in plans if p.split == s)) for s in split_files},
        "heldout_combinations": [list(c) for c in HELDOUT_COMBINATIONS],
        "samples_per_second": round(cfg.n / elapsed, 2),
        "cpu_ms_per_sample": round(1000.0 * cpu / cfg.n, 1),  # all processes; independent of other load
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "workers": cfg.workers,
        "machine": f"{os.cpu_count()} CPU cores",
        "sim_config": cfg.sim.to_dict(),
        "ego_follows_class": cfg.ego_follows_class,
        "view_variety": cfg.view_variety,
        "sweeps": {"boxes": SWEEP_BOX_FIELDS, "preroll": cfg.preroll_sweeps, "step": cfg.sweep_step}
        if cfg.lidar_sweeps else None,
        "scene_index": "scenes.json",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
