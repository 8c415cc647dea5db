"""FusionResult -> mmfusion_msgs messages (FusedPerception, Caption, EventArray): pure functions.

No node is needed to build a message, so these are tested without rclpy.init and shared by anything
that publishes pipeline results. float32[] fields are filled from numpy through array.array('f'):
rclpy stores an array.array of the right typecode as is, while a list is checked element by element
(`mmfusion bench`, section "fusion node messages", measures both).
"""

from __future__ import annotations

import array
import math
from typing import Iterable, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import Header

from mmfusion_msgs.msg import Caption, DetectedObject, Event, EventArray, FusedPerception, LabelScore
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, SENSOR_MODALITIES, FusionResult

#: All four sensor modality names in model order (FusedPerception.modality_names).
MODALITY_NAMES = [m.value for m in SENSOR_MODALITIES]


def float32_array(x: Iterable[float]) -> array.array:
    """numpy (or any sequence) -> array.array('f'), the form rclpy assigns to float32[] without a copy loop."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return out


def stamp_to_time(stamp: float) -> Time:
    """Seconds (float) -> builtin_interfaces/Time, rounded to the nearest nanosecond."""
    ns = int(round(stamp * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_stamp(t) -> float:
    """builtin_interfaces/Time -> seconds (float)."""
    return t.sec + t.nanosec * 1e-9


def make_header(stamp: float, frame_id: str) -> Header:
    return Header(stamp=stamp_to_time(stamp), frame_id=frame_id)


def _names(modalities: Sequence) -> list:
    return [getattr(m, "value", m) for m in modalities]


def _yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def _vec3(v) -> Vector3:
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3).tolist()
    return Vector3(x=x, y=y, z=z)


def detected_object_msg(obj) -> DetectedObject:
    """core.types.DetectedObject -> mmfusion_msgs/DetectedObject (pose = box centre + yaw about z)."""
    # one ndarray.tolist() per vector gives Python floats directly (no per-element float() of numpy
    # scalars), and the Pose is built once from its parts instead of default-built then overwritten
    cx, cy, cz = np.asarray(obj.center, dtype=np.float64).reshape(3).tolist()
    pose = Pose(position=Point(x=cx, y=cy, z=cz), orientation=_yaw_quaternion(float(obj.yaw)))
    return DetectedObject(
        label=str(obj.label),
        score=float(obj.score),
        label_from_camera=bool(obj.label_from_camera),
        pose=pose,
        size=_vec3(obj.size),
        velocity=_vec3(obj.velocity),
        point_count=int(obj.point_count),
        track_id=int(obj.track_id),
    )


def inference_ms(result: FusionResult) -> float:
    """Model time of a frame from the pipeline's stage timings (the 'inference' entry, else the model stages)."""
    t = result.timings_ms or {}
    for key in ("inference", "model", "total"):
        if key in t:
            return float(t[key])
    return float(sum(v for k, v in t.items() if k in ("encode", "fuse", "caption", "events")))


def perception_msg(result: FusionResult, frame_id: Optional[str] = None) -> FusedPerception:
    """The fused scene: embedding, presence, per-modality weights, top labels and 3D objects."""
    msg = FusedPerception()
    msg.header = make_header(result.stamp, frame_id or result.frame_id)
    msg.present_modalities = _names(result.present)
    msg.fused_embedding = float32_array(result.embedding)  # (384,)
    msg.modality_names = list(MODALITY_NAMES)
    msg.modality_weights = float32_array(result.modality_weights)  # (4,)
    msg.labels = [LabelScore(label=str(lbl), score=float(s)) for lbl, s in result.labels]
    msg.objects = [detected_object_msg(o) for o in result.objects]
    msg.inference_ms = inference_ms(result)
    msg.modality_familiarity = float32_array(familiarity_row(result))  # (4,)
    msg.modalities_used = _names(result.used)
    return msg


def familiarity_row(result: FusionResult) -> list:
    """Per MODALITY_NAMES entry: familiarity in [0,1], 0 for an absent modality, -1 where not assessed.

    A present modality the model has no encoder for (FusionResult.unbound: a tower bundle before binding) is
    -1, not 0: it is present (present_modalities lists it), it is just not assessed, and modalities_used
    leaves it out."""
    present = set(_names(result.present))
    fam = result.familiarity or {}
    return [float(fam[m]) if m in fam else (-1.0 if m in present else 0.0) for m in MODALITY_NAMES]


def caption_msg(result: FusionResult, frame_id: Optional[str] = None) -> Optional[Caption]:
    """The frame's caption, or None when the pipeline produced none."""
    if result.caption is None:
        return None
    return Caption(
        header=make_header(result.stamp, frame_id or result.frame_id),
        text=str(result.caption),
        confidence=float(result.caption_confidence) if result.caption else 0.0,
        modalities_used=_names(result.caption_modalities) if result.caption else [],
    )


def events_msg(result: FusionResult, frame_id: Optional[str] = None) -> EventArray:
    """Every event of the frame (an empty array says "nothing predicted" and is published too)."""
    return EventArray(
        header=make_header(result.stamp, frame_id or result.frame_id),
        events=[
            Event(
                type=str(e.type),
                probability=float(e.probability),
                horizon=float(e.horizon),
                time_to_event=float(e.time_to_event),
                state=int(e.state),
                track_id=int(e.track_id),
            )
            for e in result.events
        ],
        **_event_scores(result),
        unobservable=list(result.unobservable),
    )


def _event_scores(result: FusionResult) -> dict:
    """The head's raw (E, H) output, so a subscriber can score or plot every event, flagged or not."""
    if result.event_probs is None:
        return {}
    probs = np.asarray(result.event_probs, np.float32)  # (E, H)
    return {
        "types": list(EVENT_TYPES[: probs.shape[0]]),
        "horizons": array.array("f", EVENT_HORIZONS[: probs.shape[1]]),
        "probabilities": array.array("f", probs.tobytes()),
    }
