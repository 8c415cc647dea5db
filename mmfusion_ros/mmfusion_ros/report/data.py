"""Read a scenario bag (sensors + simulator ground truth) and a recorded output bag into arrays.

Both are ordinary rosbag2 bags read with rosbags (ros/bag_io.typestore knows mmfusion_msgs), so the
report can be rebuilt from any recording: `mmfusion demo`'s, or `mmfusion process`'s output bag.
Topics are found by message type, so remapped or namespaced recordings work too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.types import EVENT_TYPES, CameraIntrinsics, DetectedObject
from ..ros import conversions as conv
from .metrics import GTObject, Interval, intervals_from_samples

STATE_END = 2  # mmfusion_msgs/Event.STATE_END
SIDECAR = "sim_ground_truth.json"  # the simulator's ground-truth file inside the bag folder


def open_bag(bag: Path):
    """rosbags AnyReader on one bag (rosbag2 or ROS 1) that knows mmfusion_msgs; use as a context manager."""
    from rosbags.highlevel import AnyReader

    from ..ros.bag_io import typestore

    return AnyReader([Path(bag)], default_typestore=typestore())


def _yaw(q) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def _vec(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z], np.float64)


# ------------------------------------------------------------------------------------- scenario bag
@dataclass
class Scenario:
    """What the scenario bag says: ground truth over time, the camera model, the sensor time span."""

    gt_t: np.ndarray  # (G,) ground-truth stamps, seconds
    gt_objects: List[List[GTObject]]  # per stamp, in the robot's base frame
    gt_active: np.ndarray  # (G, E) bool, EVENT_TYPES order
    gt_captions: List[List[str]]  # per stamp, several phrasings
    camera: Optional[CameraIntrinsics]  # from the first camera_info
    t_start: float  # first sensor stamp
    t_end: float  # last sensor stamp
    topics: Dict[str, Tuple[str, int]]  # topic -> (type, message count)
    origin: float = 0.0  # bag stamp of scene time 0 (the sidecar's stamp_base; else t_start): plots count from it
    sidecar: Optional[dict] = None  # the simulator's sim_ground_truth.json next to the bag, when present
    T_cam_lidar: Optional[np.ndarray] = None  # (4,4) LiDAR -> camera optical frame, from the sidecar

    def intervals(self) -> Dict[str, List[Interval]]:
        """Ground-truth event intervals per type (bag stamps): the sidecar's 20 Hz intervals when present,
        else runs of the sampled active flags on sim/ground_truth."""
        if self.sidecar is not None and isinstance(self.sidecar.get("events"), list):
            out: Dict[str, List[Interval]] = {name: [] for name in EVENT_TYPES}
            for ev in self.sidecar["events"]:
                if ev.get("type") in out:
                    out[ev["type"]].append((self.origin + float(ev["onset"]), self.origin + float(ev["end"])))
            return out
        return {name: intervals_from_samples(self.gt_t, self.gt_active[:, e]) for e, name in enumerate(EVENT_TYPES)}

    def objects_at(self, t: np.ndarray, tolerance: float = 0.15) -> List[List[GTObject]]:
        """Ground-truth objects at the sample nearest each time ([] when none within `tolerance` s)."""
        out = []
        for x in np.asarray(t, np.float64):
            if not len(self.gt_t):
                out.append([])
                continue
            i = int(np.argmin(np.abs(self.gt_t - x)))
            out.append(self.gt_objects[i] if abs(self.gt_t[i] - x) <= tolerance else [])
        return out

    @property
    def hfov(self) -> float:
        """Camera horizontal field of view, radians (65 deg when the bag has no camera_info)."""
        if self.camera is None:
            return math.radians(65.0)
        return 2.0 * math.atan(self.camera.width / (2.0 * float(self.camera.K[0, 0])))


#: sensor streams whose stamps give the scenario's time span (small messages: cheap to deserialise)
SPAN_TYPES = ("sensor_msgs/msg/Imu", "mmfusion_msgs/msg/AudioFrame", "sensor_msgs/msg/CameraInfo")


def read_scenario(bag: Path) -> Scenario:
    """Ground truth (mmfusion_msgs/GroundTruth), camera_info and the sensor time span of a scenario bag."""
    gt_t, gt_obj, gt_act, gt_cap = [], [], [], []
    camera = None
    t0, t1 = math.inf, -math.inf
    with open_bag(bag) as r:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in r.connections}
        conns = [c for c in r.connections
                 if c.msgtype in ("mmfusion_msgs/msg/GroundTruth", "sensor_msgs/msg/CameraInfo")]
        for c, _, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, c.msgtype)
            if c.msgtype == "sensor_msgs/msg/CameraInfo":
                if camera is None:
                    camera = conv.camera_info_to_intrinsics(msg)
                continue
            gt_t.append(conv.header_stamp(msg))
            gt_obj.append([GTObject(o.class_name, _vec(o.pose.position), _vec(o.size), _yaw(o.pose.orientation),
                                    bool(o.sounding), int(o.track_id)) for o in msg.objects])
            gt_act.append([e in set(msg.active_events) for e in EVENT_TYPES])
            gt_cap.append(list(msg.captions))
        # the span comes from header stamps (log time may differ) of the small, high-rate streams
        small = [c for c in r.connections if c.msgtype in SPAN_TYPES]
        for c, _, raw in r.messages(connections=small):
            t = conv.header_stamp(r.deserialize(raw, c.msgtype))
            t0, t1 = min(t0, t), max(t1, t)
    if not gt_t:
        raise ValueError(f"{bag}: no mmfusion_msgs/GroundTruth messages (is this a simulator scenario bag?)")
    sidecar, origin, T = None, (float(t0) if math.isfinite(t0) else float(min(gt_t))), None
    side = Path(bag) / SIDECAR
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text())
            origin = float(sidecar.get("stamp_base", origin))
            m = (sidecar.get("frames") or {}).get("lidar_to_camera")
            T = np.asarray(m, np.float64).reshape(4, 4) if m is not None else None
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{side}: unreadable simulator sidecar: {e}") from e
    order = np.argsort(gt_t, kind="stable")
    return Scenario(
        gt_t=np.asarray(gt_t, np.float64)[order],
        gt_objects=[gt_obj[i] for i in order],
        gt_active=np.asarray(gt_act, bool).reshape(len(gt_t), len(EVENT_TYPES))[order],
        gt_captions=[gt_cap[i] for i in order],
        camera=camera,
        t_start=float(t0) if math.isfinite(t0) else float(gt_t[0]),
        t_end=float(t1) if math.isfinite(t1) else float(gt_t[-1]),
        topics=topics,
        origin=origin,
        sidecar=sidecar,
        T_cam_lidar=T,
    )


def sensor_frames(bag: Path, times: Sequence[float], lookahead: float = 0.05
                  ) -> Iterator[Tuple[float, Optional[np.ndarray], Optional[np.ndarray]]]:
    """For each time (increasing), the newest camera image (H,W,3) RGB and LiDAR cloud (N,4) stamped
    at most `lookahead` s after it (the collector's rule), streamed in one pass over the bag."""
    times = list(times)
    if not times:
        return
    img = cloud = None
    img_t = cloud_t = -math.inf
    k = 0
    with open_bag(bag) as r:
        conns = [c for c in r.connections if c.msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                                                           "sensor_msgs/msg/PointCloud2")]
        pending: List[Tuple[float, str, object]] = []
        for c, _, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, c.msgtype)
            st = conv.header_stamp(msg)
            # emit every requested time whose window closed before this message's stamp
            while k < len(times) and st > times[k] + lookahead:
                yield times[k], img, cloud
                k += 1
            if k >= len(times):
                return
            try:
                if c.msgtype == "sensor_msgs/msg/PointCloud2":
                    if st >= cloud_t:
                        cloud, cloud_t = conv.pointcloud2_to_xyzi(msg), st
                elif st >= img_t:
                    img = conv.image_to_rgb(msg) if c.msgtype.endswith("/Image") else conv.compressed_to_rgb(msg)
                    img_t = st
            except conv.ConversionError:
                continue  # the node rejected it too; the video shows the previous one
        while k < len(times):
            yield times[k], img, cloud
            k += 1


