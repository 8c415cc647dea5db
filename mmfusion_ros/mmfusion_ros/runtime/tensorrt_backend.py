"""TensorRT backend: the engine for Jetson and other CUDA GPUs.

tensorrt and cuda-python are imported only when this backend is created (JetPack provides
tensorrt; cuda-python is the CUDA runtime binding NVIDIA's own TensorRT Python samples use, and
keeps the node free of torch and pycuda). Uses the name-based tensor API (`num_io_tensors`,
`get_tensor_name`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`), which TensorRT has
had since 8.5 (so JetPack 5.1's 8.5/8.6 and JetPack 6's 8.6/10.x all work); the binding-index API it
replaced was removed in 10.0.

Engines are built once per (ONNX file, TensorRT version, GPU, precision, profile) and cached; see
engine_cache.py for the key.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .backend import Backend
from .engine_cache import (PRECISIONS, engine_cache_key, engine_path, file_sha256, resolve_cache_dir)
from .manifest import ENCODER_PARTS, Manifest

log = logging.getLogger(__name__)


@dataclass
class TrtOptions:
    """Settings of the TensorRT backend (backend.* parameters of the node)."""

    precision: str = "fp16"  # fp16, int8 (encoders INT8 with calibration, other parts FP16) or fp32
    engine_cache_dir: str = ""  # absolute folder for engines; empty = ~/.cache/mmfusion_ros/engines
    force_engine_update: bool = False  # rebuild engines even when a cached one matches
    max_batch: int = 8  # optimisation profile covers batch 1..max_batch
    workspace_mb: int = 1024  # builder workspace memory pool limit
    calibration_data: str = ""  # int8 only: a `mmfusion sim dataset` folder whose samples calibrate the encoders
    calibration_samples: int = 256  # int8 only: how many samples to calibrate on
    device_id: int = 0  # CUDA device index

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.max_batch <= 256:
            raise ValueError(f"max_batch must be in 1..256, got {self.max_batch}")
        if self.workspace_mb < 16:
            raise ValueError(f"workspace_mb must be at least 16, got {self.workspace_mb}")
        if self.precision == "int8" and not self.calibration_data:
            raise ValueError("precision int8 needs calibration_data: a dataset folder written by "
                             "`mmfusion sim dataset --out DIR`")
        resolve_cache_dir(self.engine_cache_dir)


def import_tensorrt():
    """The tensorrt module, or ImportError with what to install."""
    try:
        import tensorrt as trt  # noqa: WPS433 (lazy on purpose: absent on machines without a GPU)
    except ImportError as e:
        raise ImportError(f"tensorrt is not installed ({e}); on a Jetson it comes with JetPack "
                          f"(python3-libnvinfer), elsewhere `pip install tensorrt`") from e
    return trt


def import_cudart():
    """cuda-python's runtime module (new and old import paths)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ImportError("the TensorRT backend needs cuda-python for device memory "
                              "(`pip install cuda-python` matching your CUDA major version)") from e
    return cudart


def _ck(result):
    """Unpack a cuda-python call's (err, *values) tuple, raising on error."""
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_info(device_id: int = 0) -> Tuple[str, Tuple[int, int]]:
    """(GPU name, (major, minor) compute capability) of a CUDA device; RuntimeError when none."""
    cudart = import_cudart()
    count = _ck(cudart.cudaGetDeviceCount())
    if count < 1 or device_id >= count:
        raise RuntimeError(f"no CUDA device {device_id} (found {count})")
    props = _ck(cudart.cudaGetDeviceProperties(device_id))
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name), (int(props.major), int(props.minor))


def cuda_gpu_present() -> Tuple[bool, str]:
    """Whether a CUDA GPU can be used, and why not (for the factory's log)."""
    try:
        name, cc = gpu_info(0)
    except ImportError as e:
        return False, str(e)
    except Exception as e:  # driver missing, no device, ...
        return False, f"no usable CUDA GPU ({e})"
    return True, f"{name} (sm{cc[0]}{cc[1]})"


