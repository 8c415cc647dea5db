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

import contextlib
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.pipeline import Pipeline
from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.core.types import SENSOR_MODALITIES, Modality
from mmfusion_ros.ros import conversions as conv
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.diagnostics import not_bound_text
from mmfusion_ros.ros.inputs import INPUTS, OUTPUTS, InputFeeder, norm_topic, open_bag, route_connections

log = logging.getLogger(__name__)

#: input name -> ROS 2 message type it must carry (views of the one table in ros/inputs.py)
INPUT_TYPES: Dict[str, str] = {n: s.msgtype for n, s in INPUTS.items()}
#: output name -> message type written
OUTPUT_TYPES: Dict[str, str] = {n: s.msgtype for n, s in OUTPUTS.items()}


class BagError(RuntimeError):
    """The input bag cannot be read (missing, corrupt, unsupported)."""


class OutputError(RuntimeError):
    """The output bag cannot be written (exists, read-only location, disk full); the message names it and
    nothing half-written is left behind."""


def parse_remaps(items: Sequence[str]) -> Dict[str, str]:
    """["FROM:=TO", ...] -> {FROM: TO}: the replay command's parser, so both commands take one syntax."""
    from mmfusion_ros.ros.replay import parse_remaps as shared

    return dict(shared(list(items)))


_norm = norm_topic


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
    ignored: int = 0  # compressed images while raw images of the same time were converted (as live)


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
    messages_read: int = 0  # bag messages of the input topics taken from the reader
    read_error: str = ""  # why reading stopped before the end (a damaged chunk); "" = read to the end
    interrupted: bool = False  # stopped by ctrl-C: the output holds the frames fused until then
    dropped: Dict[str, int] = field(default_factory=dict)  # modality -> frames it was dropped from (encoder failed)
    not_bound: List[str] = field(default_factory=list)  # sensors in the bag the model has no encoder for

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
        if self.not_bound:
            lines.append(f"not bound: {not_bound_text(self.not_bound)}")
        if self.dropped:
            lines.append("dropped from frames (its encoder failed): "
                         + ", ".join(f"{m} {n}" for m, n in sorted(self.dropped.items())))
        clocks = []
        for m in SENSOR_MODALITIES:
            s = self.sync.get(m.value) or {}
            if s.get("clock_aligned") or s.get("zero_stamps") or s.get("clock_jumps") or s.get("clock_dropped"):
                off = s.get("clock_offset_s")
                clocks.append(f"| {m.value} | {'n/a' if off is None else f'{off:.3f}'} | "
                              f"{'yes' if s.get('clock_aligned') else 'no'} | {s.get('zero_stamps', 0)} | "
                              f"{s.get('clock_jumps', 0)} | {s.get('clock_dropped', 0)} |")
        if clocks:
            lines += ["", "| sensor clock | offset s (record - stamp) | aligned | zero stamps | jumps | dropped |",
                      "|---|---:|---|---:|---:|---:|"] + clocks
        if self.read_error:
            lines.append(f"input damaged: reading stopped after {self.messages_read} messages ({self.read_error}); "
                         f"the output holds the {self.frames} frames fused before it")
        if self.interrupted:
            lines.append(f"interrupted after {self.messages_read} messages: the output holds the {self.frames} "
                         f"frames fused until then")
        return "\n".join(lines)


def _open_reader(bag: Path):
    """inputs.open_bag, with its errors as BagError (exit code "unreadable input")."""
    try:
        return open_bag(bag)
    except FileNotFoundError:
        raise BagError(f"{bag}: no such file or folder") from None
    except ValueError as e:
        raise BagError(str(e)) from None


def _route(reader, values: Dict[str, Any], opts: OfflineOptions, summary: Summary) -> Dict[int, str]:
    """Bag connections -> input names (ros/inputs.py, the table the node subscribes with); reasons for the rest."""
    routes, skipped = route_connections(reader.connections, values, opts.remaps, opts.topics)
    summary.skipped_topics.extend(skipped)
    seen = set()
    for r in routes.values():
        if r.topic not in seen:
            summary.inputs.append(InputStats(r.topic, r.name))
            seen.add(r.topic)
    return {cid: r.name for cid, r in routes.items()}


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
    """The node's assembly (ros/pipeline_factory.open_pipeline) with the command's overrides."""
    from mmfusion_ros.ros.pipeline_factory import open_pipeline

    values = dict(values)
    if opts.backend:
        values["backend.type"] = opts.backend
    if opts.intra_op_threads is not None:
        values["backend.intra_op_threads"] = opts.intra_op_threads
    if opts.extrinsics:
        values["perception.extrinsics_file"] = str(opts.extrinsics)
    return open_pipeline(opts.model_dir, values)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold SIGINT (ctrl-C) while a frame's outputs are written and counted; it is raised right after."""
    main = threading.current_thread() is threading.main_thread()
    if not main or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _os_reason(e: OSError) -> str:
    """'No space left on device (ENOSPC)' from an OSError."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


def _open_writer(out: Path):
    """A rosbags mcap Writer on the new folder `out`; OutputError naming it when it cannot be created."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.errors import WriterError

    try:
        writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
    except WriterError as e:
        raise OutputError(f"--out {out}: {e}") from None
    except OSError as e:  # read-only location, no permission, disk full
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise OutputError(f"--out {out}: cannot create the output bag ({_os_reason(e)})") from None
    return writer


