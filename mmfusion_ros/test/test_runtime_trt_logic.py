"""The TensorRT backend's own logic on a machine without a GPU: engine build, cache hit/miss/force, corrupt
cache recovery, device-buffer plumbing and dtype casts, driven through stand-ins for `tensorrt` and
cuda-python's `cudart` that follow their APIs (a fake engine computes with onnxruntime; "device memory"
is host memory). What this cannot show - real TensorRT parsing, FP16 numerics, speed - is covered by the
gpu-marked tests in test_parity.py, which run only where tensorrt and a GPU are present.
"""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np
import onnxruntime as ort
import pytest

from mmfusion_ros.runtime import create_backend, load_manifest
from mmfusion_ros.runtime import tensorrt_backend as tb


# --- cuda-python stand-in: pointers are addresses of ctypes buffers ---------------------------------
def make_cudart():
    mem = {}
    cr = types.SimpleNamespace()
    cr.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cr.frees = []

    def malloc(n):
        buf = ctypes.create_string_buffer(int(n))
        mem[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def memcpy(dst, src, n, kind, stream=None):
        ctypes.memmove(int(dst), int(src), int(n))
        return (0,)

    cr.cudaGetDeviceCount = lambda: (0, 1)
    cr.cudaGetDeviceProperties = lambda d: (0, types.SimpleNamespace(name=b"Fake Orin\0\0", major=8, minor=7))
    cr.cudaSetDevice = lambda d: (0,)
    cr.cudaStreamCreate = lambda: (0, 7)
    cr.cudaStreamDestroy = lambda s: (0,)
    cr.cudaStreamSynchronize = lambda s: (0,)
    cr.cudaMalloc = malloc
    cr.cudaFree = lambda p: (cr.frees.append(p), mem.pop(int(p), None), (0,))[-1]
    cr.cudaMemcpy = lambda d, s, n, k: memcpy(d, s, n, k)
    cr.cudaMemcpyAsync = memcpy
    return cr


# --- tensorrt stand-in --------------------------------------------------------------------------------
def make_trt(builds: list):
    trt = types.SimpleNamespace(__version__="10.3.0")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.DataType = types.SimpleNamespace(FLOAT="f32", INT32="i32")
    trt.nptype = lambda dt: {"f32": np.float32, "i32": np.int32}[dt]
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            self.path = path
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.network.inputs = [i.name for i in sess.get_inputs()]
            self.network.path = path
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pool = set(), [], {}

        def set_memory_pool_limit(self, kind, n):
            self.pool[kind] = n

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_flag(self, f):
            self.flags.add(f)

        def set_calibration_profile(self, p):
            assert p in self.profiles

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calib = getattr(config, "int8_calibrator", None)
            fed = []
            if calib is not None:  # what TensorRT does: pull batches until None, reading the device buffers
                name = network.inputs[0]
                per = int(np.prod(config.profiles[0].shapes[name][1]))  # opt shape
                while (ptrs := calib.get_batch([name])) is not None:
                    assert calib.get_batch_size() == config.profiles[0].shapes[name][1][0]
                    fed.append(np.frombuffer(ctypes.string_at(ptrs[0], per * 4), np.float32).copy())
            builds.append({"path": network.path, "flags": set(config.flags), "shapes": config.profiles[0].shapes,
                           "calibration": fed})
            return json.dumps({"onnx": network.path, "shapes": config.profiles[0].shapes}).encode()

    class Context:
        def __init__(self, eng):
            self.eng, self.shapes, self.addr = eng, {}, {}

        def set_input_shape(self, name, shape):
            lo, _, hi = self.eng.profile[name]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def _zeros(self):
            return {n: np.zeros(self.shapes[n], np.int64 if self.eng.dtypes[n] == "i32" else np.float32)
                    for n in self.eng.inputs}

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            outs = self.eng.sess.run([name], self._zeros())
            return outs[0].shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            feeds = {}
            for n in self.eng.inputs:
                dt = trt.nptype(self.eng.dtypes[n])
                shape = self.shapes[n]
                nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
                raw = ctypes.string_at(self.addr[n], nbytes)
                a = np.frombuffer(raw, dt).reshape(shape)
                feeds[n] = a.astype(np.int64) if dt == np.int32 else a
            for n, v in zip(self.eng.outputs, self.eng.sess.run(self.eng.outputs, feeds)):
                v = np.ascontiguousarray(v, np.float32)
                ctypes.memmove(self.addr[n], v.ctypes.data, v.nbytes)
            return True

    class Engine:
        def __init__(self, doc):
            self.sess = ort.InferenceSession(doc["onnx"], providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.sess.get_inputs()]
            self.outputs = [o.name for o in self.sess.get_outputs()]
            # like TensorRT 8.x, int64 token inputs become int32 engine tensors
            self.dtypes = {i.name: ("i32" if "int64" in i.type else "f32") for i in self.sess.get_inputs()}
            self.dtypes.update({o: "f32" for o in self.outputs})
            self.profile = {k: tuple(tuple(x) for x in v) for k, v in doc["shapes"].items()}

        @property
        def num_io_tensors(self):
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_mode(self, name):
            return "in" if name in self.inputs else "out"

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None  # what TensorRT returns for a foreign or corrupt plan

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    builds = []
    cudart = make_cudart()
    monkeypatch.setattr(tb, "import_tensorrt", lambda: make_trt(builds))
    monkeypatch.setattr(tb, "import_cudart", lambda: cudart)
    return types.SimpleNamespace(builds=builds, cudart=cudart)


def test_engines_built_once_cached_and_forced(random_model_dir, tmp_path, fake_gpu):
    cache = tmp_path / "engines"
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache))
    parts = list(b.manifest["parts"])
    assert b.name == "tensorrt" and sorted(b.built) == sorted(parts)
    assert len(fake_gpu.builds) == len(parts)
    assert all("fp16" in x["flags"] for x in fake_gpu.builds)
    cam = next(x for x in fake_gpu.builds if x["path"].endswith("camera_encoder.onnx"))
    assert cam["shapes"]["camera"] == ((1, 3, 128, 128), (1, 3, 128, 128), (8, 3, 128, 128))
    files = sorted(p.name for p in cache.glob("*.engine"))
    assert len(files) == len(parts) and all("fake-orin-sm87-fp16" in f for f in files)
    b.close()
    assert fake_gpu.cudart.frees  # device buffers released on close

    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache))
    assert b.built == [] and len(fake_gpu.builds) == len(parts)  # all from the cache
    b.close()
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache),
                       force_engine_update=True)
    assert sorted(b.built) == sorted(parts) and len(fake_gpu.builds) == 2 * len(parts)
    b.close()
    # another precision is another engine, never the fp16 one
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache), precision="fp32")
    assert sorted(b.built) == sorted(parts)
    assert len(list(cache.glob("*-fp32-*.engine"))) == len(parts)
    b.close()