def profile_shapes(manifest: Manifest, part: str, max_batch: int) -> Dict[str, Tuple[tuple, tuple, tuple]]:
    """{input name: (min, opt, max) shape} for one part's optimisation profile.

    Batch is 1..max_batch (optimised for 1, the live case); the event head's history length and the
    caption decoder's token count range up to the manifest's event_history_len / caption_max_len.
    """
    out = {}
    for name, io in manifest.inputs(part).items():
        lo, opt, hi = [], [], []
        for d, dim in enumerate(io["shape"]):
            if d == 0:
                lo.append(1), opt.append(1), hi.append(max_batch)
            elif isinstance(dim, int):
                lo.append(dim), opt.append(dim), hi.append(dim)
            elif part == "event_head":
                t = int(manifest["event_history_len"])
                lo.append(1), opt.append(t), hi.append(t)
            else:  # caption tokens (L) or any other sequence dim
                n = int(manifest["caption_max_len"])
                lo.append(1), opt.append(max(1, n // 2)), hi.append(n)
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def load_calibration_batches(manifest: Manifest, part: str, dataset_dir: str, n_samples: int,
                             batch: int) -> List[Dict[str, np.ndarray]]:
    """Preprocessed encoder inputs from a simulator dataset (docs/architecture.md format), batched."""
    from ..core.pipeline import preprocess_config_from_manifest
    from ..core.preprocess import preprocess_image  # numpy only

    pre = preprocess_config_from_manifest(manifest)

    modality = next(m for m, p in ENCODER_PARTS.items() if p == part)
    ds = Path(dataset_dir).expanduser()
    meta = json.loads((ds / "manifest.json").read_text())
    shards = [s for split in ("train", "val") for s in meta["splits"].get(split, [])]
    if not shards:
        raise ValueError(f"{ds}: dataset has no train/val shards to calibrate on")
    xs = []
    have = 0
    for shard in shards:
        with np.load(ds / shard) as z:
            a = z[modality]
        if modality == "camera":
            a = np.stack([preprocess_image(im, pre) for im in a[: n_samples - have]])  # (n, 3, S, S) the model's size
        xs.append(np.asarray(a[: n_samples - have], np.float32))
        have += len(xs[-1])
        if have >= n_samples:
            break
    x = np.concatenate(xs)  # (N, ...)
    (name,) = manifest.inputs(part).keys()
    usable = (len(x) // batch) * batch
    if usable == 0:
        raise ValueError(f"{ds}: only {len(x)} samples, need at least one batch of {batch} to calibrate")
    return [{name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, usable, batch)]


def _make_calibrator(trt, cudart, batches: List[Dict[str, np.ndarray]], cache_file: Path):
    """An entropy calibrator (TensorRT's recommended one) that feeds the given batches."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._size = len(next(iter(batches[0].values())))
            # one device buffer per input, allocated once and reused for every batch
            self._dev = {k: _ck(cudart.cudaMalloc(v.nbytes)) for k, v in batches[0].items()}

        def get_batch_size(self):
            return self._size

        def get_batch(self, names):
            try:
                b = next(self._batches)
            except StopIteration:
                return None
            for k, v in b.items():
                _ck(cudart.cudaMemcpy(self._dev[k], v.ctypes.data, v.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self._dev[n]) for n in names]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

        def free(self):
            for p in self._dev.values():
                cudart.cudaFree(p)
            self._dev = {}

    return _Calibrator()


def build_engine(manifest: Manifest, part: str, out_path: Path, options: TrtOptions) -> Path:
    """Parse the part's ONNX, build a serialized engine with the profile and precision, write it atomically."""
    trt = import_tensorrt()
    onnx_path = manifest.part_path(part)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # explicit batch is the only mode in TensorRT 10 (flag deprecated); 8.x needs it set
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(manifest, part, options.max_batch)
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise RuntimeError(f"{onnx_path}: input {name!r} is not in the manifest")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    calibrator = None
    if options.precision in ("fp16", "int8"):
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            log.warning("this GPU has no fast FP16; building %s in FP32", part)
    if options.precision == "int8" and part in ENCODER_PARTS.values():
        cudart = import_cudart()
        # TensorRT calibrates at the calibration profile's kOPT shape, so batches have the opt batch size
        opt_batch = shapes[next(iter(shapes))][1][0]
        batches = load_calibration_batches(manifest, part, options.calibration_data,
                                           options.calibration_samples, batch=opt_batch)
        calibrator = _make_calibrator(trt, cudart, batches, out_path.with_suffix(".calib"))
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {part} from {onnx_path} (see its log above)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out_path)  # atomic: a concurrent reader never sees half an engine
    return out_path


def engine_file_for(manifest: Manifest, part: str, options: TrtOptions,
                    gpu: Optional[Tuple[str, Tuple[int, int]]] = None, trt_version: Optional[str] = None) -> Path:
    """Cache path of the engine this machine needs for a part."""
    if trt_version is None:
        trt_version = import_tensorrt().__version__
    name, cc = gpu or gpu_info(options.device_id)
    profile = json.dumps(profile_shapes(manifest, part, options.max_batch), sort_keys=True)
    if options.precision == "int8":
        profile += f"|calib={Path(options.calibration_data).expanduser().resolve()}:{options.calibration_samples}"
    key = engine_cache_key(file_sha256(manifest.part_path(part)), trt_version, name, cc, options.precision, profile)
    return engine_path(resolve_cache_dir(options.engine_cache_dir), part, key)


def ensure_engine(manifest: Manifest, part: str, options: TrtOptions) -> Tuple[Path, bool]:
    """(engine path, built now?) building it when missing or when force_engine_update is set."""
    path = engine_file_for(manifest, part, options)
    if path.is_file() and not options.force_engine_update:
        return path, False
    log.warning("building TensorRT engine for %s (first build can take minutes) -> %s", part, path)
    build_engine(manifest, part, path, options)
    return path, True


class _PartEngine:
    """One deserialized engine with its context and device buffers (allocated once, for max shapes)."""

    def __init__(self, trt, cudart, runtime, path: Path, shapes: Dict[str, tuple]):
        self.cudart = cudart
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {path} (built by another TensorRT version or corrupt)")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = [], []
        self.dtypes: Dict[str, np.dtype] = {}
        self.device: Dict[str, int] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dt = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.dtypes[name] = dt
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        # size outputs by setting every input to its max shape once
        for name in self.inputs:
            self.context.set_input_shape(name, shapes[name][2])
        for name in self.inputs + self.outputs:
            shape = tuple(shapes[name][2]) if name in self.inputs else tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.device[name] = int(_ck(cudart.cudaMalloc(max(nbytes, 1))))
            self.context.set_tensor_address(name, self.device[name])
        self.max_batch = shapes[self.inputs[0]][2][0]

    def run(self, inputs: Dict[str, np.ndarray], stream) -> Dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hold = []
        for name in self.inputs:
            a = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])  # int64 tokens -> int32 on TRT 8.x
            if a.shape[0] > self.max_batch:
                raise ValueError(f"batch {a.shape[0]} exceeds the engine's max batch {self.max_batch}")
            hold.append(a)
            if not self.context.set_input_shape(name, a.shape):
                raise ValueError(f"input {name} shape {a.shape} is outside the engine's profile")
            _ck(cudart.cudaMemcpyAsync(self.device[name], a.ctypes.data, a.nbytes, h2d, stream))
        outs = {}
        for name in self.outputs:
            outs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
        if not self.context.execute_async_v3(int(stream)):  # TensorRT takes the raw cudaStream_t handle
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name, a in outs.items():
            _ck(cudart.cudaMemcpyAsync(a.ctypes.data, self.device[name], a.nbytes, d2h, stream))
        _ck(cudart.cudaStreamSynchronize(stream))
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in outs.items()}

    def free(self) -> None:
        for p in self.device.values():
            self.cudart.cudaFree(p)
        self.device = {}
        self.context = None
        self.engine = None