def _discard(writer, out: Path) -> None:
    """Abort the writer and remove the folder it created (it did not exist before: process_bag checks)."""
    try:
        writer.abort()
    except Exception:  # noqa: BLE001 - best effort: the folder goes anyway
        pass
    shutil.rmtree(out, ignore_errors=True)


def process_bag(opts: OfflineOptions, values: Optional[Dict[str, Any]] = None) -> Summary:
    """Run a bag through Collector + Pipeline and write the output bag; returns what happened.

    Raises BagError (unreadable input), OutputError (output exists or cannot be written; nothing is left
    behind), FileNotFoundError (no model), ParamError / ValueError (bad parameters or options). A read error
    midway (a damaged chunk) is not raised: the output is finished with the frames fused so far and
    `Summary.read_error` says why; ctrl-C likewise finishes the output and sets `Summary.interrupted`.
    """
    values = values if values is not None else load_param_values(opts.params_file)
    if opts.clock not in ("log", "header"):
        raise ValueError(f"--clock: {opts.clock!r} is not 'log' or 'header'")
    out = Path(opts.out)
    if out.exists():
        raise OutputError(f"--out {out} already exists (rosbag2 writes a new folder: remove it or choose another)")
    summary = Summary(bag=str(opts.bag), out=str(out))

    reader = _open_reader(Path(opts.bag))
    try:
        routes = _route(reader, values, opts, summary)
        if not routes:
            raise ValueError(f"{opts.bag}: no input topics to process (inputs are "
                             f"{[values[f'topics.{n}'] for n in INPUT_TYPES]}; use --remap FROM:=TO)")
        writer = _open_writer(out)  # before the model loads: an output that cannot be written fails at once
        try:
            return _process(opts, values, reader, routes, writer, summary)
        except BaseException:  # an output error, a bad model, ctrl-C...: no half-written output folder
            _discard(writer, out)
            raise
    finally:
        reader.close()


