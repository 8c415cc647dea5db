"""Offline processing: a recorded bag through the node's conversions, Collector and Pipeline, without
DDS, into a new rosbag2 (mcap) bag of outputs stamped with their source stamps.

Bags are read with rosbags' AnyReader (rosbag2 sqlite3/mcap and ROS 1, whose messages it converts to
ROS 2 types), so this runs on machines with no ROS install. The recorded log time drives the
Collector's clock, as /clock drives the live node under use_sim_time; processing itself runs as fast
as the pipeline allows. Output messages are built by ros/messages.py (the same functions the node
publishes with) and serialised to CDR with rclpy, so the output bag holds exactly what the node
would publish.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.pipeline import Pipeline, PipelineConfig
from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.core.types import SENSOR_MODALITIES, Modality
from mmfusion_ros.ros import params as P

log = logging.getLogger(__name__)

#: input name (as in ros/params.py INPUT_TOPICS) -> ROS 2 message type it must carry
INPUT_TYPES: Dict[str, str] = {
    "image": "sensor_msgs/msg/Image",
    "compressed": "sensor_msgs/msg/CompressedImage",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "lidar": "sensor_msgs/msg/PointCloud2",
    "audio": "mmfusion_msgs/msg/AudioFrame",
    "imu": "sensor_msgs/msg/Imu",
}
#: output name (as in ros/params.py OUTPUT_TOPICS) -> message type written
OUTPUT_TYPES: Dict[str, str] = {
    "perception": "mmfusion_msgs/msg/FusedPerception",
    "caption": "mmfusion_msgs/msg/Caption",
    "events": "mmfusion_msgs/msg/EventArray",
    "markers": "visualization_msgs/msg/MarkerArray",
}


class BagError(RuntimeError):
    """The input bag cannot be read (missing, corrupt, unsupported)."""


def parse_remaps(items: Sequence[str]) -> Dict[str, str]:
    """["FROM:=TO", ...] -> {FROM: TO}: the replay command's parser, so both commands take one syntax."""
    from mmfusion_ros.ros.replay import parse_remaps as shared

    return dict(shared(list(items)))


def _norm(topic: str) -> str:
    """Topic names compare without their leading slash (a bag recorded in the root namespace has one)."""
    return topic.strip().lstrip("/")


