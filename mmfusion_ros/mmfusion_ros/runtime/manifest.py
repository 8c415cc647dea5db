"""Read and check a model bundle's manifest.json: everything the runtime needs without torch.

A bundle that fails here would otherwise fail later with an opaque onnxruntime or TensorRT message
(or, worse, run with mismatched vocab or event order), so every key the runtime relies on is
checked once, with the file and key named in the error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

#: The parts the robot runs, as named in docs/architecture.md.
ENCODER_PARTS = {
    "camera": "camera_encoder",
    "lidar": "lidar_encoder",
    "audio": "audio_encoder",
    "imu": "imu_encoder",
}
HEAD_PARTS = ["fusion", "event_head", "caption_decoder"]
PARTS = list(ENCODER_PARTS.values()) + HEAD_PARTS

#: Special token indices of the caption vocabulary.
PAD, BOS, EOS, UNK = 0, 1, 2, 3

SUPPORTED_FORMAT_VERSIONS = (1,)

_REQUIRED = {
    "format_version": int,
    "name": str,
    "embed_dim": int,
    "modalities": list,
    "parts": dict,
    "logit_scale": (int, float),
}
#: keys a head needs, required when the bundle has that head (every bundle but an unbound tower bundle)
_REQUIRED_BY_PART = {
    "event_head": {"event_types": list, "horizons": list, "event_history_len": int,
                   "event_history_step": (int, float), "event_thresholds": dict},
    "caption_decoder": {"vocab": list, "caption_max_len": int},
}
_DTYPES = {"float32", "int64", "int32", "float16", "bool"}


class ManifestError(ValueError):
    """The bundle's manifest.json is missing, unreadable or inconsistent (the message says where)."""


class Manifest(dict):
    """The parsed manifest.json (a dict) plus the bundle folder it came from.

    Stays a dict so callers can read any key (``m["vocab"]``); the properties below name the keys
    the runtime itself uses.
    """

    def __init__(self, data: Dict[str, Any], model_dir: Path):
        super().__init__(data)
        self.model_dir = Path(model_dir)

    @property
    def embed_dim(self) -> int:
        return int(self["embed_dim"])

    @property
    def towers(self) -> Dict[str, Any]:
        """The `towers` entry of a bundle built on a frozen pretrained image-text model; {} otherwise."""
        return dict(self.get("towers") or {})

    def has_part(self, part: str) -> bool:
        return part in self["parts"]

    @property
    def text_dir(self) -> Optional[Path]:
        """The bundle's own text tower folder (tower bundles), else None (the MiniLM text encoder)."""
        t = self.towers.get("text")
        return self.model_dir / str(t) if t else None

    @property
    def modalities(self) -> List[str]:
        return list(self["modalities"])

    @property
    def vocab(self) -> List[str]:
        return list(self["vocab"])

    @property
    def event_types(self) -> List[str]:
        return list(self["event_types"])

    @property
    def horizons(self) -> List[float]:
        return [float(h) for h in self["horizons"]]

    def part_path(self, part: str) -> Path:
        """Absolute path of a part's ONNX file."""
        if part not in self["parts"]:
            raise KeyError(f"model {self['name']!r} has no part {part!r} (it has {sorted(self['parts'])})")
        return self.model_dir / self["parts"][part]["file"]

    def inputs(self, part: str) -> Dict[str, dict]:
        """{input name: {"shape": [...], "dtype": str}} in the part's input order."""
        return self["parts"][part]["inputs"]

    def outputs(self, part: str) -> Dict[str, dict]:
        return self["parts"][part]["outputs"]


def _fail(path: Path, msg: str) -> ManifestError:
    return ManifestError(f"{path}: {msg}")


def _check_io(path: Path, part: str, kind: str, spec: Any) -> None:
    if not isinstance(spec, dict) or not spec:
        raise _fail(path, f"parts.{part}.{kind} must be a non-empty object of name -> {{shape, dtype}}")
    for name, io in spec.items():
        where = f"parts.{part}.{kind}.{name}"
        if not isinstance(io, dict) or "shape" not in io or "dtype" not in io:
            raise _fail(path, f"{where} needs 'shape' and 'dtype'")
        shape = io["shape"]
        if not isinstance(shape, list) or not shape:
            raise _fail(path, f"{where}.shape must be a non-empty list, got {shape!r}")
        for d in shape:
            if not (isinstance(d, str) or (isinstance(d, int) and d > 0)):
                raise _fail(path, f"{where}.shape has {d!r}; dims are positive ints or symbolic names like 'B'")
        if shape[0] != "B":
            raise _fail(path, f"{where}.shape must start with the dynamic batch dim 'B', got {shape!r}")
        if io["dtype"] not in _DTYPES:
            raise _fail(path, f"{where}.dtype {io['dtype']!r} is not one of {sorted(_DTYPES)}")