class TensorRTBackend(Backend):
    """Runs every part through a cached TensorRT engine on one CUDA device."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, options: Optional[TrtOptions] = None, text_encoder=None):
        super().__init__(manifest, text_encoder)
        self.options = options or TrtOptions()
        self.options.validate()
        trt = import_tensorrt()
        version = tuple(int(x) for x in trt.__version__.split(".")[:2] if x.isdigit())
        if version < (8, 5):
            # the binding-index API of older releases is not implemented (JetPack 5.1+ ships 8.5 or newer)
            raise RuntimeError(f"TensorRT {trt.__version__} is too old: the name-based tensor API "
                               f"(execute_async_v3) needs TensorRT >= 8.5")
        cudart = import_cudart()
        self.cudart = cudart
        self.gpu = gpu_info(self.options.device_id)
        _ck(cudart.cudaSetDevice(self.options.device_id))
        self.stream = _ck(cudart.cudaStreamCreate())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.parts: Dict[str, _PartEngine] = {}
        self.built: List[str] = []
        try:
            for part in manifest["parts"]:
                path, built = ensure_engine(manifest, part, self.options)
                if built:
                    self.built.append(part)
                shapes = profile_shapes(manifest, part, self.options.max_batch)
                try:
                    self.parts[part] = _PartEngine(trt, cudart, self._runtime, path, shapes)
                except RuntimeError as e:
                    # a corrupt or foreign cache file: rebuild once instead of failing the node
                    log.warning("%s; rebuilding", e)
                    build_engine(manifest, part, path, self.options)
                    self.parts[part] = _PartEngine(trt, cudart, self._runtime, path, shapes)
        except Exception:
            self.close()
            raise
        log.info("TensorRT %s backend on %s (sm%d%d), %s, engines in %s%s", trt.__version__, self.gpu[0],
                 *self.gpu[1], self.options.precision, resolve_cache_dir(self.options.engine_cache_dir),
                 f" (built now: {self.built})" if self.built else "")

    def run_part(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        eng = self.parts.get(part)
        if eng is None:
            raise RuntimeError(f"backend is closed or has no part {part!r}")
        return eng.run(inputs, self.stream)

    def describe(self) -> str:
        return f"tensorrt {self.options.precision} on {self.gpu[0]}"

    def close(self) -> None:
        for eng in self.parts.values():
            eng.free()
        self.parts = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