def _process(opts: OfflineOptions, values: Dict[str, Any], reader, routes: Dict[int, str], writer,
             summary: Summary) -> Summary:
    """process_bag's work once the input is open and the output created (the caller discards it on errors)."""
    from mmfusion_ros.ros import messages as M
    from mmfusion_ros.ros.bag_io import typestore

    out = Path(opts.out)
    pipe = build_pipeline(values, opts)
    read = {INPUTS[name].group for name in routes.values()}
    summary.not_bound = [m.value for m in SENSOR_MODALITIES if m.value in read and m.value not in pipe.modalities]
    if summary.not_bound:  # as the node logs at activate: a property of the model, not a fault
        log.info("not bound: %s", not_bound_text(summary.not_bound))
    from mmfusion_ros.ros.extrinsics import apply_bag_tf

    apply_bag_tf(reader, routes, values, pipe, explicit_yaml=bool(opts.extrinsics))  # the bag's /tf_static first
    sync_cfg = SyncConfig(**P.sync_kwargs(values), audio_rate=pipe.preprocess.audio_rate,
                          imu_rate=pipe.preprocess.imu_rate, frame_id=values["frame_id"])
    collector = Collector(sync_cfg, log=log)
    feeder = InputFeeder(collector, values)  # the node's conversions and selection rules
    serialize = _serializer()
    markers_fn = _markers_builder() if values.get("topics.markers") else None
    render_fn = None
    if opts.render_dir is not None:
        render_fn = _renderer()
        if render_fn is None:
            raise ValueError("--render needs core/render.py (render_frame), which is not installed")
        Path(opts.render_dir).mkdir(parents=True, exist_ok=True)

    stats = {s.topic: s for s in summary.inputs}
    out_topics = {n: "/" + _norm(values[f"topics.{n}"]) for n in OUTPUT_TYPES if values.get(f"topics.{n}")}
    if markers_fn is None:
        out_topics.pop("markers", None)
    conns = [c for c in reader.connections if c.id in routes]
    total = sum(c.msgcount for c in conns)
    summary.bag_s = max(0.0, (reader.end_time - reader.start_time) * 1e-9) if total else 0.0

    from tqdm import tqdm

    t_wall = time.perf_counter()
    wconn = {n: writer.add_connection(t, OUTPUT_TYPES[n], typestore=typestore())
             for n, t in out_topics.items()}
    summary.outputs = {t: 0 for t in out_topics.values()}
    builders = {"perception": M.perception_msg, "caption": M.caption_msg, "events": M.events_msg,
                "markers": markers_fn}

    def emit(frames) -> None:
        for f in frames:
            try:
                r = pipe.process(f)
            except Exception as e:  # noqa: BLE001 - one bad frame must not end the run
                summary.frame_errors += 1
                if summary.frame_errors <= 5:
                    log.warning("frame at %.3f failed: %s: %s", f.stamp, type(e).__name__, e)
                continue
            ns = int(round(r.stamp * 1e9))
            msgs = [(n, builders[n](r)) for n in wconn]  # only the outputs switched on are built
            with _sigint_deferred():  # a ctrl-C lands between frames: the summary counts what the bag holds
                summary.frames += 1
                summary.pipeline_ms.append(r.timings_ms.get("total", 0.0))
                for m in r.present:
                    summary.present[Modality(m).value] += 1
                for m in getattr(r, "dropped", None) or {}:
                    key = getattr(m, "value", m)
                    summary.dropped[key] = summary.dropped.get(key, 0) + 1
                for n, msg in msgs:
                    if msg is None:
                        continue
                    try:
                        writer.write(wconn[n], ns, serialize(msg))
                    except OSError as e:  # disk full, I/O error: the output's fault, not the input's
                        raise OutputError(f"--out {out}: writing failed ({_os_reason(e)})") from None
                    summary.outputs[out_topics[n]] += 1
            if render_fn is not None:
                png = Path(opts.render_dir) / f"frame_{summary.frames:06d}.png"
                try:
                    render_fn(f, r, png, pipe.T_cam_lidar)
                except OSError as e:
                    raise OutputError(f"--render {opts.render_dir}: writing {png.name} failed "
                                      f"({_os_reason(e)})") from None
                summary.rendered += 1

    now = -math.inf
    bar = tqdm(total=total, unit="msg", disable=None if opts.progress else True, desc="process")
    messages = iter(reader.messages(connections=conns))
    try:
        while True:
            try:
                conn, t_log, raw = next(messages)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - a damaged chunk midway: keep what is done
                summary.read_error = f"{type(e).__name__}: {e}"
                log.warning("%s: reading failed after %d messages (%s); finishing the output with the "
                            "%d frames fused so far", opts.bag, summary.messages_read,
                            summary.read_error, summary.frames)
                break
            summary.messages_read += 1
            bar.update(1)
            name = routes[conn.id]
            st = stats[conn.topic]
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                # the record time is the receive clock the Collector measures sensor clocks against;
                # with --clock header the header stamps are the clock and are taken as they are
                received = t_log * 1e-9 if opts.clock == "log" else None
                used = feeder.feed(name, msg, received=received)  # None: not used (as live)
                st.read += used is not None
                st.ignored += used is None
                t_now = t_log * 1e-9 if opts.clock == "log" else conv.header_stamp(msg)
            except Exception as e:  # noqa: BLE001 - a malformed message is counted, not fatal
                st.read += 1
                st.rejected += 1
                if st.rejected <= 3:
                    log.warning("rejected a message on %s: %s", conn.topic, e)
                t_now = t_log * 1e-9 if opts.clock == "log" else now
            if not math.isfinite(now) or t_now < now - sync_cfg.reset_jump_s:
                now = t_now  # the start, or a looped recording (the collector resets itself)
            else:
                now = max(now, t_now)
            emit(collector.poll(now))
        if math.isfinite(now):
            # flush the frames still waiting for their delay at the end of what was read
            emit(collector.poll(now + sync_cfg.delay_s + sync_cfg.lookahead_s + 1e-3))
    except KeyboardInterrupt:  # ctrl-C: finish the output with the frames done so far
        summary.interrupted = True
    finally:
        bar.close()
    try:
        writer.close()  # index and metadata.yaml: a readable bag
    except OSError as e:
        raise OutputError(f"--out {out}: finishing the bag failed ({_os_reason(e)})") from None
    summary.wall_s = time.perf_counter() - t_wall
    summary.sync = collector.stats()
    try:
        pipe.backend.close()
    except Exception as e:  # noqa: BLE001 - the output is finished: keep it
        log.warning("closing the backend failed: %s: %s", type(e).__name__, e)
    return summary
