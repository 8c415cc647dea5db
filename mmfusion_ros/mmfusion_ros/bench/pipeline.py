"""Pipeline benchmarks: the fusion node's own overhead per fused frame (conversion, sync, message
building, excluding inference; target under 5 ms median) and the whole pipeline tick with the ONNX
Runtime backend, p50/p99.

The node overhead is measured on the node's real code path without DDS: rclpy messages built by
ros/conversions.py are converted, handed to the Collector, a frame is cut, and the outputs are built
by ros/messages.py / ros/markers.py and serialised to CDR (what rclpy's publish does first). One
"frame" of input is what a 10 Hz frame receives: one 640x480 image + camera_info, one LiDAR sweep,
0.1 s of 16 kHz audio and 20 IMU messages (200 Hz).
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, List

import numpy as np

from . import bench_model_dir, fmt, model_label, pct, section

FRAME_HZ = 10.0
IMU_HZ = 200.0
AUDIO_RATE = 16000
TARGET_MS = 5.0
N_OBJECTS = 10  # detected objects in the benchmark's output (markers and messages grow with them)


def synthetic_cloud(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,4) ground plane plus three box-shaped clusters, like a LiDAR sweep of a simple scene."""
    k = n // 10
    ground = np.c_[rng.uniform(-30, 30, (n - 3 * k, 2)), rng.normal(-1.7, 0.02, n - 3 * k)]
    boxes = [np.c_[rng.uniform(x - 0.4, x + 0.4, (k, 1)), rng.uniform(y - 0.4, y + 0.4, (k, 1)),
                   rng.uniform(-1.7, 0.1, (k, 1))] for x, y in ((6, 1), (10, -3), (15, 4))]
    xyz = np.concatenate([ground] + boxes).astype(np.float32)  # (n, 3)
    return np.c_[xyz, rng.uniform(0, 1, (len(xyz), 1)).astype(np.float32)]  # (n, 4)


