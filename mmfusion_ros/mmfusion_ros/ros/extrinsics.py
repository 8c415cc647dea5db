"""Camera-LiDAR extrinsics from TF (/tf_static, /tf), with the extrinsics YAML as the fallback.

tf2_ros (its Buffer and TransformListener) has no wheel here and is not a dependency, so this module
holds a small transform tree written by hand for what the node needs: it takes tf2_msgs/TFMessage
messages (rclpy objects live, rosbags dataclasses from a bag), keeps the newest transform of each
child frame (static ones from /tf_static, moving ones from /tf), and composes the chain between two
frames through their common ancestor. No interpolation in time: a sensor that moves relative to the
other gets the newest transform, which is what the fusion of one frame at a time needs.

`ExtrinsicsResolver` is what the node and `mmfusion process` use: per frame it looks up the transform
from the cloud's frame_id to the camera's frame_id, falls back to the YAML when the tree has no such
chain, and logs (once per change) which one it used. No rclpy here.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)


def quat_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> (3, 3) rotation matrix (normalised first; a zero quaternion raises)."""
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not n > 1e-12 or not math.isfinite(n):
        raise ValueError(f"quaternion ({x}, {y}, {z}, {w}) has no rotation (norm {n})")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def transform_to_matrix(tf: Any) -> np.ndarray:
    """geometry_msgs/Transform -> (4, 4): maps points of the child frame into the parent frame."""
    t, q = tf.translation, tf.rotation
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(float(q.x), float(q.y), float(q.z), float(q.w))
    T[:3, 3] = [float(t.x), float(t.y), float(t.z)]
    if not np.isfinite(T).all():
        raise ValueError("transform has non-finite values")
    return T


def _norm(frame: str) -> str:
    return str(frame or "").strip().lstrip("/")  # tf2 ignores a leading slash


class TransformTree:
    """The newest transform of each child frame; chains composed through the common ancestor."""

    def __init__(self):
        self._parent: Dict[str, Tuple[str, np.ndarray, bool, float]] = {}  # child -> (parent, T_parent_child, static, stamp)
        self.rejected = 0  # transforms that could not be read (zero quaternion, NaN)

    def add(self, msg: Any, static: bool) -> int:
        """A tf2_msgs/TFMessage; returns how many transforms were taken."""
        n = 0
        for ts in getattr(msg, "transforms", None) or ():
            parent, child = _norm(ts.header.frame_id), _norm(ts.child_frame_id)
            if not parent or not child or parent == child:
                self.rejected += 1
                continue
            try:
                T = transform_to_matrix(ts.transform)
            except (ValueError, AttributeError, TypeError):
                self.rejected += 1
                continue
            stamp = int(ts.header.stamp.sec) + int(ts.header.stamp.nanosec) * 1e-9
            old = self._parent.get(child)
            if old is not None and old[2] and not static:
                continue  # /tf does not override a static transform of the same child
            self._parent[child] = (parent, T, static, stamp)
            n += 1
        return n

    @property
    def frames(self) -> List[str]:
        names = set(self._parent)
        names.update(p for p, _, _, _ in self._parent.values())
        return sorted(names)

    def _to_root(self, frame: str) -> List[Tuple[str, np.ndarray, bool]]:
        """[(frame, T_parent_frame, static), ...] from `frame` up to its root (loop-safe)."""
        chain, seen = [], {frame}
        while frame in self._parent:
            parent, T, static, _ = self._parent[frame]
            chain.append((frame, T, static))
            if parent in seen:
                break
            seen.add(parent)
            frame = parent
        return chain

    def lookup(self, target: str, source: str) -> Optional[Tuple[np.ndarray, bool]]:
        """(4, 4) T_target_source (maps points of `source` into `target`) and whether every link is static;
        None when the two frames are not connected."""
        target, source = _norm(target), _norm(source)
        if target == source:
            return np.eye(4), True
        up_s = self._to_root(source)  # source -> ... -> root_s
        up_t = self._to_root(target)
        anc_s = [source] + [self._parent[f][0] for f, _, _ in up_s]  # frames from source up
        anc_t = [target] + [self._parent[f][0] for f, _, _ in up_t]
        common = next((f for f in anc_s if f in set(anc_t)), None)
        if common is None:
            return None
        T_common_source, static = np.eye(4), True
        for f, T, st in up_s[:anc_s.index(common)]:
            T_common_source = T @ T_common_source  # composed upwards: T_parent_child @ T_child_source
            static &= st
        T_common_target = np.eye(4)
        for f, T, st in up_t[:anc_t.index(common)]:
            T_common_target = T @ T_common_target
            static &= st
        return np.linalg.inv(T_common_target) @ T_common_source, static