# --------------------------------------------------------------------------------------- outputs bag
@dataclass
class OutputFrame:
    """One FusedPerception as recorded."""

    stamp: float  # frame time (sim clock)
    recv: float  # wall-clock receive time (bag log time), seconds; = stamp for offline bags
    present: List[str]
    labels: List[Tuple[str, float]]
    objects: List[DetectedObject]
    inference_ms: float
    familiarity: Dict[str, float] = field(default_factory=dict)  # assessed present modality -> [0,1]
    used: List[str] = field(default_factory=list)  # modalities the learned claims rested on


@dataclass
class Outputs:
    frames: List[OutputFrame]
    captions: List[Tuple[float, float, str, float]]  # (stamp, recv, text, confidence)
    events: List[Tuple[float, List[dict]]]  # (stamp, [{type, probability, horizon, state, track_id, time_to_event}])
    markers: int  # MarkerArray messages
    clock: np.ndarray  # (C, 2) receive time, /clock value (seconds); empty for offline bags
    pipeline: Dict[str, str] = field(default_factory=dict)  # newest pipeline diagnostics values
    event_scores: Dict[float, Dict[str, float]] = field(default_factory=dict)  # stamp -> {type: raw prob, max over horizons}
    unobservable: Dict[str, int] = field(default_factory=dict)  # event type -> event arrays that reported it unobservable

    @property
    def stamps(self) -> np.ndarray:
        return np.array([f.stamp for f in self.frames], np.float64)

    def event_matrix(self, times: np.ndarray, event_types: Sequence[str] = EVENT_TYPES) -> Tuple[np.ndarray, np.ndarray]:
        """(F,E) probability and (F,E) flagged (started/ongoing) at the EventArray stamped at each time
        (within 1 ms). The probability is the head's raw output (max over horizons) where the message
        carries it, else the flagged event's probability (0 when absent or ended)."""
        idx = {n: i for i, n in enumerate(event_types)}
        by_stamp = {round(s, 3): evs for s, evs in self.events}
        P = np.zeros((len(times), len(event_types)))
        A = np.zeros((len(times), len(event_types)), bool)
        for f, t in enumerate(times):
            for name, p in self.event_scores.get(round(float(t), 3), {}).items():
                if name in idx:  # the head's raw output, published whether flagged or not
                    P[f, idx[name]] = p
            for e in by_stamp.get(round(float(t), 3), []):
                i = idx.get(e["type"])
                if i is None or e["state"] == STATE_END:
                    continue
                P[f, i] = max(P[f, i], e["probability"])
                A[f, i] = True
        return P, A

    def caption_at(self, t: float) -> Optional[Tuple[str, float]]:
        """Newest caption stamped at or before t."""
        best = None
        for s, _, text, conf in self.captions:
            if s <= t + 1e-6 and (best is None or s >= best[0]):
                best = (s, text, conf)
        return (best[1], best[2]) if best else None