def validate(data: Dict[str, Any], path: Path, check_files: bool = True) -> None:
    """Raise ManifestError naming the first problem found; return None when the manifest is usable."""
    required = dict(_REQUIRED)
    parts = data.get("parts") if isinstance(data.get("parts"), dict) else {}
    for part, keys in _REQUIRED_BY_PART.items():
        if part in parts or "towers" not in data:
            required.update(keys)
    for key, typ in required.items():
        if key not in data:
            raise _fail(path, f"missing key {key!r}")
        if not isinstance(data[key], typ) or isinstance(data[key], bool):
            raise _fail(path, f"{key!r} has type {type(data[key]).__name__}, expected {typ}")
    if data["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(path, f"format_version {data['format_version']} is not supported "
                          f"(this runtime reads {SUPPORTED_FORMAT_VERSIONS}); re-export the model")
    if data["embed_dim"] <= 0:
        raise _fail(path, f"embed_dim must be positive, got {data['embed_dim']}")
    unknown = [m for m in data["modalities"] if m not in ENCODER_PARTS]
    if unknown:
        raise _fail(path, f"modalities {unknown} are not sensor modalities {list(ENCODER_PARTS)}")
    parts = data["parts"]
    model_dir = path.parent
    if "towers" in data:
        _check_towers(data, path, check_files)
    else:
        missing = [p for p in PARTS if p not in parts]
        if missing:
            raise _fail(path, f"parts {missing} are missing (a bundle has {PARTS})")
    for part, spec in parts.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("file"), str):
            raise _fail(path, f"parts.{part} needs a 'file' (path relative to the bundle)")
        _check_io(path, part, "inputs", spec.get("inputs"))
        _check_io(path, part, "outputs", spec.get("outputs"))
        if check_files and not (model_dir / spec["file"]).is_file():
            raise _fail(path, f"parts.{part}.file {spec['file']!r} does not exist in {model_dir}")
        if part in ENCODER_PARTS.values():
            width = (spec["outputs"].get("embedding") or {}).get("shape", [None, None])[-1]
            if isinstance(width, int) and width != data["embed_dim"]:
                raise _fail(path, f"parts.{part} ({spec['file']}) embeds into {width} dims but the bundle's space "
                                  f"has embed_dim {data['embed_dim']} (an encoder bound to another tower?)")
    if "event_head" in parts:
        _check_events(data, path)
    if "caption_decoder" in parts:
        vocab = data["vocab"]
        if len(vocab) < 5 or not all(isinstance(t, str) for t in vocab):
            raise _fail(path, "vocab must be a list of at least 5 token strings (PAD, BOS, EOS, UNK, ...)")
        if data["caption_max_len"] < 2:
            raise _fail(path, f"caption_max_len must be at least 2, got {data['caption_max_len']}")


def _check_towers(data: Dict[str, Any], path: Path, check_files: bool) -> None:
    """A tower bundle: the camera is the frozen image tower; the other sensors' encoders exist once bound,
    and the heads come all together (binding trains them) or not at all."""
    towers, parts = data["towers"], data["parts"]
    if not isinstance(towers, dict) or not isinstance(towers.get("text"), str):
        raise _fail(path, "towers must be an object naming the text tower folder ('text')")
    if "camera" not in data["modalities"]:
        raise _fail(path, "a tower bundle's modalities must include camera (the image tower)")
    missing = [ENCODER_PARTS[m] for m in data["modalities"] if m in ENCODER_PARTS and ENCODER_PARTS[m] not in parts]
    if missing:
        raise _fail(path, f"parts {missing} are missing for the bound modalities {data['modalities']}")
    heads = [p for p in HEAD_PARTS if p in parts]
    if heads and len(heads) != len(HEAD_PARTS):
        raise _fail(path, f"a tower bundle has all of {HEAD_PARTS} (bound) or none (imported), not {heads}")
    if check_files:
        from .text_encoder import ONNX_FILE, TOKENIZER_FILE

        for f in (ONNX_FILE, TOKENIZER_FILE):
            p = path.parent / towers["text"] / f
            if not p.is_file():
                raise _fail(path, f"the text tower file {p} is missing (towers.text = {towers['text']!r}); "
                                  f"re-run `mmfusion towers import`")


def _check_events(data: Dict[str, Any], path: Path) -> None:
    if not data["event_types"] or not data["horizons"]:
        raise _fail(path, "event_types and horizons must be non-empty")
    if any(not isinstance(h, (int, float)) or h <= 0 for h in data["horizons"]):
        raise _fail(path, f"horizons must be positive seconds, got {data['horizons']}")
    if data["event_history_len"] <= 0 or data["event_history_step"] <= 0:
        raise _fail(path, "event_history_len and event_history_step must be positive")
    extra = set(data["event_thresholds"]) - set(data["event_types"])
    if extra:
        raise _fail(path, f"event_thresholds names unknown event types {sorted(extra)}")
    for k, v in data["event_thresholds"].items():
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise _fail(path, f"event_thresholds.{k} must be a probability in [0, 1], got {v!r}")


def load_manifest(model_dir: Union[str, Path], check_files: bool = True) -> Manifest:
    """Parse ``model_dir/manifest.json`` (or a path to the file itself) and validate it."""
    p = Path(model_dir).expanduser()
    path = p if p.name == "manifest.json" else p / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no manifest.json in {path.parent} (is this a model bundle? export one with "
                            f"`mmfusion export --model CKPT --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: top level must be a JSON object")
    validate(data, path, check_files=check_files)
    return Manifest(data, path.parent.resolve())
