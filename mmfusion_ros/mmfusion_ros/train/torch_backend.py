"""PyTorch backend: the reference the exported engines are checked against, and a training-time tool.

It runs the model package's own modules (model.export.part_specs of a checkpoint), so it lives in train/,
the layer that may import both runtime/ and model/: runtime/ finds it through the package's
`mmfusion_ros.backends` entry point (setup.py) only when backend type "torch" is asked for, and the
robot's path (ros -> core -> runtime with ONNX Runtime or TensorRT) never imports torch or model/.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np

from mmfusion_ros.runtime.backend import Backend
from mmfusion_ros.runtime.manifest import Manifest
from mmfusion_ros.runtime.torch_backend import TorchOptions

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    """Runs the same per-part modules the exporter traced (model.export.part_specs), eagerly."""

    name = "torch"

    def __init__(self, manifest: Manifest, options: Optional[TorchOptions] = None, text_encoder=None):
        super().__init__(manifest, text_encoder)
        import torch

        from mmfusion_ros.model.checkpoint import load_checkpoint
        from mmfusion_ros.model.export import part_specs

        if manifest.towers:
            raise ValueError(f"{manifest.model_dir}: a tower bundle (frozen {manifest.towers.get('source', {}).get('arch')} "
                             f"towers as ONNX) runs with backend.type onnxruntime or tensorrt, not torch")
        self.options = options or TorchOptions()
        self._torch = torch
        if self.options.threads > 0:
            torch.set_num_threads(int(self.options.threads))
        ckpt = self.options.checkpoint or str(manifest.model_dir / "checkpoint.pt")
        model, vocab, info = load_checkpoint(ckpt)
        if list(vocab.tokens) != manifest.vocab:
            raise ValueError(f"{ckpt}: its vocab differs from {manifest.model_dir}/manifest.json (re-export the bundle)")
        want = manifest.get("checkpoint_sha256")
        if want and info.get("sha256") and info["sha256"] != want:
            log.warning("checkpoint %s sha256 %s differs from the one the bundle was exported from (%s)",
                        ckpt, info["sha256"][:12], want[:12])
        self.device = torch.device(self.options.device)
        self.model = model.to(self.device).eval()
        self.modules = {p: s["module"].eval() for p, s in part_specs(self.model).items()}
        log.info("torch %s backend for %s on %s", torch.__version__, manifest["name"], self.device)

    def run_part(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        torch = self._torch
        mod = self.modules.get(part)
        if mod is None:
            raise RuntimeError(f"backend is closed or has no part {part!r}")
        names = list(self.manifest.inputs(part))
        args = [torch.from_numpy(inputs[n]).to(self.device) for n in names]
        with torch.inference_mode():
            out = mod(*args)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return {n: o.detach().float().cpu().numpy() for n, o in zip(self.manifest.outputs(part), out)}

    def describe(self) -> str:
        return f"torch {self._torch.__version__} eager on {self.device}"

    def close(self) -> None:
        self.modules = {}
        self.model = None
