"""ONNX export: every part matches PyTorch, the manifest is complete, the bundle is usable."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mmfusion_ros.core.types import EVENT_TYPES, OBJECT_CLASSES
from mmfusion_ros.model.checkpoint import load_checkpoint
from mmfusion_ros.model.export import example_inputs, part_specs

torch.set_num_threads(1)
PARTS = ["camera_encoder", "lidar_encoder", "audio_encoder", "imu_encoder", "fusion", "event_head", "caption_decoder"]
IO = {
    "camera_encoder": (["camera"], ["embedding"]),
    "lidar_encoder": (["lidar"], ["embedding"]),
    "audio_encoder": (["audio"], ["embedding"]),
    "imu_encoder": (["imu"], ["embedding"]),
    "fusion": (["tokens", "present"], ["fused", "weights"]),
    "event_head": (["history"], ["probs"]),
    "caption_decoder": (["embedding", "tokens"], ["logits"]),
}
MANIFEST_KEYS = ["format_version", "name", "embed_dim", "modalities", "parts", "logit_scale", "event_types", "horizons",
                 "event_history_len", "event_history_step", "event_thresholds", "vocab", "caption_max_len", "preprocess",
                 "checkpoint_sha256", "onnx_opset", "text_encoder"]


@pytest.fixture(scope="module")
def bundle(random_model_dir):
    model, vocab, info = load_checkpoint(random_model_dir / "checkpoint.pt")
    man = json.loads((random_model_dir / "manifest.json").read_text())
    return random_model_dir, model, man, info


def test_manifest_complete(bundle):
    d, model, man, info = bundle
    assert [k for k in MANIFEST_KEYS if k not in man] == []
    assert sorted(man["parts"]) == sorted(PARTS)
    assert man["modalities"] == ["camera", "lidar", "audio", "imu"]
    assert man["event_thresholds"] == {t: 0.5 for t in EVENT_TYPES}
    assert man["vocab"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert man["checkpoint_sha256"] == info["sha256"]
    assert man["onnx_opset"] == 17 and man["text_encoder"] == "all-MiniLM-L6-v2"
    assert man["event_history_len"] == 10 and man["event_history_step"] == 0.2
    assert "random" in man["prompt_embeddings"]
    prompts = json.loads((d / "prompts.json").read_text())["prompts"]
    assert [p["label"] for p in prompts] == OBJECT_CLASSES
    emb = np.array([p["embedding"] for p in prompts])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_runtime_manifest_reader_accepts_it(bundle):
    manifest = pytest.importorskip("mmfusion_ros.runtime.manifest")
    m = manifest.load_manifest(bundle[0])
    assert m.embed_dim == 384


@pytest.mark.parametrize("part", PARTS)
def test_onnx_part_matches_torch(bundle, part):
    d, model, man, _ = bundle
    path = d / man["parts"][part]["file"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    ins, outs = IO[part]
    assert [i.name for i in proto.graph.input] == ins and [o.name for o in proto.graph.output] == outs
    spec = part_specs(model)[part]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 3), (4, 7)):  # dynamic batch (and caption length)
        x = example_inputs(spec, batch=batch, length=length, seed=batch)
        got = sess.run(None, x)
        with torch.no_grad():
            want = spec["module"](*[torch.from_numpy(v) for v in x.values()])
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=2e-5)


def test_export_command_on_bad_checkpoint(tmp_path):
    from mmfusion_ros.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
