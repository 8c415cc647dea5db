"""FusionResult -> visualization_msgs/MarkerArray for RViz, for rclpy and for rosbags message classes.

The live node publishes rclpy messages; offline processing writes rosbags messages into a bag. Both
go through one builder that takes a *message kit* (``rclpy_kit()`` or ``rosbags_kit(typestore)``): the
kit knows how to construct a message of a given type name, so the marker logic is written once.

Marker namespaces and ids (deterministic, so RViz replaces a marker in place instead of stacking):
  ``objects``  CUBE per object, id = track id, coloured by label (``core.render.label_color``)
  ``labels``   TEXT_VIEW_FACING "label score #id" above each box ("~" marks a geometric label)
  ``velocity`` ARROW along the tracked velocity (1 s of motion) when the object moves
  ``events``   red ARROW pointing down at the object an event concerns, id = track id
  ``caption``  TEXT_VIEW_FACING id 0 above the robot: the caption and scene-level events
  ``grounding`` TEXT_VIEW_FACING id 0 above the caption: familiarity per modality, unbound sensors, unobservable event types

Deletion: ``MarkerArrayBuilder`` remembers what it published last and sends an explicit DELETE for
every (ns, id) that is gone, instead of a DELETEALL first. Both are correct; explicit DELETEs keep
markers from other publishers (and other namespaces) alone, never blank the display for a frame,
and make a recorded bag replay correctly from any point where the previous array was seen.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from ..core.render import label_color, object_caption
from ..core.types import FusionResult

ADD, DELETE = 0, 2
ARROW, CUBE, TEXT_VIEW_FACING = 0, 1, 9


class MsgKit:
    """Builds messages by ROS type name ('visualization_msgs/msg/Marker') for one message library."""

    def __init__(self, new: Callable[..., Any], name: str):
        self._new = new
        self.name = name

    def new(self, typename: str, **fields) -> Any:
        return self._new(typename, **fields)


def rclpy_kit() -> MsgKit:
    """Kit for rclpy's generated classes (fields default to zero values)."""

    classes: Dict[str, Any] = {}  # type name -> class, resolved once (import_module per message cost ~30 us)

    def new(typename: str, **fields):
        cls = classes.get(typename)
        if cls is None:
            pkg, _, name = typename.split("/")
            cls = classes[typename] = getattr(importlib.import_module(f"{pkg}.msg"), name)
        return cls(**fields)

    return MsgKit(new, "rclpy")


def rosbags_kit(typestore: Any) -> MsgKit:
    """Kit for a rosbags typestore (its dataclasses need every field: missing ones get zero values)."""
    from rosbags.typesys.base import Nodetype

    np_types = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
                "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
                "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64}

    def zero(desc) -> Any:
        kind, arg = desc
        if kind == Nodetype.BASE:
            t = arg[0]
            return "" if t in ("string", "wstring") else (False if t == "bool" else (0.0 if t.startswith("float") else 0))
        if kind == Nodetype.NAME:
            return new(arg)
        sub, count = arg
        if kind == Nodetype.SEQUENCE:
            if sub[0] == Nodetype.BASE and sub[1][0] in np_types:
                return np.zeros(0, np_types[sub[1][0]])
            return []
        # fixed-size ARRAY
        if sub[0] == Nodetype.BASE and sub[1][0] in np_types:
            return np.zeros(count, np_types[sub[1][0]])
        return [zero(sub) for _ in range(count)]

    def new(typename: str, **fields):
        _, defs = typestore.fielddefs[typename]
        values = {name: fields.pop(name) if name in fields else zero(desc) for name, desc in defs}
        if fields:
            raise TypeError(f"{typename} has no field(s) {sorted(fields)}")
        return typestore.types[typename](**values)

    return MsgKit(new, "rosbags")


