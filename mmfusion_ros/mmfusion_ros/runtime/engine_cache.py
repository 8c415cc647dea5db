"""Where TensorRT engines are cached and what makes two engines interchangeable (pure, no tensorrt).

An engine is only valid for the exact ONNX file, TensorRT version, GPU model and compute capability
and precision it was built with, so all of these go into its file name: a stale engine is never
loaded, and a new JetPack or a different board simply builds a new one beside the old.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

PRECISIONS = ("fp32", "fp16", "int8")


def default_cache_dir() -> Path:
    """~/.cache/mmfusion_ros/engines (XDG_CACHE_HOME respected): per user, never /tmp or the cwd."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mmfusion_ros" / "engines"


def resolve_cache_dir(path: Optional[Union[str, Path]]) -> Path:
    """The configured cache folder, or the default when empty; a relative path is an error.

    A relative path would depend on the directory the node was started from, so two launches could
    silently use two caches (or a shared one); refuse it instead of guessing.
    """
    if path is None or str(path).strip() == "":
        return default_cache_dir()
    p = Path(str(path)).expanduser()
    if not p.is_absolute():
        raise ValueError(f"engine_cache_dir must be an absolute path (or empty for {default_cache_dir()}), "
                         f"got {str(path)!r}")
    return p


def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: Sequence[int],
                     precision: str, profile: str = "") -> str:
    """File-name-safe key naming everything an engine depends on.

    ``profile`` is a description of the optimisation profile (batch and sequence ranges); it is hashed
    in so changing max batch rebuilds rather than reusing an engine that rejects the new shapes.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256 or ""):
        raise ValueError(f"onnx_sha256 must be a hex sha256 digest, got {onnx_sha256!r}")
    cc = "".join(str(int(c)) for c in compute_capability)
    prof = hashlib.sha256(profile.encode()).hexdigest()[:8]
    return f"{onnx_sha256[:16]}-trt{_slug(trt_version)}-{_slug(gpu_name)}-sm{cc}-{precision}-p{prof}"


def engine_path(cache_dir: Union[str, Path], part: str, key: str) -> Path:
    return Path(cache_dir) / f"{part}-{key}.engine"
