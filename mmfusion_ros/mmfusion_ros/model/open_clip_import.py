"""Import open_clip (open_clip_torch) where its torchvision dependency has no matching compiled ops.

open_clip imports torchvision for its image transforms and FrozenBatchNorm2d. On a machine whose only
torchvision wheel was built for a CUDA torch (this project's CPU build machines: torch 2.13.0+cpu beside
torchvision 0.28.0+cu130), torchvision's C extension cannot load, and its import then fails in
``_meta_registrations`` because the ``torchvision::nms``/``qnms`` operator schemas were never defined. We
never call those detection ops, so declaring their two schemas (no kernels) lets torchvision import
with its Python parts only; any call to nms would still fail with torchvision's own "Couldn't load custom
C++ ops" error. Nothing is done when torchvision imports normally.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

_SCHEMAS = {  # the two operators torchvision registers fake kernels for unconditionally
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBS = []  # keep the torch.library fragments alive for the life of the process


def ensure_torchvision() -> None:
    """Make `import torchvision` work (see the module docstring); transformers imports it too when it is
    installed, so the MiniLM text model calls this before importing sentence-transformers. A missing
    torchvision is left missing (ImportError for whoever needs it)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        import torch

        for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported package would otherwise stay broken
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            try:
                lib.define(schema)
            except RuntimeError:  # already defined by an earlier attempt in this process
                pass
        _LIBS.append(lib)
        log.info("torchvision's compiled ops do not match torch %s (%s); importing its Python parts only",
                 torch.__version__, e)
        import torchvision  # noqa: F401,F811


def import_open_clip():
    """The open_clip module; a clear ImportError naming the install when it is missing."""
    ensure_torchvision()
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"`mmfusion towers import` needs open_clip_torch ({e}): "
                          f"pip install open_clip_torch==3.3.0 (in requirements.txt)") from e
    return open_clip
