"""The fusion node's parameters: one table that declares them, validates them and holds their defaults.

config/mmfusion.yaml carries the same defaults (test/test_node_params.py checks that the two agree), so
a robot runs the same with or without the params file. Values are read and validated when the node is
configured: a bad value fails the configure transition with a message naming the parameter, instead of
crashing the process at start-up, so every parameter is declared with dynamic typing and checked here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mmfusion_ros.core.types import SENSOR_MODALITIES
from mmfusion_ros.ros.inputs import INPUTS, OPTIONAL_OUTPUTS, OUTPUTS, resolve_type

#: Name of the node (and of the key in config/mmfusion.yaml, written `/**/mmfusion` so it applies in any namespace).
NODE_NAME = "mmfusion"
#: Bundle shipped in the package share directory, used when `model.dir` is empty.
SHIPPED_MODEL = "mmfusion_small"
#: Sensor inputs the node subscribes to: name -> default topic (relative, so the node's namespace applies);
#: a view of the one table in ros/inputs.py.
INPUT_TOPICS: Dict[str, str] = {n: s.topic for n, s in INPUTS.items()}
#: Outputs: name -> default topic.
OUTPUT_TOPICS: Dict[str, str] = {n: s.topic for n, s in OUTPUTS.items()}
#: Outputs published only where their message package is installed (vision_msgs): name -> default topic.
OPTIONAL_OUTPUT_TOPICS: Dict[str, str] = {n: s.topic for n, s in OPTIONAL_OUTPUTS.items()}
#: Inputs that carry a continuous stream cut into windows: every message matters, so they queue a few.
STREAM_INPUTS = tuple(n for n, s in INPUTS.items() if s.stream)
#: perception.* parameters the node itself uses (the others are PerceptionConfig fields).
NODE_ONLY_PERCEPTION = ("perception.enabled", "perception.extrinsics_file", "perception.extrinsics_from_tf")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
TRIGGERS = ("rate",) + tuple(m.value for m in SENSOR_MODALITIES)
RELIABILITY = ("best_effort", "reliable")


#: The object classes phrased naturally: the texts of the shipped bundle's prompts.json (model/prompts.py
#: writes it; test_node_params.py checks the two lists agree), so the defaults need no text encoder.
DEFAULT_PROMPTS: List[str] = [
    "a person walking nearby",
    "a dog nearby",
    "a car on the road",
    "a bicycle",
    "a traffic cone",
    "a cardboard box on the ground",
    "a chair",
    "a door",
    "an alarm ringing",
]


def default_prompts() -> List[str]:
    return list(DEFAULT_PROMPTS)


@dataclass(frozen=True)
class ParamSpec:
    """One row of the parameter table."""

    name: str  # dotted ROS parameter name, e.g. "sync.rate_hz"
    default: Any  # default value; its Python type is the parameter's type (bool, int, float, str, list of str)
    description: str  # one line shown by `ros2 param describe`
    choices: Tuple[str, ...] = ()  # allowed values of a string parameter (empty: any)
    min: Optional[float] = None  # inclusive lower bound of a number
    max: Optional[float] = None  # inclusive upper bound of a number
    min_exclusive: bool = False  # True: the value must be strictly greater than `min`

    @property
    def kind(self) -> str:
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, str):
            return "str"
        return "str_list"

    def check(self, value: Any) -> Any:
        """Return the value in this parameter's type, or raise ParamError saying what is wrong with it."""
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise ParamError(self.name, f"expected true or false, got {value!r}")
            return value
        if kind in ("int", "float"):
            ok_types = (int,) if kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_types):
                raise ParamError(self.name, f"expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
            v = int(value) if kind == "int" else float(value)
            if v != v or v in (float("inf"), float("-inf")):
                raise ParamError(self.name, f"expected a finite number, got {value!r}")
            if self.min is not None and (v < self.min or (self.min_exclusive and v == self.min)):
                raise ParamError(self.name, f"{v} is out of range (must be {'>' if self.min_exclusive else '>='} {self.min})")
            if self.max is not None and v > self.max:
                raise ParamError(self.name, f"{v} is out of range (must be <= {self.max})")
            return v
        if kind == "str":
            if not isinstance(value, str):
                raise ParamError(self.name, f"expected a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise ParamError(self.name, f"{value!r} is not one of {', '.join(self.choices)}")
            return value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ParamError(self.name, f"expected a list of strings, got {value!r}")
        return list(value)


class ParamError(ValueError):
    """A parameter value the node cannot run with; the message names the parameter."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name
        self.problem = problem


def _field_comments(cls) -> Dict[str, str]:
    """{field: its trailing `# comment`} from a dataclass's source (the yaml repeats them)."""
    import inspect
    import re

    src = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=\n]+= [^#\n]+#\s*(.*)$", src, re.M)}


#: SyncConfig fields that are not node parameters: the model's rates come from the bundle, frame_id is the node's.
SYNC_NOT_PARAMS = ("audio_rate", "imu_rate", "frame_id")
#: What a SyncConfig field's comment does not say: a description written for users, bounds, choices.
SYNC_ROWS: Dict[str, Dict[str, Any]] = {
    "trigger": dict(description="when a frame is fused: 'rate' (fixed rate) or on each message of a modality",
                    choices=TRIGGERS),
    "rate_hz": dict(description="fused frames per second when sync.trigger is 'rate'", min=0.0, min_exclusive=True,
                    max=1000.0),
    "audio_window_s": dict(description="seconds of audio in each frame", min=0.0, min_exclusive=True),
    "imu_window_s": dict(description="seconds of IMU samples in each frame", min=0.0, min_exclusive=True),
    "buffer_s": dict(min=0.0, min_exclusive=True),
    "max_messages": dict(min=1, max=1000),
    "lookahead_s": dict(min=0.0, max=1.0),
    "delay_s": dict(description="longest a frame waits past its time: it is cut as soon as every live input has "
                    "delivered data past it (a watermark per input), at the latest after this",
                    min=0.0, max=1.0),
    "reset_jump_s": dict(min=0.0, min_exclusive=True),
    "clock_offset_threshold_s": dict(min=0.0, min_exclusive=True),
}
for _m in ("camera", "lidar", "audio", "imu"):
    SYNC_ROWS[f"{_m}_timeout_s"] = dict(description=f"seconds after which {_m} is left out of a frame (and "
                                                    f"reported stale)", min=0.0, min_exclusive=True)
#: PipelineConfig fields that are not node parameters (perception.enabled switches perception; the event
#: history comes from the bundle's manifest).
PIPELINE_NOT_PARAMS = ("enable_perception", "event_history_len", "event_history_step")
PIPELINE_ROWS: Dict[str, Dict[str, Any]] = {
    "top_k": dict(description="labels published per frame", min=1, max=100),
    "caption_every_n": dict(description="generate a caption every n fused frames (reused in between); 0 = no "
                            "captions", min=0),
    "label_temperature": dict(min=0.0, min_exclusive=True),
    "event_alpha": dict(min=0.0, min_exclusive=True, max=1.0),
    "event_off_ratio": dict(min=0.0, min_exclusive=True, max=1.0),
}


def _sync_config():
    from mmfusion_ros.core.sync import SyncConfig

    return SyncConfig


def _pipeline_config():
    try:
        from mmfusion_ros.core.pipeline import PipelineConfig
    except ImportError:  # a checkout without the pipeline: no pipeline.* parameters
        return None
    return PipelineConfig


#: Plausibility bounds at conversion (ros/conversions.py Limits): all strictly positive.
LIMITS_ROWS: Dict[str, Dict[str, Any]] = {
    f: dict(min=0.0, min_exclusive=True) for f in ("audio_max_abs", "lidar_max_range_m", "imu_max_accel",
                                                   "imu_max_gyro")}


def _limits_config():
    from mmfusion_ros.ros.conversions import Limits

    return Limits


def _sync_param_name(field: str) -> str:
    """SyncConfig field -> parameter: camera_timeout_s -> sync.timeout.camera (the group users know), else sync.<f>."""
    for m in SENSOR_MODALITIES:
        if field == f"{m.value}_timeout_s":
            return f"sync.timeout.{m.value}"
    return f"sync.{field}"


#: parameter name -> (dataclass, field) of every parameter derived from a core dataclass
DERIVED: Dict[str, Tuple[str, str]] = {}


def _dataclass_rows(group: str, cls, skip: Sequence[str], extra: Dict[str, Dict[str, Any]], name_of) -> List[ParamSpec]:
    """One parameter per simple field of a core config dataclass, default and description from the class
    (its field comment) unless `extra` says more: the node and the library cannot drift apart."""
    if cls is None:
        return []
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        if f.name in skip or not isinstance(default, (bool, int, float, str)):
            continue
        kw = dict(extra.get(f.name, {}))
        description = kw.pop("description", None) or comments.get(f.name, f"{cls.__name__}.{f.name}")
        name = name_of(f.name)
        DERIVED[name] = (group.rstrip("."), f.name)
        rows.append(ParamSpec(name, default, description, **kw))
    return rows


def _table() -> List[ParamSpec]:
    P = ParamSpec
    rows = [
        P("autostart", True, "configure and activate on start-up (false: wait for a lifecycle manager)"),
        P("frame_id", "base_link", "frame of the LiDAR cloud and of the output objects and markers"),
        P("model.dir", "", "model bundle folder; empty = the shipped bundle in the package share directory"),
        P("model.prompts", default_prompts(), "open-vocabulary label prompts; embedded once on activate"),
        P("backend.type", "auto", "inference backend (auto: TensorRT when a GPU is usable, else ONNX Runtime)",
          choices=BACKENDS),
        P("backend.engine_cache_dir", "", "TensorRT engine cache; empty = ~/.cache/mmfusion_ros/engines"),
        P("backend.force_engine_update", False, "rebuild TensorRT engines even when a cached one matches"),
        P("backend.intra_op_threads", 1, "CPU threads per inference call (1 leaves cores to the drivers and "
          "the rest of the node: on a shared 2-core CPU it was 3x faster than the default); 0 = the backend's "
          "default (all cores)", min=0),
    ]
    rows += _dataclass_rows("sync.", _sync_config(), SYNC_NOT_PARAMS, SYNC_ROWS, _sync_param_name)
    for name in INPUT_TOPICS:
        stream = name in STREAM_INPUTS
        rows.append(P(f"qos.{name}.reliability", "best_effort",
                      f"{name} subscription reliability (best_effort also accepts reliable publishers)",
                      choices=RELIABILITY))
        rows.append(P(f"qos.{name}.depth", 10 if stream else 1,
                      f"{name} subscription queue depth" + (" (a stream: every message is part of a window)"
                                                            if stream else " (newest wins)"), min=1, max=1000))
    for name, topic in list(INPUT_TOPICS.items()) + list(OUTPUT_TOPICS.items()) + list(OPTIONAL_OUTPUT_TOPICS.items()):
        rows.append(P(f"topics.{name}", topic, f"{name} topic (relative names follow the namespace; empty = off)"))
    for name, spec in INPUTS.items():
        if spec.alternatives:  # an input that accepts several message types: which one to subscribe with
            rows.append(P(f"types.{name}", spec.msgtype, f"{name} message type: one of {', '.join(spec.msgtypes)} "
                                                         f"(or its bare name); its package must be installed"))
    rows += [
        P("prompts.max_count", 256, "most prompts a SetPrompts request may carry (embedding them takes time and "
          "memory)", min=1, max=100000),
        P("prompts.max_length", 200, "most characters in one prompt", min=1, max=10000),
        P("perception.enabled", True, "cluster the LiDAR cloud into labelled 3D objects"),
        P("perception.extrinsics_file", "", "LiDAR-to-camera extrinsics YAML (config/extrinsics.yaml format); "
                                            "empty = that file, the simulated robot's"),
        P("perception.extrinsics_from_tf", True, "take the LiDAR-to-camera transform from /tf_static and /tf "
                                                 "(between the cloud's and the camera's frame_id) when they have "
                                                 "it; the extrinsics file otherwise"),
        P("diagnostics.period_s", 1.0, "seconds between /diagnostics messages", min=0.0, min_exclusive=True),
    ]
    rows += _dataclass_rows("pipeline.", _pipeline_config(), PIPELINE_NOT_PARAMS, PIPELINE_ROWS,
                            lambda f: f"pipeline.{f}")
    rows += _dataclass_rows("limits.", _limits_config(), (), LIMITS_ROWS, lambda f: f"limits.{f}")
    rows += _perception_rows()
    seen: Dict[str, ParamSpec] = {}
    for r in rows:  # a row written by hand wins over one derived from a dataclass
        seen.setdefault(r.name, r)
    return list(seen.values())


def _perception_rows() -> List[ParamSpec]:
    """perception.<field> (and perception.tracking.<field>) for every simple field of
    core.perception.PerceptionConfig, with its defaults, when that module exists."""
    try:
        from mmfusion_ros.core.perception import PerceptionConfig
    except ImportError:
        return []
    rows: List[ParamSpec] = []

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            elif isinstance(v, (bool, int, float, str)) and f"{prefix}{f.name}" not in NODE_ONLY_PERCEPTION:
                rows.append(ParamSpec(f"{prefix}{f.name}", v, f"PerceptionConfig {prefix[11:]}{f.name}"))

    walk(PerceptionConfig(), "perception.")
    return rows


#: The table: every parameter the node declares, in declaration order.
PARAMS: List[ParamSpec] = _table()
SPECS: Dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults() -> Dict[str, Any]:
    """{parameter name: default value} (what config/mmfusion.yaml must hold too)."""
    return {p.name: p.default for p in PARAMS}


def validate(values: Dict[str, Any]) -> Dict[str, Any]:
    """Check every value against its row (and the cross-parameter rules); raise ParamError on the first problem."""
    out = {}
    for p in PARAMS:
        out[p.name] = p.check(values.get(p.name, p.default))
    prompts = check_prompts(out["model.prompts"], out)
    if out["pipeline.top_k"] > len(prompts):
        raise ParamError("pipeline.top_k", f"{out['pipeline.top_k']} is more than the {len(prompts)} prompts")
    if out["model.dir"] and not Path(os.path.expanduser(out["model.dir"])).is_dir():
        raise ParamError("model.dir", f"{out['model.dir']!r} is not a folder")
    if out["perception.extrinsics_file"] and not Path(os.path.expanduser(out["perception.extrinsics_file"])).is_file():
        raise ParamError("perception.extrinsics_file", f"{out['perception.extrinsics_file']!r} is not a file")
    for name, spec in INPUTS.items():
        if spec.alternatives:
            try:
                out[f"types.{name}"] = resolve_type(name, out[f"types.{name}"])
            except ValueError as e:
                raise ParamError(f"types.{name}", str(e).split(": ", 1)[1]) from None
    inputs = [n for n in INPUT_TOPICS if INPUTS[n].group not in ("camera_info", "audio_info") and out[f"topics.{n}"]]
    if not inputs:
        raise ParamError("topics.*", "every sensor input is switched off")
    return out


def check_prompts(prompts: List[str], values: Dict[str, Any]) -> List[str]:
    """Stripped prompts, or ParamError: non-empty, distinct, and within prompts.max_count / max_length
    (a request of 10,000 long prompts would hold a text encoder for seconds and grow every frame's labels)."""
    prompts = [str(s).strip() for s in prompts]
    if not prompts or any(not s for s in prompts):
        raise ParamError("model.prompts", "needs at least one non-empty prompt")
    if len(set(prompts)) != len(prompts):
        raise ParamError("model.prompts", "has duplicate prompts")
    most, longest = values.get("prompts.max_count", 256), values.get("prompts.max_length", 200)
    if len(prompts) > most:
        raise ParamError("model.prompts", f"{len(prompts)} prompts are more than prompts.max_count ({most})")
    long = [p for p in prompts if len(p) > longest]
    if long:
        raise ParamError("model.prompts", f"{len(long)} prompts are longer than prompts.max_length ({longest} "
                                          f"characters), e.g. {long[0][:40]!r}...")
    return prompts


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested YAML mapping -> {dotted name: value}, the way ROS reads a params file."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def default_model_dir() -> Path:
    """The shipped bundle: the installed share directory first, else this source tree (never the cwd)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("mmfusion_ros")) / "models" / SHIPPED_MODEL)
    except Exception:  # noqa: BLE001 - not installed / AMENT_PREFIX_PATH unset: try the source tree
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "models" / SHIPPED_MODEL)
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    raise FileNotFoundError(
        "the shipped model bundle was not found (looked in " + ", ".join(str(c) for c in candidates)
        + "); set the parameter model.dir to a bundle folder")


def extrinsics_file(value: str) -> Path:
    """`perception.extrinsics_file`, or config/extrinsics.yaml from the share directory (else this source tree)."""
    if value:
        return Path(os.path.expanduser(value))
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("mmfusion_ros")) / "config" / "extrinsics.yaml")
    except Exception:  # noqa: BLE001 - not installed: the source tree
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "config" / "extrinsics.yaml")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError("config/extrinsics.yaml not found; set perception.extrinsics_file")


def resolve_model_dir(value: str) -> Path:
    """`model.dir` as given (with ~ expanded), or the shipped bundle when empty."""
    return Path(os.path.expanduser(value)).resolve() if value else default_model_dir()


def engine_cache_dir(value: str) -> Path:
    """`backend.engine_cache_dir`, or the per-user cache (never /tmp or the working directory)."""
    return Path(os.path.expanduser(value or "~/.cache/mmfusion_ros/engines"))


def sync_kwargs(values: Dict[str, Any]) -> Dict[str, Any]:
    """The sync.* parameters as keyword arguments of core.sync.SyncConfig."""
    return {field: values[name] for name, (group, field) in DERIVED.items() if group == "sync" and name in values}


def pipeline_kwargs(values: Dict[str, Any]) -> Dict[str, Any]:
    """The pipeline.* parameters (and perception.enabled) as keyword arguments of core.pipeline.PipelineConfig."""
    out = {field: values[name] for name, (group, field) in DERIVED.items() if group == "pipeline" and name in values}
    out["enable_perception"] = bool(values.get("perception.enabled", True))
    return out


def perception_dict(values: Dict[str, Any]) -> Dict[str, Any]:
    """perception.* values (without the node's own ones) as the nested dict PerceptionConfig.from_dict takes."""
    out: Dict[str, Any] = {}
    for name, v in values.items():
        if not name.startswith("perception.") or name in NODE_ONLY_PERCEPTION:
            continue
        keys = name.split(".")[1:]
        d = out
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = v
    return out


def perception_yaml() -> str:
    """The perception group of config/mmfusion.yaml, written from PerceptionConfig (defaults and comments)."""
    from mmfusion_ros.core.perception import PerceptionConfig
    from mmfusion_ros.core.tracking import TrackerConfig

    notes = {"": _field_comments(PerceptionConfig), "tracking.": _field_comments(TrackerConfig)}
    lines = ["    perception:".ljust(36) + "# 3D objects from the LiDAR (core/perception.py PerceptionConfig)",
             "      enabled: true".ljust(36) + "# cluster the LiDAR cloud into labelled 3D objects",
             '      extrinsics_file: ""'.ljust(36) + '# LiDAR-to-camera extrinsics (config/extrinsics.yaml format); "" = that',
             " " * 36 + "# file, the simulated robot's: give your robot's calibration here",
             "      extrinsics_from_tf: true".ljust(36) + "# /tf_static and /tf first (cloud frame -> camera frame),",
             " " * 36 + "# the file above when TF has no such transform"]
    group = None
    for p in PARAMS:
        if not p.name.startswith("perception.") or p.name in NODE_ONLY_PERCEPTION:
            continue
        keys = p.name.split(".")[1:]
        if len(keys) == 2 and keys[0] != group:
            group = keys[0]
            lines.append(f"      {group}:".ljust(36) + "# object tracking (core/tracking.py TrackerConfig)")
        v = p.default
        text = ("true" if v else "false") if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else repr(v))
        note = notes["tracking." if len(keys) == 2 else ""].get(keys[-1], "")
        line = ("      " + "  " * (len(keys) - 1) + f"{keys[-1]}: {text}").ljust(36)
        lines.append((line + (f"# {note}" if note else "")).rstrip())
    return "\n".join(lines) + "\n"


def sync_yaml_perception(path: Path) -> bool:
    """Rewrite the perception group of a params file like config/mmfusion.yaml; True when it changed."""
    import re

    text = Path(path).read_text()
    start = text.index("\n    perception:") + 1
    nxt = re.compile(r"^ {0,4}\S", re.M).search(text, text.index("\n", start) + 1)  # the next sibling key
    end = nxt.start() - 1 if nxt else len(text) - 1
    new = text[:start] + perception_yaml() + text[end + 1:]
    if new != text:
        Path(path).write_text(new)
    return new != text


if __name__ == "__main__":  # python -m mmfusion_ros.ros.params --sync-yaml [FILE]: after PerceptionConfig changes
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--sync-yaml":
        target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "config" / "mmfusion.yaml"
        print(f"{target}: {'updated' if sync_yaml_perception(target) else 'already in sync'}")
    else:
        print(perception_yaml(), end="")
