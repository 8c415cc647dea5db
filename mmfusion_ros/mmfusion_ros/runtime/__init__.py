"""runtime layer: one Backend interface over TensorRT, ONNX Runtime and PyTorch (docs/architecture.md).

Importing this package imports numpy only; onnxruntime, tensorrt and torch load when a backend or
the TextEncoder is created, so the robot's process never loads torch.
"""

from __future__ import annotations

from .backend import Backend
from .factory import BACKEND_TYPES, create_backend
from .manifest import Manifest, ManifestError, load_manifest


def __getattr__(name):
    # TextEncoder imports onnxruntime and tokenizers: only when asked for
    if name == "TextEncoder":
        from .text_encoder import TextEncoder

        return TextEncoder
    raise AttributeError(name)


__all__ = ["Backend", "BACKEND_TYPES", "Manifest", "ManifestError", "TextEncoder", "create_backend", "load_manifest"]
