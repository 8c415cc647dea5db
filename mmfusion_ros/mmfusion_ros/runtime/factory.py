"""The one way to get a Backend: pick the engine, apply options, fall back to ONNX Runtime with the reason."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .backend import Backend
from .manifest import load_manifest

log = logging.getLogger(__name__)

BACKEND_TYPES = ("auto", "tensorrt", "onnxruntime", "torch")


def _split_options(cls, options: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """Build an options dataclass from the keys it has; return it and the keys it did not use."""
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {k: v for k, v in options.items() if k in names}
    return cls(**mine), {k: v for k, v in options.items() if k not in names}


def _all_option_names() -> set:
    from .onnxruntime_backend import OrtOptions
    from .tensorrt_backend import TrtOptions
    from .torch_backend import TorchOptions

    return {f.name for c in (OrtOptions, TrtOptions, TorchOptions) for f in dataclasses.fields(c)}


def tensorrt_usable() -> Tuple[bool, str]:
    """Whether auto should try TensorRT, and why (for the log). Imports nothing heavy."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed"
    from .tensorrt_backend import cuda_gpu_present

    ok, why = cuda_gpu_present()
    return ok, (f"tensorrt and a CUDA GPU are present: {why}" if ok else why)


def create_backend(model_dir: Union[str, Path], backend_type: str = "auto", text_encoder=None,
                   fallback: bool = True, **options) -> Backend:
    """Open a model bundle with the requested engine.

    backend_type: "auto" (TensorRT when it imports and a CUDA GPU is present, else ONNX Runtime),
    "tensorrt", "onnxruntime" or "torch". options: fields of OrtOptions / TrtOptions / TorchOptions
    (e.g. intra_op_threads, precision, engine_cache_dir, force_engine_update); an unknown name is an
    error. When TensorRT is chosen but missing or its build fails, ``fallback`` (default) logs the
    reason and returns ONNX Runtime instead; ``fallback=False`` raises.
    text_encoder: an optional TextEncoder used for caption confidence.
    """
    if backend_type not in BACKEND_TYPES:
        raise ValueError(f"backend_type must be one of {BACKEND_TYPES}, got {backend_type!r}")
    unknown = set(options) - _all_option_names()
    if unknown:
        raise TypeError(f"unknown backend options {sorted(unknown)}; known: {sorted(_all_option_names())}")
    manifest = load_manifest(model_dir)

    if backend_type == "auto":
        ok, why = tensorrt_usable()
        backend_type = "tensorrt" if ok else "onnxruntime"
        log.info("backend auto -> %s (%s)", backend_type, why)

    if backend_type == "tensorrt":
        from .tensorrt_backend import TensorRTBackend, TrtOptions

        trt_opts, _ = _split_options(TrtOptions, options)
        trt_opts.validate()  # a bad setting is the user's error, not a reason to fall back
        try:
            return TensorRTBackend(manifest, trt_opts, text_encoder)
        except Exception as e:  # missing tensorrt/cuda-python, no GPU, parse or build failure
            if not fallback:
                raise
            log.warning("TensorRT backend unavailable (%s: %s); falling back to ONNX Runtime", type(e).__name__, e)
            backend_type = "onnxruntime"

    if backend_type == "torch":
        from .torch_backend import TorchOptions, torch_backend_class

        torch_opts, _ = _split_options(TorchOptions, options)
        return torch_backend_class()(manifest, torch_opts, text_encoder)

    from .onnxruntime_backend import OnnxRuntimeBackend, OrtOptions

    ort_opts, _ = _split_options(OrtOptions, options)
    return OnnxRuntimeBackend(manifest, ort_opts, text_encoder)
