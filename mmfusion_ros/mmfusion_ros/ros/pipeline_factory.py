"""`open_pipeline(model_dir, params)`: backend + prompt embeddings + perception + Pipeline, assembled one way.

The fusion node, `mmfusion process`, `mmfusion eval-kitti`, the benchmarks and (through the node) the
demo all call it, so a parameter means the same thing everywhere: backend options, which prompts use
the bundle's precomputed embeddings, when the text encoder is needed, where the camera-LiDAR
extrinsics come from and what happens when they cannot be read. `params` are node parameter values
(ros/params.py names; missing ones take the node's defaults). No rclpy and no torch here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.inputs import output_topics

log = logging.getLogger(__name__)
_FROM_PARAMS: Any = object()  # "not given": take it from the parameters


def resolve_params(params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Node parameter values with the node's defaults filled in, validated (ParamError names the bad one)."""
    values = P.defaults()
    values.update(params or {})
    return P.validate(values)


def backend_options(values: Dict[str, Any], backend_type: str) -> Dict[str, Any]:
    """create_backend keyword options from the backend.* parameters (only those the backend takes)."""
    options: Dict[str, Any] = {}
    if values["backend.intra_op_threads"] and backend_type in ("auto", "onnxruntime", "tensorrt"):
        options["intra_op_threads"] = values["backend.intra_op_threads"]  # ORT (also TensorRT's fallback)
    if backend_type in ("auto", "tensorrt"):
        options["engine_cache_dir"] = str(P.engine_cache_dir(values["backend.engine_cache_dir"]))
        options["force_engine_update"] = values["backend.force_engine_update"]
    if backend_type == "torch" and values["backend.intra_op_threads"]:
        options["threads"] = values["backend.intra_op_threads"]
    return options


def open_backend(model_dir: Union[str, Path], values: Dict[str, Any]):
    """runtime.create_backend with backend.type and its options; FileNotFoundError for a folder that is not a bundle."""
    from mmfusion_ros.runtime import create_backend

    model_dir = Path(model_dir)
    if not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"model bundle {model_dir} has no manifest.json")
    kind = values["backend.type"]
    return create_backend(str(model_dir), kind, **backend_options(values, kind))


class PromptEmbedder:
    """Prompt texts -> (labels, (P, D) embeddings): the bundle's prompts.json where a text matches, the
    torch-free text encoder (opened on first need, then kept) for the others. Thread-safe, so the node
    can embed a SetPrompts request on a worker thread."""

    def __init__(self, model_dir: Union[str, Path], text_encoder: Optional[Callable[[], Any]] = None):
        from mmfusion_ros.runtime.prompts import load_bundle_prompts, open_text_encoder

        self.model_dir = Path(model_dir)
        self.bundle = load_bundle_prompts(self.model_dir)  # {text: (label, (D,) embedding)}
        self._open = text_encoder or (lambda: open_text_encoder(self.model_dir))
        self._encoder = None
        self._lock = threading.Lock()

    def _text_encoder(self):
        if self._encoder is None:
            self._encoder = self._open()
        return self._encoder

    def embed(self, prompts: Sequence[str]) -> Tuple[List[str], np.ndarray]:
        from mmfusion_ros.runtime.prompts import embed_prompts

        with self._lock:  # one text encoder, one caller at a time
            return embed_prompts(prompts, self.bundle, self._text_encoder)

    def bundle_defaults(self) -> Tuple[List[str], np.ndarray]:
        """Every prompt of prompts.json, in its order (what eval-kitti labels with)."""
        import json

        path = self.model_dir / "prompts.json"
        texts = [str(e["text"]) for e in json.loads(path.read_text()).get("prompts", [])] if path.is_file() else []
        if not texts:
            raise FileNotFoundError(f"{self.model_dir / 'prompts.json'}: no prompts")
        return self.embed(texts)

    def close(self) -> None:
        self._encoder = None


def load_T_cam_lidar(values: Dict[str, Any]) -> Optional[np.ndarray]:
    """(4, 4) LiDAR -> camera optical frame from perception.extrinsics_file ("" = the installed
    config/extrinsics.yaml). A file that is given but unreadable is a ParamError, live and offline alike;
    only a missing default file means "no camera labels for 3D objects" (logged)."""
    from mmfusion_ros.core.perception import load_extrinsics

    given = values["perception.extrinsics_file"]
    try:
        path = P.extrinsics_file(given)
    except FileNotFoundError as e:
        log.warning("3D objects are not labelled through the camera: %s", e)
        return None
    try:
        return load_extrinsics(path)
    except Exception as e:  # noqa: BLE001 - unreadable or invalid file: name the parameter
        raise P.ParamError("perception.extrinsics_file", f"{path}: {e}") from None


def objects_wanted(values: Dict[str, Any]) -> bool:
    """3D objects are published in perception and drawn in markers: with both switched off nobody sees them."""
    return bool(values["perception.enabled"]) and bool({"perception", "markers"} & set(output_topics(values)))


def make_perception(values: Dict[str, Any]):
    """core.perception.Perception from the perception.* parameters, or None when perception.enabled is false
    (or no output that shows objects is switched on)."""
    if not objects_wanted(values):
        return None
    from mmfusion_ros.core.perception import Perception, PerceptionConfig

    return Perception(PerceptionConfig.from_dict(P.perception_dict(values)))


def pipeline_config(values: Dict[str, Any]):
    """core.pipeline.PipelineConfig from the pipeline.* parameters, validated; an output switched off (empty
    topic) skips its work: no caption decoding without topics.caption, no event head without topics.events."""
    from mmfusion_ros.core.pipeline import PipelineConfig

    kw = P.pipeline_kwargs(values)
    outputs = output_topics(values)
    if "caption" not in outputs:
        kw["caption_every_n"] = 0
    if "events" not in outputs:
        kw["enable_events"] = False
    kw["enable_perception"] = objects_wanted(values)
    return PipelineConfig(**kw).validate()


def open_pipeline(model_dir: Optional[Union[str, Path]] = None, params: Optional[Dict[str, Any]] = None, *,
                  backend: Any = None, prompts: Optional[Tuple[List[str], np.ndarray]] = None,
                  embedder: Optional[PromptEmbedder] = None, T_cam_lidar: Any = _FROM_PARAMS):
    """A ready core.pipeline.Pipeline for the bundle in `model_dir` (None = model.dir, else the shipped one).

    backend: an open backend to use (the caller keeps ownership), else one is opened from backend.*.
    prompts: (labels, embeddings) already embedded, else model.prompts are embedded once now.
    T_cam_lidar: the camera-LiDAR transform to use (None = no camera labels), else perception.extrinsics_file.
    On failure a backend opened here is closed again. The Pipeline's `backend` is the one to close.
    """
    from mmfusion_ros.core.pipeline import Pipeline

    values = resolve_params(params)
    model_dir = Path(model_dir) if model_dir else P.resolve_model_dir(values["model.dir"])
    cfg = pipeline_config(values)
    perception = make_perception(values)
    if T_cam_lidar is _FROM_PARAMS:
        T_cam_lidar = load_T_cam_lidar(values) if objects_wanted(values) else None
    own = backend is None
    if own:
        backend = open_backend(model_dir, values)
    try:
        if prompts is None:
            prompts = (embedder or PromptEmbedder(model_dir)).embed(values["model.prompts"])
        labels, emb = prompts
        return Pipeline(backend, cfg, labels, emb, perception=perception, T_cam_lidar=T_cam_lidar)
    except BaseException:
        if own:
            backend.close()
        raise