def test_corrupt_cached_engine_is_rebuilt(random_model_dir, tmp_path, fake_gpu):
    cache = tmp_path / "engines"
    create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache)).close()
    victim = next(cache.glob("fusion-*.engine"))
    victim.write_bytes(b"garbage")
    n = len(fake_gpu.builds)
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache))
    assert len(fake_gpu.builds) == n + 1 and victim.read_bytes() != b"garbage"
    b.close()


def test_device_buffers_carry_inputs_and_outputs(random_model_dir, tmp_path, fake_gpu):
    """Every part through the buffer plumbing equals onnxruntime on the same inputs, including the
    int64 -> int32 token cast, batch 1..8, and a clear error past the profile's max batch."""
    trt_b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(tmp_path / "e"))
    ort_b = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1)
    m = load_manifest(random_model_dir)
    rng = np.random.default_rng(0)
    for part in m["parts"]:
        for batch in (1, 8):
            ins = {}
            for name, io in m.inputs(part).items():
                dims = [batch if d == "B" else 4 if isinstance(d, str) else d for d in io["shape"]]
                ins[name] = (rng.integers(4, len(m.vocab), size=dims) if io["dtype"] == "int64"
                             else rng.standard_normal(dims)).astype(np.int64 if io["dtype"] == "int64" else np.float32)
            a, b = ort_b.run(part, ins), trt_b.run(part, ins)
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"{part}.{k}")
    assert trt_b.caption(np.eye(384, dtype=np.float32)[0]) == ort_b.caption(np.eye(384, dtype=np.float32)[0])
    with pytest.raises(ValueError, match="max batch 8"):
        trt_b.encode("imu", np.zeros((9, 6, 400), np.float32))
    trt_b.close()
    with pytest.raises(RuntimeError, match="closed"):
        trt_b.encode("imu", np.zeros((1, 6, 400), np.float32))