def _detected(o) -> DetectedObject:
    return DetectedObject(center=_vec(o.pose.position), size=_vec(o.size), yaw=_yaw(o.pose.orientation),
                          label=str(o.label), score=float(o.score), label_from_camera=bool(o.label_from_camera),
                          point_count=int(o.point_count), track_id=int(o.track_id), velocity=_vec(o.velocity))


def read_outputs(bag: Path) -> Outputs:
    """FusedPerception, Caption, EventArray, MarkerArray, /diagnostics and /clock of a recording."""
    frames, captions, events, clock = [], [], [], []
    event_scores: Dict[float, Dict[str, float]] = {}
    unobservable: Dict[str, int] = {}
    markers = 0
    pipeline: Dict[str, str] = {}
    with open_bag(bag) as r:
        for c, log_ns, raw in r.messages():
            t_log = log_ns * 1e-9
            if c.msgtype == "visualization_msgs/msg/MarkerArray":
                markers += 1
                continue
            msg = r.deserialize(raw, c.msgtype)
            if c.msgtype == "mmfusion_msgs/msg/FusedPerception":
                fam = np.asarray(getattr(msg, "modality_familiarity", []), np.float32)  # (4,) -1 = not assessed
                frames.append(OutputFrame(conv.header_stamp(msg), t_log, list(msg.present_modalities),
                                          [(str(l.label), float(l.score)) for l in msg.labels],
                                          [_detected(o) for o in msg.objects], float(msg.inference_ms),
                                          {str(m): float(v) for m, v in zip(msg.modality_names, fam)
                                           if m in msg.present_modalities and v >= 0},
                                          list(getattr(msg, "modalities_used", []))))
            elif c.msgtype == "mmfusion_msgs/msg/Caption":
                captions.append((conv.header_stamp(msg), t_log, str(msg.text), float(msg.confidence)))
            elif c.msgtype == "mmfusion_msgs/msg/EventArray":
                events.append((conv.header_stamp(msg), [
                    {"type": e.type, "probability": float(e.probability), "horizon": float(e.horizon),
                     "state": int(e.state), "track_id": int(e.track_id), "time_to_event": float(e.time_to_event)}
                    for e in msg.events]))
                n_h = len(getattr(msg, "horizons", []))
                if n_h and len(msg.types):
                    probs = np.asarray(msg.probabilities, np.float32).reshape(len(msg.types), n_h)  # (E, H)
                    probs = np.nan_to_num(probs, nan=0.0)  # NaN = unobservable: no evidence either way
                    event_scores[round(conv.header_stamp(msg), 3)] = {
                        str(k): float(v) for k, v in zip(msg.types, probs.max(axis=1))}
                for k in getattr(msg, "unobservable", []):
                    unobservable[str(k)] = unobservable.get(str(k), 0) + 1
            elif c.msgtype == "rosgraph_msgs/msg/Clock":
                clock.append((t_log, msg.clock.sec + msg.clock.nanosec * 1e-9))
            elif c.msgtype == "diagnostic_msgs/msg/DiagnosticArray":
                for st in msg.status:
                    if st.name.endswith(": pipeline"):
                        pipeline = {kv.key: kv.value for kv in st.values}
    frames.sort(key=lambda f: f.stamp)
    captions.sort(key=lambda c: c[0])
    events.sort(key=lambda e: e[0])
    return Outputs(frames, captions, events, markers, np.asarray(clock, np.float64).reshape(-1, 2), pipeline,
                   event_scores, unobservable)