class ExtrinsicsResolver:
    """T_cam_lidar per frame: TF between the cloud's and the camera's frame_id when the tree has it, else
    the YAML's; logs which it used whenever that changes (`source` is "tf_static", "tf", "yaml" or "none")."""

    def __init__(self, yaml_T: Optional[np.ndarray], yaml_path: str = "", use_tf: bool = True,
                 log_info: Optional[Callable[[str], None]] = None, log_warn: Optional[Callable[[str], None]] = None):
        self.tree = TransformTree()
        self.yaml_T = yaml_T
        self.yaml_path = str(yaml_path)
        self.use_tf = use_tf
        self._info = log_info or log.info
        self._warn = log_warn or log.warning
        self.source = "none"  # what the last resolve() used
        self._said: Optional[Tuple[str, ...]] = None  # (source, lidar frame, camera frame, frames known) last logged

    def add_tf(self, msg: Any, static: bool) -> int:
        return self.tree.add(msg, static)

    def resolve(self, lidar_frame: Optional[str], camera_frame: Optional[str]) -> Optional[np.ndarray]:
        """(4, 4) T_cam_lidar for points in `lidar_frame` and pixels of `camera_frame`, or None (no camera labels)."""
        found = None
        if self.use_tf and lidar_frame and camera_frame:
            found = self.tree.lookup(camera_frame, lidar_frame)
        if found is not None:
            T, static = found
            source = "tf_static" if static else "tf"
        else:
            T, source = self.yaml_T, ("yaml" if self.yaml_T is not None else "none")
        # said again when the reason changes: a TF tree that grows (late /tf_static) updates "frames known"
        key = (source, str(lidar_frame), str(camera_frame), "" if source.startswith("tf") else ",".join(self.tree.frames))
        if key != self._said:
            self._said = key
            self._say(source, lidar_frame, camera_frame)
        self.source = source
        return T

    def _say(self, source: str, lidar_frame: Optional[str], camera_frame: Optional[str]) -> None:
        pair = f"{lidar_frame} -> {camera_frame}"
        if source in ("tf_static", "tf"):
            self._info(f"extrinsics {pair}: from /{source}")
            return
        if not self.use_tf:
            why = "perception.extrinsics_from_tf is false"
        elif not lidar_frame or not camera_frame:
            why = "the cloud or the camera has no frame_id"
        else:
            known = self.tree.frames
            why = (f"TF has no transform between {lidar_frame} and {camera_frame} "
                   f"(frames known: {', '.join(known) if known else 'none'})")
        if source == "yaml":
            (self._warn if self.use_tf else self._info)(f"extrinsics {pair}: from {self.yaml_path or 'the YAML'}"
                                                        f" ({why})")
        else:
            self._warn(f"extrinsics {pair}: none, 3D objects are not labelled through the camera ({why})")


def bag_extrinsics(reader, connections: Iterable[Any], resolver: ExtrinsicsResolver,
                   lidar_topics: Iterable[str], camera_topics: Iterable[str]) -> Optional[np.ndarray]:
    """`mmfusion process`: read every /tf_static (and /tf) message of an open rosbags reader into the
    resolver's tree, and the frame_ids of the first cloud and the first camera message; -> T_cam_lidar."""
    conns = list(connections)
    tf_conns = [c for c in conns if c.msgtype == "tf2_msgs/msg/TFMessage"
                and c.topic.lstrip("/") in ("tf_static", "tf")]
    lidar_topics = {t.lstrip("/") for t in lidar_topics}
    camera_topics = {t.lstrip("/") for t in camera_topics}
    first: Dict[str, str] = {}
    if tf_conns:
        for conn, _, raw in reader.messages(connections=tf_conns):
            try:
                resolver.add_tf(reader.deserialize(raw, conn.msgtype), static=conn.topic.lstrip("/") == "tf_static")
            except Exception:  # noqa: BLE001 - one unreadable transform message does not cost the run
                resolver.tree.rejected += 1
    for kind, topics in (("lidar", lidar_topics), ("camera", camera_topics)):
        cs = [c for c in conns if c.topic.lstrip("/") in topics]
        if not cs:
            continue
        for conn, _, raw in reader.messages(connections=cs):
            try:
                fid = reader.deserialize(raw, conn.msgtype).header.frame_id
            except Exception:  # noqa: BLE001
                continue
            if fid:
                first[kind] = fid
                break
    return resolver.resolve(first.get("lidar"), first.get("camera"))


def apply_bag_tf(reader, routes: Dict[int, str], values: Dict[str, Any], pipe, explicit_yaml: bool = False) -> str:
    """`mmfusion process`: set pipe.T_cam_lidar from the bag's /tf_static (and /tf) between the frame_ids of
    its first cloud and first camera message, else keep the YAML's; returns the source used. An extrinsics
    file given on the command line (`explicit_yaml`) or perception.extrinsics_from_tf false keeps the YAML."""
    from mmfusion_ros.ros import params as P
    from mmfusion_ros.ros.pipeline_factory import objects_wanted

    if not objects_wanted(values):
        return "none"
    yaml_T = getattr(pipe, "T_cam_lidar", None)
    try:
        yaml_path = str(P.extrinsics_file(values["perception.extrinsics_file"])) if yaml_T is not None else ""
    except FileNotFoundError:
        yaml_path = ""
    if explicit_yaml or not values.get("perception.extrinsics_from_tf", True):
        log.info("extrinsics: from %s (%s)", yaml_path or "no file",
                 "given on the command line" if explicit_yaml else "perception.extrinsics_from_tf is false")
        return "yaml" if yaml_T is not None else "none"
    resolver = ExtrinsicsResolver(yaml_T, yaml_path, True)
    conns = list(reader.connections)
    lidar = [c for c in conns if routes.get(c.id) == "lidar"]
    camera = [c for c in conns if routes.get(c.id) in ("camera_info", "image", "compressed")]
    T = bag_extrinsics(reader, conns, resolver, [c.topic for c in lidar], [c.topic for c in camera])
    pipe.T_cam_lidar = T
    return resolver.source
