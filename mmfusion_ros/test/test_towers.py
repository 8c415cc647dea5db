"""Tower bundles: a pretrained OpenCLIP model imported as the frozen camera and text side, run without torch,
and LiDAR/audio/IMU bound to it. Offline: a tiny seeded OpenCLIP configuration saved to a local file
(conftest `tiny_towers`)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmfusion_ros.cli import main

torch.set_num_threads(1)
KITTI_IMAGE = "kitti_000134/000134.png"


def _clip(tiny):
    from mmfusion_ros.model.open_clip_towers import load_open_clip

    return load_open_clip(tiny.arch, str(tiny.checkpoint), tiny.config_file)


def _rgb(path):
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- import
def test_import_writes_a_camera_bundle_in_the_towers_space(tiny_towers):
    from mmfusion_ros.runtime.manifest import load_manifest

    man = load_manifest(tiny_towers.bundle)
    model, pre = _clip(tiny_towers)
    assert man.embed_dim == tiny_towers.embed_dim and man.modalities == ["camera"]
    assert sorted(man["parts"]) == ["camera_encoder"]  # no heads before binding
    assert man["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    assert man["preprocess"]["image_size"] == tiny_towers.config["vision_cfg"]["image_size"]
    assert man["preprocess"]["image_resize"] == "shortest"
    assert man["preprocess"]["image_mean"] == pytest.approx(list(pre["mean"]))
    src = man.towers["source"]
    assert src["arch"] == tiny_towers.arch and src["library"] == "open_clip" and man.towers["bound"] == []
    import hashlib

    assert src["checkpoint_sha256"] == hashlib.sha256(tiny_towers.checkpoint.read_bytes()).hexdigest()
    doc = json.loads((tiny_towers.bundle / "prompts.json").read_text())
    assert [p["text"] for p in doc["prompts"]][:2] == ["a photo of a person.", "a photo of a dog."]
    assert all(len(p["embedding"]) == tiny_towers.embed_dim for p in doc["prompts"])


def test_onnx_towers_match_open_clip(tiny_towers, shared_data):
    """ONNX Runtime vs open_clip in torch on the same inputs: max abs difference <= 1e-5 per embedding value
    (float32 graph, same weights); the numpy preprocessing vs open_clip's own (PIL) transform on a real KITTI
    image: embedding cosine >= 0.999 (area/bicubic resampling in OpenCV differs slightly from PIL's)."""
    from PIL import Image

    from mmfusion_ros.core.pipeline import preprocess_config_from_manifest
    from mmfusion_ros.core.preprocess import preprocess_image
    from mmfusion_ros.model.open_clip_import import import_open_clip
    from mmfusion_ros.runtime.factory import create_backend
    from mmfusion_ros.runtime.manifest import load_manifest
    from mmfusion_ros.runtime.text_encoder import TextEncoder

    oc = import_open_clip()
    model, pre = _clip(tiny_towers)
    man = load_manifest(tiny_towers.bundle)
    cfg = preprocess_config_from_manifest(man)
    img = _rgb(shared_data / KITTI_IMAGE)
    ours = preprocess_image(img, cfg)[None]  # (1, 3, S, S)
    theirs = oc.image_transform(model.visual.image_size, is_train=False, mean=pre["mean"], std=pre["std"],
                                interpolation=pre["interpolation"], resize_mode=pre["resize_mode"])(Image.fromarray(img))[None]
    with torch.no_grad():
        ref = model.encode_image(torch.from_numpy(ours), normalize=True).numpy()  # (1, D)
        ref_pil = model.encode_image(theirs, normalize=True).numpy()
    be = create_backend(tiny_towers.bundle, "onnxruntime", intra_op_threads=1)
    got = be.encode("camera", ours)
    assert np.abs(got - ref).max() <= 1e-5
    assert float(got[0] @ ref_pil[0]) >= 0.999
    texts = ["a photo of a dog.", "a red car parked on the left, next to a wall", "cafés & naïve ünïcode"]
    enc = TextEncoder(man.text_dir)
    with torch.no_grad():
        tref = model.encode_text(oc.get_tokenizer(tiny_towers.arch)(texts), normalize=True).numpy()
    assert np.abs(enc.encode(texts) - tref).max() <= 1e-5


def test_runtime_path_runs_a_tower_bundle_without_torch(tiny_towers, shared_data):
    """The robot's path (backend, prompts through the text tower, pipeline) in a fresh process: no torch."""
    code = f"""
import sys, cv2, numpy as np
from mmfusion_ros.ros.pipeline_factory import open_pipeline
from mmfusion_ros.core.types import SensorFrame
p = open_pipeline({str(tiny_towers.bundle)!r}, {{"backend.type": "onnxruntime",
                  "pipeline.top_k": 3, "model.prompts": ["a photo of a car.", "a forklift", "a person walking nearby"]}})
img = cv2.cvtColor(cv2.imread({str(shared_data / KITTI_IMAGE)!r}), cv2.COLOR_BGR2RGB)
r = p.process(SensorFrame(stamp=1.0, image=img, imu=np.zeros((400, 6), np.float32)))
assert r.used == ["camera"] and r.unbound == ["imu"], (r.used, r.unbound)
assert r.caption is None and r.events == [] and len(r.unobservable) == 7
assert r.embedding.shape == ({tiny_towers.embed_dim},) and len(r.labels) == 3
print(sorted(l for l, _ in r.labels), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # bundle prompts (and the package's default phrasing, an alias) publish their label; a new one its own text
    assert out.stdout.strip().splitlines()[-1] == "['a forklift', 'car', 'person'] False"


# ----------------------------------------------------------------------------- bad input
def test_import_errors_name_the_file(tiny_towers, tmp_path, capsys):
    other = dict(tiny_towers.config, embed_dim=48)
    cfg = tmp_path / "mmf-other-clip.json"
    cfg.write_text(json.dumps(other))
    rc = main(["towers", "import", "--open-clip", "mmf-other-clip", "--config", str(cfg),
               "--pretrained", str(tiny_towers.checkpoint), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tiny_towers.checkpoint) in err and "not a checkpoint of mmf-other-clip" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["towers", "import", "--open-clip", tiny_towers.arch, "--config", str(tiny_towers.config_file),
                 "--pretrained", str(junk), "--out", str(tmp_path / "b")]) == 2
    assert str(junk) in capsys.readouterr().err
    assert main(["towers", "import", "--open-clip", "no-such-arch", "--pretrained", "random",
                 "--out", str(tmp_path / "b")]) == 2
    assert "not an open_clip architecture" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["towers", "import", "--open-clip", tiny_towers.arch, "--config", str(tiny_towers.config_file),
                 "--pretrained", str(tiny_towers.checkpoint), "--out", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_bundle_faults_are_clear_errors(tiny_towers, tmp_path):
    from mmfusion_ros.runtime.manifest import ManifestError, load_manifest

    b = tmp_path / "b"
    shutil.copytree(tiny_towers.bundle, b)
    (b / "text_encoder" / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match="tokenizer.json is missing"):
        load_manifest(b)
    shutil.rmtree(b)
    shutil.copytree(tiny_towers.bundle, b)
    man = json.loads((b / "manifest.json").read_text())
    man["parts"]["camera_encoder"]["outputs"]["embedding"]["shape"] = ["B", 512]
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ManifestError, match="embeds into 512 dims but the bundle's space has embed_dim 32"):
        load_manifest(b)


# ----------------------------------------------------------------------------- binding
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmfusion_ros.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth_towers"), n_scenes=24, frames_per_scene=12, seed=0)


@pytest.fixture(scope="module")
def bound(tmp_path_factory, tiny_towers, synth):
    import yaml

    d = tmp_path_factory.mktemp("bound")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(model="tiny", data=str(synth), out=str(d / "run"), threads=1, batch_size=32,
                                       lr=3e-3, epochs={"camera": 2, "bind": 6, "fusion": 2, "caption": 2, "events": 2})))
    assert main(["train", "--config", str(cfg), "--towers", str(tiny_towers.bundle)]) == 0
    return d / "run"


def test_binding_trains_the_other_sensors_against_the_frozen_tower(bound, tiny_towers, synth):
    from mmfusion_ros.model.checkpoint import load_checkpoint
    from mmfusion_ros.runtime.manifest import load_manifest
    from mmfusion_ros.train.data import load_split
    from mmfusion_ros.train.evaluate import Evaluator

    man = load_manifest(bound / "bundle")
    assert man.modalities == ["camera", "lidar", "audio", "imu"] and man.embed_dim == tiny_towers.embed_dim
    assert man.towers["bound"] == ["lidar", "audio", "imu"]
    # the image tower and text tower are the imported ones, byte for byte
    for f in ("onnx/camera_encoder.onnx", "text_encoder/text_encoder.onnx", "text_encoder/tokenizer.json"):
        assert (bound / "bundle" / f).read_bytes() == (tiny_towers.bundle / f).read_bytes()
    # familiarity fitted for the bound sensors only (the pretrained camera is not judged by simulator frames)
    assert sorted(man["familiarity"]["modalities"]) == ["audio", "imu", "lidar"]
    assert "calibration" in man and "caption_memory" in man
    model = load_checkpoint(bound / "checkpoint.pt")[0]
    assert model.tower_modalities == ["camera"] and model.cfg.embed_dim == tiny_towers.embed_dim
    # the bind stage trained LiDAR, audio and IMU against the tower's embeddings (a randomly initialised tower
    # embeds every frame almost alike, cosine > 0.99, so only the loss, not retrieval, can be asked of it here;
    # binding quality needs real pretrained weights, see the README)
    log = [json.loads(line) for line in (bound / "log.jsonl").read_text().splitlines()]
    bind = [r["epoch_loss"] for r in log if r.get("stage") == "bind" and "epoch_loss" in r]
    assert len(bind) == 6 and bind[-1] < bind[0]
    # the exported bound encoders are the trained ones (ONNX Runtime vs torch on the same inputs)
    from mmfusion_ros.runtime.factory import create_backend

    sp = load_split(synth, "val")
    x = sp.inputs(np.arange(8), ["lidar", "audio", "imu"])
    be = create_backend(bound / "bundle", "onnxruntime", intra_op_threads=1)
    with torch.no_grad():
        for k in ("lidar", "audio", "imu"):
            ref = model.encode(k, torch.from_numpy(x[k])).numpy()
            assert np.abs(be.encode(k, x[k]) - ref).max() <= 1e-4, k
    assert Evaluator(bound / "checkpoint.pt").embed(sp).shape == (len(sp), 4, tiny_towers.embed_dim)


def test_bound_bundle_runs_on_the_robot_path(bound, shared_data):
    """The bound bundle on a real KITTI camera + LiDAR frame: nothing unbound, the tower's width, and the LiDAR
    (bound on simulator data only) judged by its familiarity statistics rather than trusted."""
    from mmfusion_ros.core.types import SensorFrame
    from mmfusion_ros.ros.pipeline_factory import open_pipeline

    p = open_pipeline(bound / "bundle", {"backend.type": "onnxruntime"})
    pts = np.fromfile(shared_data / "kitti_000134" / "000134.bin", np.float32).reshape(-1, 4)
    r = p.process(SensorFrame(stamp=1.0, image=_rgb(shared_data / KITTI_IMAGE), lidar=pts))
    p.backend.close()
    assert r.unbound == [] and r.dropped == {} and r.embedding.shape == (p.embed_dim,)
    assert "camera" in r.used and "camera" not in r.familiarity and "lidar" in r.familiarity


def test_bags_binding_refuses_a_checkpoint_with_its_own_camera(bound, tmp_path):
    from mmfusion_ros.commands.train import _tower_of
    from mmfusion_ros.model.checkpoint import save_checkpoint
    from mmfusion_ros.model.config import tiny_config
    from mmfusion_ros.model.mmfusion import build_model
    from mmfusion_ros.model.vocab import Vocab

    own = tmp_path / "own.pt"
    save_checkpoint(own, build_model(tiny_config(vocab_size=8)), Vocab.build(["a dog sits ahead ."]), {})
    with pytest.raises(ValueError, match="was not bound to a tower"):
        _tower_of(str(own), str(bound / "bundle"))
    side = _tower_of(str(bound / "checkpoint.pt"), None)  # a bound checkpoint finds its own towers
    assert side.dim == 32


def test_bench_models_section_runs_a_tower_bundle(bound, monkeypatch):
    """`mmfusion bench --model BUNDLE --only models` on a bound tower bundle: ONNX Runtime rows for every part
    (torch eager cannot run ONNX-only towers), not a failure."""
    from mmfusion_ros.bench import ENV_MODEL
    from mmfusion_ros.bench import models as B

    monkeypatch.setenv(ENV_MODEL, str(bound / "bundle"))
    (sec,) = B.run(quick=True)
    assert [r[0] for r in sec["rows"]] == ["camera_encoder", "lidar_encoder", "audio_encoder", "imu_encoder",
                                           "fusion", "event_head"]
    assert all(float(v) > 0 for r in sec["rows"] for v in r[1:])


def test_eval_runs_a_bound_bundle_from_its_own_towers(bound, synth, tmp_path, capsys):
    """`mmfusion eval --model BOUND_BUNDLE`: the bundle's own towers embed the frames and prompts, even when the
    tower bundle it was bound to has moved."""
    moved = tmp_path / "bundle"
    shutil.copytree(bound / "bundle", moved)
    assert main(["eval", "--model", str(moved), "--data", str(synth), "--split", "test", "--tables", "T2"]) == 0
    assert "camera" in capsys.readouterr().out