def load_param_values(params_file: Optional[Path], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The node's parameters from a params file (the `ros__parameters` of the node's key), validated.

    Uses the node's own table (ros/params.py) so offline processing and the node share defaults.
    """
    import yaml

    values: Dict[str, Any] = {}
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise FileNotFoundError(f"--params: {path} does not exist")
        doc = yaml.safe_load(path.read_text()) or {}
        for key, node in doc.items():
            name = str(key).rstrip("/").split("/")[-1]
            if name in (P.NODE_NAME, "**") and isinstance(node, dict) and "ros__parameters" in node:
                values.update(P.flatten(node["ros__parameters"] or {}))
        unknown = sorted(set(values) - set(P.SPECS))
        if unknown:  # the node ignores undeclared parameters in a params file too
            log.warning("%s: ignoring parameters the node does not declare: %s", path, ", ".join(unknown))
            for k in unknown:
                del values[k]
    values.update(overrides or {})
    return P.validate(values)


@dataclass
class OfflineOptions:
    """What `mmfusion process` was asked to do."""

    bag: Path  # input bag: rosbag2 folder / .mcap / .db3, or a ROS 1 .bag
    out: Path  # output rosbag2 folder (must not exist)
    model_dir: Optional[Path] = None  # model bundle; None = model.dir from the params (shipped bundle when empty)
    backend: Optional[str] = None  # backend type; None = backend.type from the params
    params_file: Optional[Path] = None  # the node's params file (config/mmfusion.yaml layout)
    remaps: Dict[str, str] = field(default_factory=dict)  # bag topic -> topic it is read as
    topics: Optional[List[str]] = None  # read only these bag topics (names as in the bag); None = all inputs
    render_dir: Optional[Path] = None  # write a PNG per fused frame here (core/render.py)
    extrinsics: Optional[Path] = None  # YAML with the camera-LiDAR transform (config/extrinsics.yaml layout);
    # None = objects are not labelled through the camera (no transform is guessed)
    clock: str = "log"  # what drives the collector: "log" (bag receive time) or "header" (newest header stamp)
    progress: bool = True  # show a tqdm progress bar
    intra_op_threads: Optional[int] = None  # backend threads; None = backend.intra_op_threads from the params


@dataclass
class InputStats:
    """Per input topic."""

    topic: str
    input: str  # input name (image, lidar, ...)
    read: int = 0
    rejected: int = 0
    ignored: int = 0  # compressed images while raw images exist for the same camera


@dataclass
class Summary:
    """What one run did; printed as a table by the command."""

    bag: str
    out: str
    frames: int = 0
    present: Dict[str, int] = field(default_factory=lambda: {m.value: 0 for m in SENSOR_MODALITIES})
    inputs: List[InputStats] = field(default_factory=list)
    skipped_topics: List[str] = field(default_factory=list)  # bag topics not used, with the reason
    outputs: Dict[str, int] = field(default_factory=dict)  # output topic -> messages written
    wall_s: float = 0.0
    bag_s: float = 0.0  # recorded duration of the input
    pipeline_ms: List[float] = field(default_factory=list)
    frame_errors: int = 0
    sync: Dict[str, Any] = field(default_factory=dict)
    rendered: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> str:
        lines = [f"bag     {self.bag}", f"output  {self.out}", "",
                 "| input topic | input | read | rejected | ignored |", "|---|---|---:|---:|---:|"]
        for s in self.inputs:
            lines.append(f"| {s.topic} | {s.input} | {s.read} | {s.rejected} | {s.ignored} |")
        for t in self.skipped_topics:
            lines.append(f"| {t} | (skipped) | | | |")
        lines += ["", "| fused frames | " + " | ".join(m.value for m in SENSOR_MODALITIES) + " |",
                  "|---:|" + "---:|" * len(SENSOR_MODALITIES)]
        pct = [f"{self.present[m.value]} ({100.0 * self.present[m.value] / max(self.frames, 1):.0f}%)"
               for m in SENSOR_MODALITIES]
        lines.append(f"| {self.frames} | " + " | ".join(pct) + " |")
        ms = np.asarray(self.pipeline_ms) if self.pipeline_ms else np.zeros(1)
        lines += ["", f"{self.frames} frames from {self.bag_s:.1f} s of recording in {self.wall_s:.2f} s: "
                      f"{self.fps:.1f} frames/s, pipeline p50 {np.percentile(ms, 50):.1f} ms "
                      f"p99 {np.percentile(ms, 99):.1f} ms, {self.frame_errors} frame errors"]
        lines.append("written: " + ", ".join(f"{t} {n}" for t, n in self.outputs.items()))
        if self.rendered:
            lines.append(f"rendered {self.rendered} frames")
        return "\n".join(lines)


class BagFeeder:
    """Rosbags message of one input -> Collector call (the node's callbacks, without the node)."""

    def __init__(self, collector: Collector):
        from mmfusion_ros.ros import conversions as conv

        self.conv = conv
        self.c = collector

    def __call__(self, name: str, msg: Any) -> None:
        conv, c = self.conv, self.c
        stamp = conv.header_stamp(msg)
        if name == "image":
            c.add_image(stamp, conv.image_to_rgb(msg))
        elif name == "compressed":
            c.add_image(stamp, conv.compressed_to_rgb(msg))
        elif name == "camera_info":
            c.add_camera_info(stamp, conv.camera_info_to_intrinsics(msg))
        elif name == "lidar":
            pts, _ = conv.pointcloud2_to_xyzi_counted(msg)  # (N, 4), non-finite points dropped
            c.add_lidar(stamp, pts, msg.header.frame_id or None)
        elif name == "audio":
            samples, rate = conv.audio_to_array(msg)  # (S, C)
            c.add_audio(stamp, samples, rate)
        elif name == "imu":
            r = conv.imu_to_reading(msg)
            c.add_imu(stamp, r.accel, r.gyro)
        else:
            raise KeyError(name)


def _open_reader(bag: Path):
    from rosbags.highlevel import AnyReader

    from mmfusion_ros.ros.bag_io import typestore

    if not bag.exists():
        raise BagError(f"{bag}: no such file or folder")
    try:
        reader = AnyReader([bag], default_typestore=typestore())
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise BagError(f"{bag}: cannot be read as a rosbag2 or ROS 1 bag ({type(e).__name__}: {e})") from None
    return reader


def _route(reader, values: Dict[str, Any], opts: OfflineOptions, summary: Summary) -> Dict[int, str]:
    """Bag connections -> input names, after remapping and topic selection; reasons for the rest."""
    wanted = {_norm(values[f"topics.{n}"]): n for n in INPUT_TYPES if values.get(f"topics.{n}")}
    remaps = {_norm(k): _norm(v) for k, v in opts.remaps.items()}
    selected = None if opts.topics is None else {_norm(t) for t in opts.topics}
    routes: Dict[int, str] = {}
    seen = set()
    for conn in reader.connections:
        bag_topic = _norm(conn.topic)
        if selected is not None and bag_topic not in selected:
            continue
        topic = remaps.get(bag_topic, bag_topic)
        name = wanted.get(topic)
        if name is None:
            summary.skipped_topics.append(f"{conn.topic} ({conn.msgtype}: not an input topic)")
            continue
        if conn.msgtype != INPUT_TYPES[name]:
            summary.skipped_topics.append(f"{conn.topic} ({conn.msgtype}, expected {INPUT_TYPES[name]})")
            continue
        routes[conn.id] = name
        if conn.topic not in seen:
            summary.inputs.append(InputStats(conn.topic, name))
            seen.add(conn.topic)
    if selected is not None:
        missing = selected - {_norm(c.topic) for c in reader.connections}
        if missing:
            raise ValueError(f"--topics: not in the bag: {sorted(missing)}")
    return routes


def _serializer():
    from rclpy.serialization import serialize_message

    return serialize_message


def _markers_builder() -> Optional[Callable]:
    """ros/markers.py's stateful FusionResult -> MarkerArray (rclpy classes; it DELETEs markers that are
    gone), when the perception engineer's module is importable."""
    try:
        from mmfusion_ros.ros.markers import MarkerArrayBuilder, rclpy_kit
    except ImportError as e:
        log.warning("markers are not written: %s", e)
        return None
    return MarkerArrayBuilder(rclpy_kit()).build


def _renderer() -> Optional[Callable]:
    try:
        from mmfusion_ros.core import render
    except ImportError:
        return None
    return getattr(render, "render_frame", None)


def build_pipeline(values: Dict[str, Any], opts: OfflineOptions) -> Pipeline:
    """Backend, prompt embeddings (once), perception and Pipeline from the node's parameter values."""
    from mmfusion_ros.runtime import create_backend

    from mmfusion_ros.core.perception import load_extrinsics

    # the same default as the node: perception.extrinsics_file, "" = the installed config/extrinsics.yaml
    extrinsics = opts.extrinsics or P.extrinsics_file(values["perception.extrinsics_file"])
    T_cam_lidar = load_extrinsics(extrinsics) if extrinsics and Path(extrinsics).is_file() else None  # (4, 4)
    model_dir = Path(opts.model_dir) if opts.model_dir else P.resolve_model_dir(values["model.dir"])
    if not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"model bundle {model_dir} has no manifest.json")
    threads = values["backend.intra_op_threads"] if opts.intra_op_threads is None else opts.intra_op_threads
    backend = create_backend(str(model_dir), opts.backend or values["backend.type"],
                             **({"intra_op_threads": threads} if threads else {}))
    from mmfusion_ros.runtime.prompts import embed_prompts, load_bundle_prompts, open_text_encoder

    labels, emb = embed_prompts(values["model.prompts"], load_bundle_prompts(model_dir),
                                lambda: open_text_encoder(model_dir))
    perception = None
    if values["perception.enabled"]:
        try:
            from mmfusion_ros.core.perception import Perception, PerceptionConfig
        except ImportError as e:
            log.warning("perception disabled: %s", e)
        else:
            perception = Perception(PerceptionConfig.from_dict(P.perception_dict(values)))
    cfg = PipelineConfig(top_k=values["pipeline.top_k"], caption_every_n=values["pipeline.caption_every_n"],
                         enable_perception=values["perception.enabled"])
    return Pipeline(backend, cfg, labels, emb, perception=perception, T_cam_lidar=T_cam_lidar)