def _time(kit: MsgKit, t: float) -> Any:
    ns = int(round(max(t, 0.0) * 1e9))
    return kit.new("builtin_interfaces/msg/Time", sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _point(kit: MsgKit, p) -> Any:
    return kit.new("geometry_msgs/msg/Point", x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _pose(kit: MsgKit, p, yaw: float = 0.0) -> Any:
    q = kit.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
    return kit.new("geometry_msgs/msg/Pose", position=_point(kit, p), orientation=q)


def _color(kit: MsgKit, rgb, a: float) -> Any:
    return kit.new("std_msgs/msg/ColorRGBA", r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(a))


def _vec(kit: MsgKit, x: float, y: float, z: float) -> Any:
    return kit.new("geometry_msgs/msg/Vector3", x=float(x), y=float(y), z=float(z))


class MarkerArrayBuilder:
    """Stateful FusionResult -> MarkerArray converter: one per published topic (it tracks what is shown)."""

    def __init__(self, kit: MsgKit, caption_height: float = 2.5, text_size: float = 0.4,
                 box_alpha: float = 0.45, min_speed: float = 0.1):
        self.kit = kit
        self.caption_height = caption_height  # caption text this high above base_link, m
        self.text_size = text_size  # height of label text, m
        self.box_alpha = box_alpha  # box opacity (0..1)
        self.min_speed = min_speed  # slower objects get no velocity arrow, m/s
        self._shown: Set[Tuple[str, int]] = set()

    def _marker(self, header, ns: str, mid: int, mtype: int, **fields) -> Any:
        return self.kit.new("visualization_msgs/msg/Marker", header=header, ns=ns, id=int(mid), type=mtype,
                            action=ADD, **fields)

    def build(self, result: FusionResult) -> Any:
        """Markers for ``result`` plus DELETEs for markers of the previous call that are gone."""
        kit = self.kit
        header = kit.new("std_msgs/msg/Header", stamp=_time(kit, result.stamp), frame_id=result.frame_id)
        markers: List[Any] = []
        shown: Set[Tuple[str, int]] = set()
        by_track: Dict[int, Any] = {}
        # sub-messages that are equal for many markers are built once per array and shared (a message
        # field holds a reference; serialisation copies): ~36 objects a frame made this the main cost
        colors: Dict[Tuple[str, float], Any] = {}

        def color(label: str, a: float) -> Any:
            c = colors.get((label, a))
            if c is None:
                c = colors[(label, a)] = _color(kit, label_color(label), a)
            return c

        text_scale = _vec(kit, 0, 0, self.text_size)
        origin = _pose(kit, [0, 0, 0])
        for i, o in enumerate(result.objects):
            tid = int(o.track_id) if o.track_id > 0 else 1_000_000 + i  # untracked objects: per-frame ids
            by_track[tid] = o
            size = np.maximum(np.asarray(o.size, np.float64), 0.01)
            c = np.asarray(o.center, np.float64)
            markers.append(self._marker(header, "objects", tid, CUBE, pose=_pose(kit, c, o.yaw),
                                        scale=_vec(kit, *size), color=color(o.label, self.box_alpha)))
            top = c + [0.0, 0.0, size[2] / 2 + self.text_size]
            markers.append(self._marker(header, "labels", tid, TEXT_VIEW_FACING, pose=_pose(kit, top),
                                        scale=text_scale, color=color(o.label, 1.0), text=object_caption(o)))
            shown.add(("objects", tid))
            shown.add(("labels", tid))
            v = np.asarray(o.velocity, np.float64)[:3]
            if math.hypot(v[0], v[1]) >= self.min_speed:
                markers.append(self._marker(header, "velocity", tid, ARROW, pose=origin,
                                            scale=_vec(kit, 0.1, 0.2, 0.2), color=_color(kit, (1, 1, 1), 0.9),
                                            points=[_point(kit, c), _point(kit, c + v)]))
                shown.add(("velocity", tid))
        scene_events = []
        for e in result.events:
            if e.state == 2:
                continue
            o = by_track.get(int(e.track_id)) if e.track_id else None
            if o is None:
                scene_events.append(e)
                continue
            if ("events", int(e.track_id)) in shown:
                continue  # one arrow per object, however many events concern it
            c = np.asarray(o.center, np.float64)
            top = c[2] + float(o.size[2]) / 2
            markers.append(self._marker(header, "events", int(e.track_id), ARROW, pose=_pose(kit, [0, 0, 0]),
                                        scale=_vec(kit, 0.15, 0.3, 0.3), color=_color(kit, (1, 0.1, 0.1), 1.0),
                                        points=[_point(kit, [c[0], c[1], top + 1.5]), _point(kit, [c[0], c[1], top + 0.2])],
                                        text=f"{e.type} p={e.probability:.2f}"))
            shown.add(("events", int(e.track_id)))
        lines = []
        if result.caption:
            lines.append(f"{result.caption} ({result.caption_confidence:.2f})")
        lines += [f"{e.type} {e.probability:.2f} in {e.horizon:g}s" for e in scene_events]
        if lines:
            markers.append(self._marker(header, "caption", 0, TEXT_VIEW_FACING,
                                        pose=_pose(kit, [0, 0, self.caption_height]),
                                        scale=_vec(kit, 0, 0, self.text_size * 1.2), color=_color(kit, (1, 1, 1), 1.0),
                                        text="\n".join(lines)))
            shown.add(("caption", 0))
        status = grounding_text(result)
        if status:  # what the learned claims rest on: familiarity per modality, events nothing here can observe
            markers.append(self._marker(header, "grounding", 0, TEXT_VIEW_FACING,
                                        pose=_pose(kit, [0, 0, self.caption_height + 1.0]),
                                        scale=_vec(kit, 0, 0, self.text_size), color=_color(kit, (1, 0.85, 0.3), 1.0),
                                        text=status))
            shown.add(("grounding", 0))
        for ns, mid in sorted(self._shown - shown):
            markers.append(kit.new("visualization_msgs/msg/Marker", header=header, ns=ns, id=mid, action=DELETE))
        self._shown = shown
        return kit.new("visualization_msgs/msg/MarkerArray", markers=markers)

    def clear(self, stamp: float, frame_id: str) -> Any:
        """DELETEs for everything this builder shows (e.g. when the node deactivates)."""
        header = self.kit.new("std_msgs/msg/Header", stamp=_time(self.kit, stamp), frame_id=frame_id)
        markers = [self.kit.new("visualization_msgs/msg/Marker", header=header, ns=ns, id=mid, action=DELETE)
                   for ns, mid in sorted(self._shown)]
        self._shown = set()
        return self.kit.new("visualization_msgs/msg/MarkerArray", markers=markers)


def grounding_text(result: FusionResult) -> str:
    """A few lines for RViz: each present modality's familiarity, the present ones the model has no encoder
    for, and the event types no used modality can observe ('' when the result carries none of them)."""
    lines = []
    if result.familiarity:
        parts = [f"{m} {v:.2f}" + ("" if m in result.used else " (unfamiliar)") for m, v in result.familiarity.items()]
        lines.append("familiarity: " + ", ".join(parts))
    if getattr(result, "unbound", None):
        lines.append("not bound (no encoder): " + ", ".join(result.unbound))
    if result.unobservable:
        lines.append("not observable: " + ", ".join(result.unobservable))
    return "\n".join(lines)


def result_to_markers(result: FusionResult, builder: Optional[MarkerArrayBuilder] = None) -> Any:
    """One-shot conversion with rclpy messages (a fresh builder deletes nothing)."""
    return (builder or MarkerArrayBuilder(rclpy_kit())).build(result)
