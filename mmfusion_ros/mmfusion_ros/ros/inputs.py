"""The one way in: which topics the package reads and writes, with which types, and how a sensor
message reaches the Collector.

The fusion node's subscription callbacks, `mmfusion process` and `mmfusion train --bags` all hand
their messages (rclpy objects live, rosbags dataclasses from a bag) to one `InputFeeder`, so the
conversions, the Collector calls and the selection rules (a compressed image is decoded only while
no raw image of that time has arrived) are the same live and offline by construction. Every other
table of topics or types in the package (parameters, bag routing, the simulator's bag writer, the
recorder) is derived from `INPUTS` and `OUTPUTS` here.

No rclpy at import time: offline processing and training read bags without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from mmfusion_ros.ros import conversions as conv


@dataclass(frozen=True)
class InputSpec:
    """One sensor input."""

    name: str  # key of the parameters topics.<name> and qos.<name>.*, and of the feeder's dispatch
    msgtype: str  # ROS 2 type name, as bags spell it
    topic: str  # default topic (relative, so the node's namespace applies)
    group: str  # diagnostics group: the modality, or camera_info / audio_info
    stream: bool = False  # a continuous stream cut into windows: every message matters (queues a few)
    alternatives: Tuple[str, ...] = ()  # other message types the input accepts (parameter types.<name> picks one)
    only_with: Optional[Tuple[str, str]] = None  # (input, type): subscribed only while that input has that type

    @property
    def msgtypes(self) -> Tuple[str, ...]:
        """Every type the input accepts, the default first."""
        return (self.msgtype,) + self.alternatives


@dataclass(frozen=True)
class OutputSpec:
    """One output of the fusion node (and of `mmfusion process`)."""

    name: str  # key of the parameter topics.<name>
    msgtype: str
    topic: str


#: The sensor inputs, in subscription order.
INPUTS: Dict[str, InputSpec] = {s.name: s for s in (
    InputSpec("image", "sensor_msgs/msg/Image", "camera/image_raw", "camera"),
    InputSpec("compressed", "sensor_msgs/msg/CompressedImage", "camera/image_raw/compressed", "camera"),
    InputSpec("camera_info", "sensor_msgs/msg/CameraInfo", "camera/camera_info", "camera_info"),
    InputSpec("lidar", "sensor_msgs/msg/PointCloud2", "lidar/points", "lidar"),
    InputSpec("audio", "mmfusion_msgs/msg/AudioFrame", "audio/audio", "audio", stream=True,
              alternatives=("audio_common_msgs/msg/AudioStamped",  # ROS 2 audio_common: format inside
                            "audio_common_msgs/msg/AudioDataStamped")),  # format from audio_info
    InputSpec("audio_info", "audio_common_msgs/msg/AudioInfo", "audio/audio_info", "audio_info",
              only_with=("audio", "audio_common_msgs/msg/AudioDataStamped")),
    InputSpec("imu", "sensor_msgs/msg/Imu", "imu/data", "imu", stream=True),
)}
#: Outputs published only where their message package is installed (vision_msgs is not a dependency):
#: the node checks at configure; `mmfusion process` does not write them.
OPTIONAL_OUTPUTS: Dict[str, "OutputSpec"] = {}
#: The fused outputs.
OUTPUTS: Dict[str, OutputSpec] = {s.name: s for s in (
    OutputSpec("perception", "mmfusion_msgs/msg/FusedPerception", "mmfusion/perception"),
    OutputSpec("caption", "mmfusion_msgs/msg/Caption", "mmfusion/caption"),
    OutputSpec("events", "mmfusion_msgs/msg/EventArray", "mmfusion/events"),
    OutputSpec("markers", "visualization_msgs/msg/MarkerArray", "mmfusion/markers"),
)}
OPTIONAL_OUTPUTS.update({s.name: s for s in (
    OutputSpec("detections", "vision_msgs/msg/Detection3DArray", "mmfusion/detections"),
)})
#: The transform topics the node reads extrinsics from (tf2_msgs is not a dependency either).
TF_TOPICS: Dict[str, Tuple[str, str]] = {
    "tf_static": ("/tf_static", "tf2_msgs/msg/TFMessage"),
    "tf": ("/tf", "tf2_msgs/msg/TFMessage"),
}
#: Topics the simulator writes besides the inputs (ground truth for scoring, the static transforms).
SIM_EXTRA: Dict[str, Tuple[str, str]] = {
    "ground_truth": ("sim/ground_truth", "mmfusion_msgs/msg/GroundTruth"),
    "tf_static": ("/tf_static", "tf2_msgs/msg/TFMessage"),
}


def msg_class(msgtype: str) -> type:
    """"sensor_msgs/msg/Image" -> the rclpy message class (imports rclpy's generated module)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def norm_topic(topic: str) -> str:
    """Topic names compare without their leading slash (a bag recorded in the root namespace has one)."""
    return topic.strip().lstrip("/")


def resolve_type(name: str, value: Optional[str]) -> str:
    """types.<name> -> the full message type: a type the input accepts, written in full
    ("audio_common_msgs/msg/AudioStamped"), as pkg/Name, or as its bare name ("AudioStamped"); "" = the default.
    ValueError naming the parameter and the accepted types otherwise."""
    spec = INPUTS[name]
    v = (value or "").strip()
    if not v:
        return spec.msgtype
    for t in spec.msgtypes:
        pkg, _, short = t.split("/")
        if v in (t, f"{pkg}/{short}", short):
            return t
    raise ValueError(f"parameter 'types.{name}': {value!r} is not a message type the {name} input accepts "
                     f"(one of {', '.join(spec.msgtypes)})")


def input_msgtype(name: str, values: Dict[str, Any]) -> str:
    """The message type input `name` is subscribed with (types.<name> for inputs with alternatives)."""
    spec = INPUTS[name]
    return resolve_type(name, values.get(f"types.{name}", "")) if spec.alternatives else spec.msgtype


def type_available(msgtype: str) -> Optional[str]:
    """None when the message class imports, else why not (the package is not installed)."""
    try:
        msg_class(msgtype)
    except (ImportError, AttributeError) as e:
        return f"{msgtype.split('/')[0]} is not installed ({type(e).__name__}: {e})"
    return None


def input_topics(values: Dict[str, Any]) -> Dict[str, str]:
    """{input name: topic} of the inputs that are switched on (an empty topics.<name> switches one off; an
    input that only goes with another input's type, like audio_info, is on only with that type)."""
    out = {}
    for n, s in INPUTS.items():
        topic = values.get(f"topics.{n}", s.topic)
        if not topic:
            continue
        if s.only_with is not None:
            other, t = s.only_with
            if not values.get(f"topics.{other}", INPUTS[other].topic) or input_msgtype(other, values) != t:
                continue
        out[n] = topic
    return out


def output_topics(values: Dict[str, Any]) -> Dict[str, str]:
    """{output name: topic} of the outputs that are switched on: the others are not built at all."""
    return {n: values.get(f"topics.{n}", s.topic) for n, s in OUTPUTS.items() if values.get(f"topics.{n}", s.topic)}


# ------------------------------------------------------------------------------------ message -> Collector
class Sample(NamedTuple):
    """A converted message, ready for its Collector call."""

    name: str  # input name
    stamp: float  # header stamp, seconds
    args: tuple  # positional arguments of the Collector method after the stamp
    extra: Dict[str, Any]  # keyword arguments the Collector takes when it knows them (what conversion dropped)


_NONE: Dict[str, Any] = {}


def _image(msg, limits) -> Tuple[tuple, Dict[str, Any]]:
    return (conv.image_to_rgb(msg),), _NONE  # (H, W, 3) uint8


def _compressed(msg, limits) -> Tuple[tuple, Dict[str, Any]]:
    fmt = str(getattr(msg, "format", "") or "").lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise conv.ConversionError("CompressedImage.format", f"{fmt!r} is neither jpeg nor png")
    return (conv.compressed_to_rgb(msg),), _NONE


def _camera_info(msg, limits) -> Tuple[tuple, Dict[str, Any]]:
    return (conv.camera_info_to_intrinsics(msg),), _NONE


def _lidar(msg, limits) -> Tuple[tuple, Dict[str, Any]]:
    pts, dropped = conv.pointcloud2_to_xyzi_counted(msg, limits)  # (N, 4); invalid points dropped and counted
    return (pts, msg.header.frame_id or None), {"dropped_points": int(dropped)}


def _audio(msg, limits, info=None) -> Tuple[tuple, Dict[str, Any]]:
    """Any accepted audio type, told apart by its fields (rclpy objects and bag messages alike)."""
    if hasattr(msg, "encoding"):  # mmfusion_msgs/AudioFrame
        return conv.audio_to_array(msg, limits), _NONE  # ((S, C) float32, rate)
    if hasattr(getattr(msg, "audio", None), "info"):  # audio_common_msgs/AudioStamped
        return conv.audio_stamped_to_array(msg, limits), _NONE
    return conv.audio_data_stamped_to_array(msg, info, limits), _NONE  # AudioDataStamped + the newest AudioInfo


def _imu(msg, limits) -> Tuple[tuple, Dict[str, Any]]:
    r = conv.imu_to_reading(msg, limits)
    return (r.accel, r.gyro), _NONE


#: input name -> (conversion of (message, conv.Limits) into Collector (args, kwargs), Collector method)
DISPATCH: Dict[str, Tuple[Callable[[Any, Any], Tuple[tuple, Dict[str, Any]]], str]] = {
    "image": (_image, "add_image"),
    "compressed": (_compressed, "add_image"),
    "camera_info": (_camera_info, "add_camera_info"),
    "lidar": (_lidar, "add_lidar"),
    "audio": (_audio, "add_audio"),
    "audio_info": (None, None),  # kept by the feeder for the AudioDataStamped that follow
    "imu": (_imu, "add_imu"),
}
assert set(DISPATCH) == set(INPUTS), "every input needs a conversion"


class InputFeeder:
    """Message of one input -> conversion -> Collector, with the same selection rules everywhere.

    A camera driver usually publishes raw and compressed images of the same frame: a compressed image
    is decoded only when no raw image stamped within `sync.timeout.camera` of it has been converted,
    so a bag (or a graph) whose raw topic exists but stays empty still has a camera.
    `received` is the receive clock (the node's clock live, the bag's record time offline): the
    Collector measures each sensor clock's offset against it.
    """

    def __init__(self, collector, values: Dict[str, Any]):
        self.collector = collector
        self.raw_images = bool(values.get("topics.image", INPUTS["image"].topic))
        self.camera_timeout_s = float(values.get("sync.timeout.camera", 0.5))
        self.newest_raw: Optional[float] = None  # header stamp of the newest raw image converted
        self.limits = conv.Limits.from_params(values)  # plausibility bounds (limits.* parameters)
        self._keywords = {m: _keywords(getattr(collector, m, None)) for _, m in DISPATCH.values() if m}
        self.audio_info: Any = None  # newest AudioInfo (audio_common_msgs), for AudioDataStamped audio
        self._newest_audio = 0.0

    def convert(self, name: str, msg: Any) -> Optional[Sample]:
        """Convert without touching the Collector (callers convert outside their lock); None = not used
        (a compressed image while raw images of that time flow). Raises ConversionError / ValueError."""
        if name == "audio_info":  # no header: checked now, kept for the audio chunks that follow
            conv.audio_info_to_format(msg)
            self.audio_info = msg
            return Sample(name, self._newest_audio, (), _NONE)
        stamp = conv.header_stamp(msg)
        if name == "audio":
            args, extra = _audio(msg, self.limits, self.audio_info)
            self._newest_audio = max(self._newest_audio, stamp)
            return Sample(name, stamp, args, extra)
        if name == "compressed" and self.raw_images and self.newest_raw is not None \
                and abs(stamp - self.newest_raw) < self.camera_timeout_s:
            return None
        args, extra = DISPATCH[name][0](msg, self.limits)
        if name == "image":
            self.newest_raw = stamp if self.newest_raw is None else max(self.newest_raw, stamp)
        return Sample(name, stamp, args, extra)

    def add(self, sample: Sample, received: Optional[float] = None) -> bool:
        """The Collector call of a converted message; False when the Collector dropped it."""
        name = DISPATCH[sample.name][1]
        if name is None:  # state of the feeder itself (AudioInfo), nothing for the Collector
            return True
        known = self._keywords[name]
        kw = {k: v for k, v in sample.extra.items() if k in known}
        if received is not None and "received" in known:
            kw["received"] = received
        ok = getattr(self.collector, name)(sample.stamp, *sample.args, **kw)
        return True if ok is None else bool(ok)  # add_camera_info returns nothing

    def feed(self, name: str, msg: Any, received: Optional[float] = None) -> Optional[bool]:
        """convert + add: True accepted, False dropped by the Collector, None not used."""
        sample = self.convert(name, msg)
        return None if sample is None else self.add(sample, received)


def _keywords(method) -> frozenset:
    """Keyword parameters a Collector method takes (a test double may take fewer than core.sync's)."""
    import inspect

    try:
        return frozenset(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return frozenset()


# ------------------------------------------------------------------------------------ bags -> inputs
@dataclass
class Route:
    """Which input a bag connection feeds."""

    topic: str  # bag topic as recorded
    name: str  # input name


def route_connections(connections: Iterable[Any], values: Dict[str, Any], remaps: Optional[Dict[str, str]] = None,
                      selected: Optional[Sequence[str]] = None) -> Tuple[Dict[int, Route], List[str]]:
    """Bag connections -> {connection id: Route} by topic (after remapping) and type, the same table the
    node subscribes with; and a line per connection that is not used, with the reason.

    Raises ValueError when `selected` names a topic that is not in the bag.
    """
    # every input topic, whatever types.* says: a bag names each connection's type, and any type the input
    # accepts is routed (an AudioInfo topic goes with the AudioDataStamped chunks it describes)
    wanted = {norm_topic(values.get(f"topics.{n}", s.topic)): n for n, s in INPUTS.items()
              if values.get(f"topics.{n}", s.topic)}
    remaps = {norm_topic(k): norm_topic(v) for k, v in (remaps or {}).items()}
    chosen = None if selected is None else {norm_topic(t) for t in selected}
    routes: Dict[int, Route] = {}
    skipped: List[str] = []
    connections = list(connections)
    for c in connections:
        bag_topic = norm_topic(c.topic)
        if chosen is not None and bag_topic not in chosen:
            continue
        name = wanted.get(remaps.get(bag_topic, bag_topic))
        if name is None:
            skipped.append(f"{c.topic} ({c.msgtype}: not an input topic)")
        elif c.msgtype not in INPUTS[name].msgtypes:  # a bag says its type: any type the input accepts
            skipped.append(f"{c.topic} ({c.msgtype}, expected {' or '.join(INPUTS[name].msgtypes)})")
        else:
            routes[c.id] = Route(c.topic, name)
    if chosen is not None:
        missing = chosen - {norm_topic(c.topic) for c in connections}
        if missing:
            raise ValueError(f"--topics: not in the bag: {sorted(missing)}")
    return routes, skipped


def open_bag(bag: Path):
    """rosbags AnyReader (rosbag2 sqlite3/mcap, ROS 1) with mmfusion_msgs registered, opened; ValueError
    when the file cannot be read as a bag."""
    from rosbags.highlevel import AnyReader

    from mmfusion_ros.ros.bag_io import typestore

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}")
    try:
        reader = AnyReader([bag], default_typestore=typestore())
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise ValueError(f"{bag}: cannot be read as a rosbag2 or ROS 1 bag ({type(e).__name__}: {e})") from None
    return reader


def bag_frames(bag: Path, values: Dict[str, Any], collector=None, on_reject: Optional[Callable[[str, Exception],
               None]] = None) -> Iterator[Any]:
    """SensorFrames of one bag, cut by the node's Collector from its messages in record order.

    The bag's record time is the receive clock and drives the Collector (as /clock does live under
    use_sim_time). `on_reject(topic, error)` hears about every message that does not convert.
    """
    from mmfusion_ros.core.sync import Collector, SyncConfig
    from mmfusion_ros.ros import params as P

    reader = open_bag(bag)
    try:
        routes, _ = route_connections(reader.connections, values)
        if not routes:
            raise ValueError(f"{bag}: none of the input topics {sorted(input_topics(values).values())} is in the bag")
        cfg = SyncConfig(**P.sync_kwargs(values))
        col = collector if collector is not None else Collector(cfg)
        feeder = InputFeeder(col, values)
        conns = [c for c in reader.connections if c.id in routes]
        now = None
        for conn, t_log, raw in reader.messages(connections=conns):
            t = t_log * 1e-9
            try:
                feeder.feed(routes[conn.id].name, reader.deserialize(raw, conn.msgtype), received=t)
            except ValueError as e:  # ConversionError is a ValueError: count the bad message, keep going
                if on_reject is not None:
                    on_reject(conn.topic, e)
            now = t if now is None or t < now - cfg.reset_jump_s else max(now, t)
            yield from col.poll(now)
        if now is not None:  # the frames still waiting for their delay at the end of the recording
            yield from col.poll(now + cfg.delay_s + cfg.lookahead_s + 1e-3)
    finally:
        reader.close()