def process_bag(opts: OfflineOptions, values: Optional[Dict[str, Any]] = None) -> Summary:
    """Run a bag through Collector + Pipeline and write the output bag; returns what happened.

    Raises BagError (unreadable input), FileExistsError (output exists), FileNotFoundError (no model),
    ParamError / ValueError (bad parameters or options).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.ros import messages as M
    from mmfusion_ros.ros.bag_io import typestore

    values = values if values is not None else load_param_values(opts.params_file)
    if opts.clock not in ("log", "header"):
        raise ValueError(f"--clock: {opts.clock!r} is not 'log' or 'header'")
    out = Path(opts.out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists (rosbag2 writes a new folder)")
    summary = Summary(bag=str(opts.bag), out=str(out))

    reader = _open_reader(Path(opts.bag))
    try:
        routes = _route(reader, values, opts, summary)
        if not routes:
            raise ValueError(f"{opts.bag}: no input topics to process (inputs are "
                             f"{[values[f'topics.{n}'] for n in INPUT_TYPES]}; use --remap FROM:=TO)")
        pipe = build_pipeline(values, opts)  # only now, so a bad bag fails before the model loads
        sync_cfg = SyncConfig(**P.sync_kwargs(values), audio_rate=pipe.preprocess.audio_rate,
                              imu_rate=pipe.preprocess.imu_rate, frame_id=values["frame_id"])
        collector = Collector(sync_cfg, log=log)
        feeder = BagFeeder(collector)
        serialize = _serializer()
        markers_fn = _markers_builder() if values.get("topics.markers") else None
        render_fn = None
        if opts.render_dir is not None:
            render_fn = _renderer()
            if render_fn is None:
                raise ValueError("--render needs core/render.py (render_frame), which is not installed")
            Path(opts.render_dir).mkdir(parents=True, exist_ok=True)

        stats = {s.topic: s for s in summary.inputs}
        has_raw = any(n == "image" for n in routes.values())
        out_topics = {n: "/" + _norm(values[f"topics.{n}"]) for n in OUTPUT_TYPES if values.get(f"topics.{n}")}
        if markers_fn is None:
            out_topics.pop("markers", None)
        conns = [c for c in reader.connections if c.id in routes]
        total = sum(c.msgcount for c in conns)
        summary.bag_s = max(0.0, (reader.end_time - reader.start_time) * 1e-9) if total else 0.0

        from tqdm import tqdm

        t_wall = time.perf_counter()
        with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            wconn = {n: writer.add_connection(t, OUTPUT_TYPES[n], typestore=typestore())
                     for n, t in out_topics.items()}
            summary.outputs = {t: 0 for t in out_topics.values()}

            def emit(frames) -> None:
                for f in frames:
                    try:
                        r = pipe.process(f)
                    except Exception as e:  # noqa: BLE001 - one bad frame must not end the run
                        summary.frame_errors += 1
                        if summary.frame_errors <= 5:
                            log.warning("frame at %.3f failed: %s: %s", f.stamp, type(e).__name__, e)
                        continue
                    summary.frames += 1
                    summary.pipeline_ms.append(r.timings_ms.get("total", 0.0))
                    for m in r.present:
                        summary.present[Modality(m).value] += 1
                    ns = int(round(r.stamp * 1e9))
                    msgs = {"perception": M.perception_msg(r), "caption": M.caption_msg(r), "events": M.events_msg(r)}
                    if "markers" in out_topics:
                        msgs["markers"] = markers_fn(r)
                    for n, msg in msgs.items():
                        if msg is None or n not in wconn:
                            continue
                        writer.write(wconn[n], ns, serialize(msg))
                        summary.outputs[out_topics[n]] += 1
                    if render_fn is not None:
                        render_fn(f, r, Path(opts.render_dir) / f"frame_{summary.frames:06d}.png", pipe.T_cam_lidar)
                        summary.rendered += 1

            now = -math.inf
            bar = tqdm(total=total, unit="msg", disable=None if opts.progress else True, desc="process")
            try:
                for conn, t_log, raw in reader.messages(connections=conns):
                    bar.update(1)
                    name = routes[conn.id]
                    st = stats[conn.topic]
                    if name == "compressed" and has_raw:
                        st.ignored += 1
                        continue
                    st.read += 1
                    try:
                        msg = reader.deserialize(raw, conn.msgtype)
                        feeder(name, msg)
                        t_now = t_log * 1e-9 if opts.clock == "log" else feeder.conv.header_stamp(msg)
                    except Exception as e:  # noqa: BLE001 - a malformed message is counted, not fatal
                        st.rejected += 1
                        if st.rejected <= 3:
                            log.warning("rejected a message on %s: %s", conn.topic, e)
                        t_now = t_log * 1e-9 if opts.clock == "log" else now
                    if not math.isfinite(now) or t_now < now - sync_cfg.reset_jump_s:
                        now = t_now  # the start, or a looped recording (the collector resets itself)
                    else:
                        now = max(now, t_now)
                    emit(collector.poll(now))
            except BagError:
                raise
            except Exception as e:  # noqa: BLE001 - a corrupt chunk in the middle of the bag
                raise BagError(f"{opts.bag}: reading failed after {bar.n} messages ({type(e).__name__}: {e})") from None
            finally:
                bar.close()
            if math.isfinite(now):
                # flush the frames still waiting for their delay at the end of the recording
                emit(collector.poll(now + sync_cfg.delay_s + sync_cfg.lookahead_s + 1e-3))
        summary.wall_s = time.perf_counter() - t_wall
        summary.sync = collector.stats()
        pipe.backend.close()
    finally:
        reader.close()
    return summary