def _input_messages(n_frames: int, n_points: int, seed: int = 0) -> List[Dict[str, list]]:
    """Per frame, the rclpy messages the node would receive in 1/FRAME_HZ s."""
    from mmfusion_ros.core.types import CameraIntrinsics
    from mmfusion_ros.ros import conversions as conv

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cloud = synthetic_cloud(n_points, rng)
    intr = CameraIntrinsics(640, 480, np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
    chunk = int(AUDIO_RATE / FRAME_HZ)
    imu_per_frame = int(IMU_HZ / FRAME_HZ)
    frames = []
    t0 = 1_700_000_000.0
    for f in range(n_frames):
        t = t0 + f / FRAME_HZ
        frames.append({
            "t": t,
            "image": [conv.rgb_to_image(img, stamp=t, frame_id="camera")],
            "camera_info": [conv.intrinsics_to_camera_info(intr, stamp=t)],
            "lidar": [conv.xyzi_to_pointcloud2(cloud, stamp=t, frame_id="lidar")],
            "audio": [conv.array_to_audio((0.1 * rng.standard_normal(chunk)).astype(np.float32), AUDIO_RATE,
                                          stamp=t - 1.0 / FRAME_HZ)],
            "imu": [conv.imu_to_msg(t - (imu_per_frame - 1 - i) / IMU_HZ, [0.1, 0.0, 9.81], [0.0, 0.0, 0.1])
                    for i in range(imu_per_frame)],
        })
    return frames


def node_overhead(quick: bool) -> dict:
    """Per fused frame: convert every message of the frame, collect, cut the frame, build + serialise outputs."""
    from rclpy.serialization import serialize_message

    from mmfusion_ros.core.sync import Collector, SyncConfig
    from mmfusion_ros.core.types import DetectedObject, Event, FusionResult
    from mmfusion_ros.ros import conversions as conv
    from mmfusion_ros.ros import messages as M

    try:
        from mmfusion_ros.ros.markers import MarkerArrayBuilder, rclpy_kit

        markers = MarkerArrayBuilder(rclpy_kit()).build
    except ImportError:
        markers = None
    n_points = 65536
    n = 40 if quick else 200
    warm = 5
    frames = _input_messages(n + warm, n_points)
    collector = Collector(SyncConfig(trigger="camera", delay_s=0.0, lookahead_s=0.0))
    rng = np.random.default_rng(1)
    emb = rng.standard_normal(384).astype(np.float32)
    emb /= np.linalg.norm(emb)
    # a busy scene's worth of output: objects (boxes, labels, velocity arrows) and events for the markers
    objects = [DetectedObject(center=rng.uniform(-10, 10, 3), size=np.array([0.6, 0.6, 1.7]), yaw=0.3 * k,
                              label="person", score=0.8, label_from_camera=k % 2 == 0, point_count=200,
                              track_id=k + 1, velocity=np.array([1.0, 0.2, 0.0], np.float32))
               for k in range(N_OBJECTS)]
    events = [Event(type="person_approaching", probability=0.7, horizon=1.0, state=1, time_to_event=0.75,
                    track_id=1), Event(type="crossing_path", probability=0.6, horizon=2.0, state=0)]
    stages = {k: [] for k in ("image", "lidar", "audio", "imu", "camera_info", "poll", "messages", "markers",
                              "serialise", "total")}  # key -> [(wall ms, cpu ms)]
    for i, fr in enumerate(frames):
        t_all = _now()
        lap: Dict[str, tuple] = {}
        t = t_all
        for m in fr["camera_info"]:
            collector.add_camera_info(conv.header_stamp(m), conv.camera_info_to_intrinsics(m))
        t = _lap(lap, "camera_info", t)
        for m in fr["imu"]:
            r = conv.imu_to_reading(m)
            collector.add_imu(r.stamp, r.accel, r.gyro)
        t = _lap(lap, "imu", t)
        for m in fr["audio"]:
            samples, rate = conv.audio_to_array(m)
            collector.add_audio(conv.header_stamp(m), samples, rate)
        t = _lap(lap, "audio", t)
        for m in fr["lidar"]:
            pts, _ = conv.pointcloud2_to_xyzi_counted(m)
            collector.add_lidar(conv.header_stamp(m), pts, m.header.frame_id)
        t = _lap(lap, "lidar", t)
        for m in fr["image"]:
            collector.add_image(conv.header_stamp(m), conv.image_to_rgb(m))
        t = _lap(lap, "image", t)
        out = collector.poll(fr["t"])
        t = _lap(lap, "poll", t)
        assert len(out) == 1 and all(out[0].present.values()), "the benchmark frame must hold every modality"
        f = out[0]
        result = FusionResult(stamp=f.stamp, present=[m for m, ok in f.present.items() if ok], embedding=emb,
                              modality_weights=np.full(4, 0.25, np.float32),
                              labels=[(f"label {k}", 0.2) for k in range(5)], caption="a person walking nearby",
                              caption_confidence=0.8, timings_ms={"inference": 1.0}, frame_id=f.frame_id,
                              objects=objects, events=events)
        msgs = [M.perception_msg(result), M.caption_msg(result), M.events_msg(result)]
        t = _lap(lap, "messages", t)
        if markers is not None:
            msgs.append(markers(result))
        t = _lap(lap, "markers", t)
        for m in msgs:
            serialize_message(m)
        _lap(lap, "serialise", t)
        _lap(lap, "total", t_all)
        if i >= warm:
            for k, v in lap.items():
                stages[k].append(v)
    names = {
        "image": "Image 640x480 rgb8 -> RGB + collect",
        "lidar": f"PointCloud2 {n_points} pts -> (N,4) + collect",
        "audio": "AudioFrame 0.1 s S16LE -> float + collect",
        "imu": f"{int(IMU_HZ / FRAME_HZ)} x Imu -> reading + collect",
        "camera_info": "CameraInfo -> intrinsics",
        "poll": "Collector.poll: cut the frame (1 s audio, 2 s IMU windows resampled)",
        "messages": f"FusedPerception ({N_OBJECTS} objects) + Caption + EventArray built",
        "markers": f"MarkerArray built ({N_OBJECTS} objects, 2 events)" + ("" if markers else
                                                                          " (ros/markers.py missing)"),
        "serialise": "CDR serialisation of the outputs (rclpy publish's first step)",
        "total": "node overhead per fused frame",
    }
    rows = []
    for k, label in names.items():
        wall = [w for w, _ in stages[k]]
        cpu = [c for _, c in stages[k]]
        row = [label, fmt(pct(wall, 50), 3), fmt(pct(wall, 99), 3), fmt(pct(cpu, 50), 3)]
        if k == "total":
            row.append(f"wall {'yes' if pct(wall, 50) < TARGET_MS else 'NO'}, "
                       f"CPU {'yes' if pct(cpu, 50) < TARGET_MS else 'NO'}")
        else:
            row.append("")
        rows.append(row)
    return section(
        "Fusion node overhead per fused frame, excluding inference (ms)",
        ["stage", "wall p50", "wall p99", "CPU p50", f"median < {TARGET_MS:g} ms"], rows,
        f"{n} frames after {warm} warm-up ones; one frame = what 1/{FRAME_HZ:g} s delivers: one image + "
        f"camera_info, one sweep, 0.1 s of audio, {int(IMU_HZ / FRAME_HZ)} IMU messages. Real rclpy messages "
        "through ros/conversions.py, core/sync.Collector, ros/messages.py, ros/markers.py; no DDS "
        "(the `graph` section measures the node over DDS). CPU = this thread's CPU time (time.thread_time): on "
        "a machine shared with other work the wall time also holds the waits for a core.")


def _now() -> tuple:
    """(wall, this thread's CPU) seconds: CPU time leaves out the waits a loaded machine adds."""
    return time.perf_counter(), time.thread_time()


def _lap(lap: Dict[str, tuple], key: str, t0: tuple) -> tuple:
    t1 = _now()
    lap[key] = ((t1[0] - t0[0]) * 1e3, (t1[1] - t0[1]) * 1e3)
    return t1


def pipeline_tick(quick: bool) -> dict:
    """core.Pipeline.process with the ONNX Runtime backend, all four modalities, realistic input sizes."""
    from mmfusion_ros.core.types import CameraIntrinsics, SensorFrame
    from mmfusion_ros.ros.pipeline_factory import PromptEmbedder, open_backend, open_pipeline, resolve_params

    model_dir = bench_model_dir()
    # the node's assembly (ros/pipeline_factory.py); ONNX Runtime with its own thread count, as these rows always ran
    params = {"backend.type": "onnxruntime", "backend.intra_op_threads": 0}
    backend = open_backend(model_dir, resolve_params(params))
    prompts = PromptEmbedder(model_dir).embed(resolve_params(params)["model.prompts"])  # (labels, (P, D)), once
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cloud = synthetic_cloud(65536, rng)
    intr = CameraIntrinsics(640, 480, np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
    T = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)  # lidar x fwd -> optical
    n = 20 if quick else 150
    rows = []
    full = dict(image=img, camera=intr, lidar=cloud)
    variants = [("all four modalities, perception on", full, True, None),
                ("all four modalities, perception off", full, False, None),
                ("IMU only (the Husky bag)", {}, False, None)]
    try:
        if quick:
            raise ImportError("--quick: no BLAS comparison")
        # numpy's BLAS threads fight over the cores on small matrices (log-mel, clustering): show the
        # same ticks with BLAS limited to one thread, what OPENBLAS_NUM_THREADS=1 gives a node
        from threadpoolctl import threadpool_limits

        variants += [(t + ", BLAS 1 thread", kw, perc, threadpool_limits) for t, kw, perc, _ in variants[:2]]
    except ImportError:
        pass
    for title, kw, perc, limits in variants:
        ctx = limits(limits=1, user_api="blas") if limits else contextlib.nullcontext()
        pipe = open_pipeline(model_dir, dict(params, **{"pipeline.caption_every_n": 5, "perception.enabled": perc}),
                             backend=backend, prompts=prompts, T_cam_lidar=T)
        res = []
        with ctx:
            for i in range(n + 5):
                f = SensorFrame(stamp=i / FRAME_HZ, imu=(rng.standard_normal((400, 6)) * 0.1).astype(np.float32),
                                audio=(0.1 * rng.standard_normal(AUDIO_RATE)).astype(np.float32) if kw else None,
                                **kw)
                r = pipe.process(f)
                if i >= 5:
                    res.append(r.timings_ms)
        tot = [r["total"] for r in res]
        cap = [r["total"] for r in res if not r.get("caption_reused")]
        reuse = [r["total"] for r in res if r.get("caption_reused")]
        stage = {k: pct([r.get(k, 0.0) for r in res], 50) for k in ("preprocess", "encode", "fuse", "events",
                                                                    "perception")}
        cap_ms = pct([r["caption"] for r in res if not r.get("caption_reused")], 50)
        rows.append([title, fmt(pct(tot, 50)), fmt(pct(tot, 99)), fmt(pct(cap, 50)), fmt(pct(reuse, 50)),
                     fmt(stage["preprocess"]), fmt(stage["encode"]), fmt(stage["fuse"]), fmt(cap_ms),
                     fmt(stage["events"]), fmt(stage["perception"]) if perc else "off"])
    backend.close()
    return section(
        "Pipeline tick with the ONNX Runtime backend (ms)",
        ["frame", "p50", "p99", "p50 caption decoded", "p50 caption reused", "preprocess", "encode", "fuse",
         "caption", "events", "perception"], rows,
        f"{n} ticks per row after 5 warm-up ones; caption decoded every 5th frame; model: "
        f"{model_label(model_dir)}; onnxruntime threads: default; numpy BLAS threads: default unless the row says 1. Camera 640x480, LiDAR 65,536 points "
        "(ground + 3 boxes), 1 s audio at 16 kHz, 2 s IMU at 200 Hz. Stage columns are medians.")


def run(quick: bool) -> List[dict]:
    return [node_overhead(quick), pipeline_tick(quick)]
