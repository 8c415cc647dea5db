"""ONNX Runtime backend: the engine for machines without a GPU (and a CUDA option where one exists).

One InferenceSession per part, made once at construction: creating a session optimises the graph,
which takes far longer than a run, so it must never happen per frame. Never imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import onnxruntime as ort

from .backend import Backend
from .manifest import Manifest

log = logging.getLogger(__name__)


@dataclass
class OrtOptions:
    """Settings of the ONNX Runtime backend (backend.* parameters of the node)."""

    intra_op_threads: int = 0  # threads inside one operator; 0 = onnxruntime's default (all cores)
    inter_op_threads: int = 1  # threads across independent operators (only used in parallel mode)
    use_cuda: bool = False  # ask for the CUDA execution provider (falls back to CPU with a warning)
    device_id: int = 0  # CUDA device index when use_cuda
    optimization_level: str = "all"  # graph optimisations: "all" (ORT_ENABLE_ALL), "extended", "basic", "none"
    spin_wait: bool = True  # idle intra-op threads busy-wait for work (onnxruntime's default). Off saves CPU,
    #                         but with >1 thread on a busy 2-core machine each call then waits for its threads
    #                         to wake: fused tick 13.9 ms instead of 1.3 ms p50 (1 thread: 1.0 ms) in one test

    def validate(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError(f"thread counts must be >= 0 (0 = default), got intra={self.intra_op_threads} "
                             f"inter={self.inter_op_threads}")
        if self.optimization_level not in _OPT_LEVELS:
            raise ValueError(f"optimization_level {self.optimization_level!r} not in {sorted(_OPT_LEVELS)}")


_OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def session_options(opts: OrtOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _OPT_LEVELS[opts.optimization_level]
    so.intra_op_num_threads = int(opts.intra_op_threads)
    so.inter_op_num_threads = int(opts.inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: shape-inference warnings on dynamic dims are noise here
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spin_wait else "0")
    return so


def providers_for(opts: OrtOptions) -> list:
    """CPU always; CUDA first when asked and this onnxruntime build has it (warn when it does not)."""
    available = ort.get_available_providers()
    if opts.use_cuda:
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": int(opts.device_id)}), "CPUExecutionProvider"]
        log.warning("backend asked for CUDA but this onnxruntime has only %s (install onnxruntime-gpu); "
                    "running on the CPU", available)
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """Runs every part of a bundle with onnxruntime InferenceSessions created once."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, options: Optional[OrtOptions] = None, text_encoder=None):
        super().__init__(manifest, text_encoder)
        self.options = options or OrtOptions()
        self.options.validate()
        so = session_options(self.options)
        providers = providers_for(self.options)
        self.sessions: Dict[str, ort.InferenceSession] = {}
        self._outputs: Dict[str, list] = {}
        for part in manifest["parts"]:
            path = manifest.part_path(part)
            try:
                sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
                self.close()
                raise RuntimeError(f"onnxruntime cannot load {part} from {path}: {e}") from e
            names = [i.name for i in sess.get_inputs()]
            want = list(manifest.inputs(part))
            if sorted(names) != sorted(want):
                self.close()
                raise RuntimeError(f"{path}: ONNX inputs {names} differ from the manifest's {want}")
            self.sessions[part] = sess
            self._outputs[part] = [o.name for o in sess.get_outputs()]
        self.providers = self.sessions[next(iter(self.sessions))].get_providers() if self.sessions else []
        log.info("onnxruntime %s backend for %s: %d parts, providers %s, intra-op threads %s",
                 ort.__version__, manifest["name"], len(self.sessions), self.providers,
                 self.options.intra_op_threads or "default")

    def run_part(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        sess = self.sessions.get(part)
        if sess is None:
            raise RuntimeError(f"backend is closed or has no part {part!r}")
        names = self._outputs[part]
        return dict(zip(names, sess.run(names, inputs)))

    def describe(self) -> str:
        return (f"onnxruntime {ort.__version__} ({', '.join(self.providers)}; "
                f"intra-op threads {self.options.intra_op_threads or 'default'})")

    def close(self) -> None:
        self.sessions.clear()
