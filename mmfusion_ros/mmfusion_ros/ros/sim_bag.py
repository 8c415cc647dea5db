"""The simulated robot's sensors as a rosbag2 bag: message builders and the writer behind `mmfusion sim`.

Bag I/O, so it lives with the other bag code in ros/; written with rosbags (no rclpy needed), on the
topics and types of ros/inputs.py, so a simulated bag feeds the node, replay and offline processing
unchanged. The scene is rendered by the caller's SceneRunner (ros/ does not import sim/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from mmfusion_ros.ros.inputs import INPUTS, SIM_EXTRA

#: bag time of scene t = 0, seconds (fixed so the same seed writes the same bytes)
STAMP_BASE = 1_735_689_600.0
#: kind -> (topic, type) of every topic written: the sensors from ros/inputs.py (the node's own table),
#: the ground truth and the static transforms
TOPICS: Dict[str, Tuple[str, str]] = {
    **{n: (INPUTS[n].topic, INPUTS[n].msgtype) for n in ("image", "camera_info", "lidar", "audio", "imu")},
    **SIM_EXTRA,
}


class SimMessages:
    """Builds rosbags messages of one type store (dataclasses from `typestore().types`) from the simulated
    sensors' arrays; `cfg` is the scene's sim config (camera, lidar, audio, imu sections)."""

    def __init__(self, store, cfg):
        self.T = store.types
        self.cfg = cfg

    def header(self, t: float, frame_id: str):
        ns = int(round((STAMP_BASE + t) * 1e9))
        return self.T["std_msgs/msg/Header"](stamp=self.T["builtin_interfaces/msg/Time"](sec=ns // 10**9,
                                             nanosec=ns % 10**9), frame_id=frame_id)

    def vec3(self, v):
        return self.T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def quat_yaw(self, yaw: float):
        return self.T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=float(np.sin(yaw / 2)), w=float(np.cos(yaw / 2)))

    def image(self, t: float, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        return self.T["sensor_msgs/msg/Image"](header=self.header(t, self.cfg.camera.frame_id), height=h, width=w,
                                               encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.reshape(-1))

    def camera_info(self, t: float):
        intr = self.cfg.camera.intrinsics()
        K = intr.K
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.T["sensor_msgs/msg/CameraInfo"](
            header=self.header(t, self.cfg.camera.frame_id), height=intr.height, width=intr.width,
            distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)

    def cloud(self, t: float, pts: np.ndarray):
        """(N,5) x,y,z,intensity,ring -> PointCloud2 (float32 x,y,z,intensity + uint16 ring, 20-byte points)."""
        PF = self.T["sensor_msgs/msg/PointField"]
        rec = np.zeros(len(pts), dtype=np.dtype({"names": ["x", "y", "z", "intensity", "ring"],
                                                 "formats": ["<f4", "<f4", "<f4", "<f4", "<u2"],
                                                 "offsets": [0, 4, 8, 12, 16], "itemsize": 20}))
        for k, name in enumerate(("x", "y", "z", "intensity")):
            rec[name] = pts[:, k]
        rec["ring"] = pts[:, 4].astype(np.uint16)
        fields = [PF(name=n, offset=o, datatype=7, count=1)  # FLOAT32
                  for n, o in (("x", 0), ("y", 4), ("z", 8), ("intensity", 12))]
        fields.append(PF(name="ring", offset=16, datatype=4, count=1))  # UINT16
        return self.T["sensor_msgs/msg/PointCloud2"](
            header=self.header(t, self.cfg.lidar.frame_id), height=1, width=len(pts), fields=fields,
            is_bigendian=False, point_step=20, row_step=20 * len(pts), data=rec.view(np.uint8).reshape(-1),
            is_dense=True)

    def audio(self, t: float, samples: np.ndarray):
        s16 = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
        return self.T["mmfusion_msgs/msg/AudioFrame"](header=self.header(t, self.cfg.audio.frame_id),
                                                      sample_rate=self.cfg.audio.rate, channels=1, encoding="S16LE",
                                                      data=s16.view(np.uint8).reshape(-1))

    def imu(self, t: float, row: np.ndarray):
        ic = self.cfg.imu
        return self.T["sensor_msgs/msg/Imu"](
            header=self.header(t, ic.frame_id),
            orientation=self.T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=np.array([-1.0] + [0.0] * 8),  # no orientation estimate
            angular_velocity=self.vec3(row[3:6]),
            angular_velocity_covariance=np.diag([ic.gyro_noise ** 2] * 3).reshape(-1),
            linear_acceleration=self.vec3(row[0:3]),
            linear_acceleration_covariance=np.diag([ic.accel_noise ** 2] * 3).reshape(-1))

    def ground_truth(self, t: float, objects, captions, active):
        GO = self.T["mmfusion_msgs/msg/GroundTruthObject"]
        Pose, Point = self.T["geometry_msgs/msg/Pose"], self.T["geometry_msgs/msg/Point"]
        objs = [GO(class_name=o.cls, track_id=o.track_id,
                   pose=Pose(position=Point(x=float(o.center[0]), y=float(o.center[1]), z=float(o.center[2])),
                             orientation=self.quat_yaw(o.yaw)),
                   size=self.vec3(o.size), velocity=self.vec3(o.velocity), sounding=o.sounding) for o in objects]
        return self.T["mmfusion_msgs/msg/GroundTruth"](header=self.header(t, self.cfg.lidar.frame_id), objects=objs,
                                                       captions=list(captions), active_events=list(active))

    def tf_static(self):
        """base_link -> camera_optical, imu_link, microphone (identity for the last two)."""
        TS, Tr = self.T["geometry_msgs/msg/TransformStamped"], self.T["geometry_msgs/msg/Transform"]
        T = np.linalg.inv(self.cfg.camera.lidar_to_camera())  # optical -> base_link
        q = _quat(T[:3, :3])
        out = [TS(header=self.header(0.0, self.cfg.lidar.frame_id), child_frame_id=self.cfg.camera.frame_id,
                  transform=Tr(translation=self.vec3(T[:3, 3]),
                               rotation=self.T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))]
        for child in (self.cfg.imu.frame_id, self.cfg.audio.frame_id):
            out.append(TS(header=self.header(0.0, self.cfg.lidar.frame_id), child_frame_id=child,
                          transform=Tr(translation=self.vec3([0, 0, 0]), rotation=self.quat_yaw(0.0))))
        return self.T["tf2_msgs/msg/TFMessage"](transforms=out)


def _quat(R: np.ndarray) -> tuple:
    """Rotation matrix -> (x, y, z, w) via scipy."""
    from scipy.spatial.transform import Rotation

    return tuple(float(v) for v in Rotation.from_matrix(R).as_quat())


def _schedule(seconds: float, rate: float) -> np.ndarray:
    return np.arange(int(np.ceil(seconds * rate - 1e-9))) / rate


_BAG_RUNNER = None  # the scene runner forked worker processes render from (set before the pool starts)


def _render_task(task):
    """(kind, index, t, seed) -> rendered sensor; each frame has its own random stream, so the
    bytes do not depend on how many processes render."""
    kind, i, t, seed = task
    rng = np.random.default_rng([seed, 21 if kind == "camera" else 22, i])
    r = _BAG_RUNNER.render(t, rng, camera=kind == "camera", lidar=kind == "lidar")
    return r[kind]


def write_scene_bag(runner, out: Path, seed: int, imu_rate: float, tf_static: bool = True, workers: int = 1) -> dict:
    """Write a simulated scene as a rosbag2 (mcap, version 9) plus `<out>/sim_ground_truth.json`.

    runner: the scene's SceneRunner (sim/runner.py, built by the caller: ros/ does not import sim/);
    imu_rate: the simulator's clock, at which runner.imu is sampled. workers > 1 renders camera and LiDAR
    frames in forked processes (do not use it from a process that already runs rclpy: forking DDS threads
    is unsafe); the output is the same either way.
    """
    import json
    import time

    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.core.types import EVENT_TYPES
    from mmfusion_ros.ros.bag_io import typestore

    t_start = time.perf_counter()
    store = typestore()
    scene = runner.scene
    cfg = scene.config
    M = SimMessages(store, cfg)
    global _BAG_RUNNER
    rng = np.random.default_rng([seed, 11])  # captions
    T = scene.duration
    # (time, order, kind, payload index) for every message, written in time order
    sched = []
    for t in _schedule(T, cfg.camera.rate):
        sched.append((t, 0, "camera"))
    for t in _schedule(T, cfg.lidar.rate):
        sched.append((t, 1, "lidar"))
    for t in _schedule(T, cfg.ground_truth_rate):
        sched.append((t, 2, "ground_truth"))
    for t in _schedule(T, 1000.0 / cfg.audio.frame_ms):
        sched.append((t, 3, "audio"))
    for t in _schedule(T, imu_rate):
        sched.append((t, 4, "imu"))
    sched.sort(key=lambda s: (round(s[0], 6), s[1]))
    frame_len = cfg.audio.rate * cfg.audio.frame_ms // 1000
    hfov = np.arctan2(cfg.camera.width / 2.0, cfg.camera.fx)
    n_msgs = 0
    last_cloud = None
    tasks, counters = [], {"camera": 0, "lidar": 0}
    for t, _, kind in sched:
        if kind in counters:
            tasks.append((kind, counters[kind], float(t), seed))
            counters[kind] += 1
    _BAG_RUNNER = runner
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers)
        frames = pool.imap(_render_task, tasks, chunksize=2)
    else:
        frames = map(_render_task, tasks)
    try:
        with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
            conns = {k: w.add_connection(topic, typ, typestore=store) for k, (topic, typ) in TOPICS.items()
                     if tf_static or k != "tf_static"}

            def put(kind, t, msg):
                nonlocal n_msgs
                topic, typ = TOPICS[kind]
                stamp_ns = int(round((STAMP_BASE + t) * 1e9))
                w.write(conns[kind], stamp_ns, store.serialize_cdr(msg, typ))
                n_msgs += 1

            if tf_static:
                put("tf_static", 0.0, M.tf_static())
            for t, _, kind in sched:
                if kind == "camera":
                    cam = next(frames)
                    put("image", t, M.image(t, cam.image))
                    put("camera_info", t, M.camera_info(t))
                elif kind == "lidar":
                    sweep = next(frames)
                    last_cloud = sweep
                    put("lidar", t, M.cloud(t, sweep.points))
                elif kind == "ground_truth":
                    seen = []
                    if last_cloud is not None:
                        p, ids = last_cloud.points, last_cloud.object_ids
                        in_view = (p[:, 0] > 0) & (np.abs(np.arctan2(p[:, 1], p[:, 0])) < hfov)
                        tid, cnt = np.unique(ids[in_view & (ids > 0)], return_counts=True)
                        seen = [int(k) for c, k in sorted(zip(-cnt, tid)) if -c >= 3]
                    active = [e for e, on in zip(EVENT_TYPES, runner.events.now(t)) if on]
                    put("ground_truth", t, M.ground_truth(t, runner.objects(t), runner.captions(t, seen, rng), active))
                elif kind == "audio":
                    a = int(round((t - runner.audio_t0) * cfg.audio.rate))
                    put("audio", t, M.audio(t, runner.audio[a:a + frame_len]))
                else:
                    i = int(scene.ego.index([t])[0])
                    put("imu", t, M.imu(t, runner.imu[i]))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _BAG_RUNNER = None
    sidecar = {
        "scenario": scene.name, "seed": seed, "seconds": T, "stamp_base": STAMP_BASE,
        "description": scene.description,
        "events": runner.events.intervals(),
        "event_definitions": "mmfusion_ros/sim/events.py",
        "objects": [{"track_id": o.track_id, "class": o.cls, "size": [round(float(v), 3) for v in o.shape.size]}
                    for o in scene.objects],
        "topics": {k: v[0] for k, v in TOPICS.items() if tf_static or k != "tf_static"},
        "frames": {"cloud_and_ground_truth": cfg.lidar.frame_id, "camera": cfg.camera.frame_id,
                   "lidar_to_camera": cfg.camera.lidar_to_camera().round(6).tolist()},
        "config": cfg.to_dict(),
    }
    (Path(out) / "sim_ground_truth.json").write_text(json.dumps(sidecar, indent=1))
    return {"messages": n_msgs, "wall_seconds": time.perf_counter() - t_start}