def test_build_failure_falls_back_with_reason(random_model_dir, tmp_path, fake_gpu, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("TensorRT failed to build an engine for camera_encoder")

    monkeypatch.setattr(tb, "build_engine", broken)
    with caplog.at_level("WARNING", logger="mmfusion_ros.runtime"):
        b = create_backend(random_model_dir, "tensorrt", engine_cache_dir=str(tmp_path / "e"))
    assert b.name == "onnxruntime"
    assert any("falling back to ONNX Runtime" in r.getMessage() and "failed to build" in r.getMessage()
               for r in caplog.records)


def test_int8_calibrates_encoders_on_dataset_samples(random_model_dir, tmp_path, fake_gpu):
    """INT8: each encoder is calibrated on preprocessed samples of a simulator dataset; other parts FP16."""
    from mmfusion_ros.core.preprocess import image_normalise

    ds = tmp_path / "ds"
    ds.mkdir()
    rng = np.random.default_rng(0)
    n = 5
    arrays = {"camera": rng.integers(0, 255, (n, 128, 128, 3), dtype=np.uint8),
              "lidar": rng.random((n, 4, 128, 128)).astype(np.float16),
              "audio": rng.random((n, 1, 64, 101)).astype(np.float16),
              "imu": rng.random((n, 6, 400)).astype(np.float16)}
    np.savez(ds / "train-0.npz", **arrays)
    (ds / "manifest.json").write_text(json.dumps({"format_version": 1, "splits": {"train": ["train-0.npz"], "val": []}}))
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(tmp_path / "e"),
                       precision="int8", calibration_data=str(ds), calibration_samples=4)
    by_part = {x["path"].rsplit("/", 1)[-1][:-5]: x for x in fake_gpu.builds}
    for part in ("camera_encoder", "lidar_encoder", "audio_encoder", "imu_encoder"):
        assert {"int8", "fp16"} <= by_part[part]["flags"]
        assert len(by_part[part]["calibration"]) == 4  # 4 samples at the profile's opt batch of 1
    np.testing.assert_allclose(by_part["camera_encoder"]["calibration"][1],
                               image_normalise(arrays["camera"][1]).ravel(), rtol=1e-6)
    np.testing.assert_allclose(by_part["imu_encoder"]["calibration"][0],
                               arrays["imu"][0].astype(np.float32).ravel())
    for part in ("fusion", "event_head", "caption_decoder"):
        assert by_part[part]["flags"] == {"fp16"} and by_part[part]["calibration"] == []
    assert len(list((tmp_path / "e").glob("*-int8-*.engine"))) == 7
    b.close()


def test_old_tensorrt_is_refused_with_reason(random_model_dir, tmp_path, monkeypatch, caplog):
    old = make_trt([])
    old.__version__ = "8.4.3"
    monkeypatch.setattr(tb, "import_tensorrt", lambda: old)
    monkeypatch.setattr(tb, "import_cudart", make_cudart)
    with caplog.at_level("WARNING", logger="mmfusion_ros.runtime"):
        b = create_backend(random_model_dir, "tensorrt", engine_cache_dir=str(tmp_path / "e"))
    assert b.name == "onnxruntime"
    assert any("needs TensorRT >= 8.5" in r.getMessage() for r in caplog.records)
