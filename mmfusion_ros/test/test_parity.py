"""Backend parity: ONNX Runtime against the PyTorch reference on the same inputs for every exported part,
and TensorRT FP16 against ONNX Runtime where a GPU and tensorrt are present (marked gpu; skipped elsewhere).

Tolerances: embeddings (unit vectors) must agree to cosine >= 0.9999 (ORT) / 0.999 (TensorRT FP16);
fusion weights, event probabilities and caption logits to atol 1e-4 (ORT, float32 both sides).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.runtime import create_backend

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mmfusion_small"
EMBEDDING_OUTPUTS = {"embedding", "fused"}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _part_inputs(manifest, part, batch=3, length=6, seed=0):
    """Realistic-range random inputs: unit-norm embeddings, 0/1 presence with >= 1 present, valid tokens."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, io in manifest.inputs(part).items():
        dims = [batch if d == "B" else length if isinstance(d, str) else d for d in io["shape"]]
        if io["dtype"] == "int64":
            x = rng.integers(4, len(manifest.vocab), size=dims).astype(np.int64)
            x[:, 0] = 1
        elif name == "present":
            x = (rng.random(dims) > 0.4).astype(np.float32)
            x[:, 0] = 1.0
        else:
            x = rng.standard_normal(dims).astype(np.float32)
            if name in ("tokens", "history", "embedding"):
                x /= np.linalg.norm(x, axis=-1, keepdims=True)
        out[name] = x
    if part == "fusion":
        out["tokens"] = out["tokens"] * out["present"][..., None]  # zeros where absent (the contract)
    return out


def _pair(model_dir):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    ref = create_backend(model_dir, "torch", threads=1)
    ort_b = create_backend(model_dir, "onnxruntime", intra_op_threads=1)
    return ref, ort_b


def _check_parity(ref, test, min_cos, atol, batch=3):
    worst = {}
    for part in ref.manifest["parts"]:
        ins = _part_inputs(ref.manifest, part, batch=batch)
        a = ref.run(part, ins)
        b = test.run(part, ins)
        assert set(a) == set(b), part
        for name in a:
            assert a[name].shape == b[name].shape, (part, name)
            if name in EMBEDDING_OUTPUTS:
                c = float(_cos(a[name], b[name]).min())
                worst[f"{part}.{name}"] = c
                assert c >= min_cos, f"{part}.{name}: cosine {c:.6f} < {min_cos}"
            else:
                err = float(np.abs(a[name] - b[name]).max())
                worst[f"{part}.{name}"] = err
                assert err <= atol, f"{part}.{name}: max abs diff {err:.2e} > {atol}"
    return worst


@pytest.mark.parametrize("bundle", ["random", "shipped"])
def test_onnxruntime_matches_torch_on_every_part(bundle, random_model_dir):
    model_dir = random_model_dir if bundle == "random" else SHIPPED
    if bundle == "shipped" and not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"no shipped model bundle at {SHIPPED} yet")
    ref, ort_b = _pair(model_dir)
    worst = _check_parity(ref, ort_b, min_cos=0.9999, atol=1e-4)
    assert len(worst) == sum(len(ref.manifest.outputs(p)) for p in ref.manifest["parts"])


def test_greedy_caption_same_words_in_both_backends(random_model_dir):
    ref, ort_b = _pair(random_model_dir)
    rng = np.random.default_rng(3)
    for _ in range(3):
        e = rng.standard_normal(384).astype(np.float32)
        e /= np.linalg.norm(e)
        t_ref, c_ref = ref.caption(e)
        t_ort, c_ort = ort_b.caption(e)
        assert t_ref == t_ort
        assert c_ref == pytest.approx(c_ort, abs=1e-4)


def _tensorrt_or_skip():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("tensorrt is not installed (TensorRT parity runs only where JetPack/tensorrt and a GPU are present)")
    from mmfusion_ros.runtime.tensorrt_backend import cuda_gpu_present

    ok, why = cuda_gpu_present()
    if not ok:
        pytest.skip(f"no CUDA GPU for TensorRT: {why}")


@pytest.mark.gpu
def test_tensorrt_fp16_matches_onnxruntime(random_model_dir, tmp_path):
    _tensorrt_or_skip()
    trt_b = create_backend(random_model_dir, "tensorrt", fallback=False, precision="fp16",
                           engine_cache_dir=str(tmp_path / "engines"))
    ort_b = create_backend(random_model_dir, "onnxruntime", intra_op_threads=1)
    for part in ort_b.manifest["parts"]:
        for batch in (1, 8):
            ins = _part_inputs(ort_b.manifest, part, batch=batch)
            a, b = ort_b.run(part, ins), trt_b.run(part, ins)
            for name in a:
                if name in EMBEDDING_OUTPUTS:
                    assert _cos(a[name], b[name]).min() >= 0.999, (part, name)
                else:
                    np.testing.assert_allclose(b[name], a[name], atol=2e-2, err_msg=f"{part}.{name}")
    assert ort_b.caption(np.eye(384, dtype=np.float32)[0])[0] is not None
    trt_b.close()


@pytest.mark.gpu
def test_tensorrt_engine_cache_reused_and_forced(random_model_dir, tmp_path):
    _tensorrt_or_skip()
    cache = tmp_path / "engines"
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache))
    assert sorted(b.built) == sorted(b.manifest["parts"])
    engines = sorted(cache.glob("*.engine"))
    assert len(engines) == len(b.manifest["parts"])
    b.close()
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache))
    assert b.built == []  # all loaded from the cache
    b.close()
    b = create_backend(random_model_dir, "tensorrt", fallback=False, engine_cache_dir=str(cache),
                       force_engine_update=True)
    assert sorted(b.built) == sorted(b.manifest["parts"])
    b.close()
