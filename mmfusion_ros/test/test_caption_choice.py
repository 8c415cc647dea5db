"""The caption presence probe: which caption-memory entry a frame is captioned with (core/caption_choice.py),
its fit (train/caption_presence.py), the backend and `mmfusion caption-presence`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmfusion_ros.core.caption_choice import CaptionPresence, probe_features
from mmfusion_ros.train.caption_presence import memory_objects

CLASSES = ["person", "dog", "car"]
D = 8


def _probe(objects, top_k=3, threshold=0.3, sim_weight=0.0, d=D):
    return CaptionPresence(np.zeros((4 * d + 4, len(CLASSES)), np.float32), np.zeros(len(CLASSES), np.float32),
                           np.asarray(objects, bool), CLASSES, top_k, threshold, sim_weight)


def test_choose_takes_the_nearest_entry_whose_classes_the_evidence_supports():
    # entries: 0 names person; 1 names person and dog; 2 names person and car; 3 names car only
    p = _probe([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]], top_k=3)
    sims = np.array([[0.9, 0.8, 0.7, 0.95]])
    assert p.choose(sims, np.array([[0.9, 0.8, 0.1]]))[0] == 1  # the dog is there: the entry naming it
    assert p.choose(sims, np.array([[0.9, 0.1, 0.1]]))[0] == 0  # among the 3 nearest, person alone fits best
    # nothing is likely: one class named costs least, and of the two such entries the nearer wins
    assert p.choose(sims, np.array([[0.1, 0.1, 0.1]]))[0] == 3
    # entry 2 (person and car) would fit best but is not among the 3 nearest: the nearer of 3 and 0 is taken
    assert p.choose(sims, np.array([[0.9, 0.1, 0.9]]))[0] == 3
    # the car-only entry is the nearest: with top_k 1 it is always the one
    one = _probe([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]], top_k=1)
    assert one.choose(sims, np.array([[0.9, 0.8, 0.1]]))[0] == 3


def test_choose_never_takes_an_entry_the_sensors_may_not_be_projected_onto():
    p = _probe([[1, 1, 0], [0, 0, 1]], top_k=2)
    sims = np.array([[-np.inf, 0.5]])  # entry 0 is not allowed (e.g. it names objects, the camera is absent)
    assert p.choose(sims, np.array([[1.0, 1.0, 0.0]]))[0] == 1


def test_sim_weight_breaks_ties_towards_the_nearer_layout():
    p = _probe([[1, 0, 0], [1, 0, 0]], top_k=2, sim_weight=1.0)
    assert p.choose(np.array([[0.2, 0.6]]), np.array([[0.9, 0.0, 0.0]]))[0] == 1


def test_probe_features_zero_the_unused_sensors():
    tok = np.ones((2, 4, D), np.float32)
    x = probe_features(tok, np.array([1, 0, 1, 0], np.float32))
    assert x.shape == (2, 4 * D + 4)
    assert x[0, D:2 * D].sum() == 0 and x[0, :D].sum() == D and x[0, -4:].tolist() == [1, 0, 1, 0]


def test_memory_objects_reads_whole_words():
    words = {"person": ["person", "voices"], "dog": ["dog", "barking"], "car": ["car", "engine"]}
    got = memory_objects(["A person stands ahead; barking can be heard", "a cart stands ahead", "the robot drives"],
                         CLASSES, words)
    assert got.tolist() == [[True, True, False], [False, False, False], [False, False, False]]


def test_save_load_round_trip_and_refusals(tmp_path):
    p = _probe([[1, 0, 0], [0, 1, 1]], top_k=2, threshold=0.35, sim_weight=1.0)
    path = p.save(tmp_path / "p.npz")
    q = CaptionPresence.load(path, memory_size=2, embed_dim=D)
    assert (q.top_k, q.threshold, q.sim_weight, q.classes) == (2, 0.35, 1.0, CLASSES)
    assert np.array_equal(q.objects, p.objects)
    with pytest.raises(ValueError, match="memory entries"):
        CaptionPresence.load(path, memory_size=3, embed_dim=D)
    with pytest.raises(ValueError, match="probe input"):
        CaptionPresence.load(path, memory_size=2, embed_dim=D + 1)
    with pytest.raises(ValueError, match="threshold"):
        _probe([[1, 0, 0]], threshold=1.5)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="cannot read"):
        CaptionPresence.load(tmp_path / "bad.npz", memory_size=2, embed_dim=D)


def test_fit_probe_learns_presence_from_the_sensor_that_observes_it():
    from mmfusion_ros.train.caption_presence import fit_probe

    rng = np.random.default_rng(0)
    n = 600
    seen = rng.random((n, 3)) < 0.5  # what the camera sees
    heard = np.zeros((n, 3), bool)
    heard[:, 1] = rng.random(n) < 0.5  # the microphone hears only dogs
    tok = rng.standard_normal((n, 4, D)).astype(np.float32) * 0.1
    tok[:, 0, :3] += seen * 2.0  # camera token carries what is seen
    tok[:, 2, 1] += heard[:, 1] * 2.0  # audio token carries the barking
    w, b = fit_probe(tok, seen, heard, seed=0, epochs=300)
    p = CaptionPresence(w, b, np.eye(3, dtype=bool), CLASSES, 1, 0.5, 0.0)
    cam = p.probs(tok, np.array([1, 0, 0, 0], np.float32))
    assert ((cam > 0.5) == seen).mean() > 0.9
    aud = p.probs(tok, np.array([0, 0, 1, 0], np.float32))
    assert ((aud[:, 1] > 0.5) == heard[:, 1]).mean() > 0.9
    assert aud[:, 0].max() < 0.5  # the microphone cannot observe a person here: the probe does not claim one


def _bundle_with_memory(random_model_dir, tmp_path, texts, emb):
    bundle = tmp_path / "bundle"
    shutil.copytree(random_model_dir, bundle)
    np.savez(bundle / "mem.npz", texts=np.array(texts), embeddings=emb.astype(np.float16),
             cut=np.array(["ego+objects+sounds"] * len(texts)), kinds=np.array(["ego+objects+sounds"] * len(texts)))
    man = json.loads((bundle / "manifest.json").read_text())
    man["caption_memory"] = "mem.npz"
    (bundle / "manifest.json").write_text(json.dumps(man))
    return bundle


def test_backend_captions_with_the_probes_pick(random_model_dir, tmp_path):
    from mmfusion_ros.runtime import create_backend

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((3, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    bundle = _bundle_with_memory(random_model_dir, tmp_path, ["a person stands ahead", "a dog sits ahead",
                                                              "a person stands ahead, a dog sits ahead"], emb)
    query = emb[0]  # nearest entry: 0 (person only)
    objects = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    w = np.zeros((4 * 384 + 4, 3), np.float32)
    bias = np.array([3.0, 3.0, -3.0], np.float32)  # the probe is sure of a person and a dog
    CaptionPresence(w, bias, objects, CLASSES, 3, 0.3, 0.0).save(bundle / "caption_presence.npz")
    b = create_backend(bundle, "onnxruntime")
    b.caption(query, kinds=["ego", "objects", "sounds"])
    assert [k[0] for k in b._caption_cache] == [0]  # without tokens: the nearest entry
    man = json.loads((bundle / "manifest.json").read_text())
    man["caption_presence"] = "caption_presence.npz"
    (bundle / "manifest.json").write_text(json.dumps(man))
    b.close()
    b = create_backend(bundle, "onnxruntime")
    tokens = np.zeros((4, 384), np.float32)
    b.caption(query, kinds=["ego", "objects", "sounds"], tokens=tokens, used=np.ones(4, np.float32))
    assert [k[0] for k in b._caption_cache] == [2]  # the entry naming both
    b.caption(query, kinds=["ego", "objects", "sounds"])  # no tokens given: the nearest, as before
    assert sorted(k[0] for k in b._caption_cache) == [0, 2]
    b.close()


def test_cli_fits_and_writes_the_probe_and_eval_uses_it(random_model_dir, tmp_path):
    from mmfusion_ros.cli import main
    from mmfusion_ros.train.data import load_split
    from mmfusion_ros.train.evaluate import Evaluator
    from mmfusion_ros.train.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "synth", n_scenes=16, frames_per_scene=10, seed=3)
    texts = sorted({c[0] for split in ("train", "val") for c in load_split(data, split).captions if c})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(texts), 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    bundle = _bundle_with_memory(random_model_dir, tmp_path, texts, emb)
    assert main(["caption-presence", "--model", str(bundle), "--data", str(data), "--tune-split", "train"]) == 2
    assert main(["caption-presence", "--model", str(bundle), "--data", str(data), "--tune-data", "nosplit"]) == 2
    assert "caption_presence" not in json.loads((bundle / "manifest.json").read_text())  # refused: nothing written
    assert main(["caption-presence", "--model", str(bundle), "--data", str(data)]) == 0
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["caption_presence"] == "caption_presence.npz"
    fit = man["caption_presence_fit"]
    assert fit["train_split"] == "train" and fit["train_frames"] > 0
    assert [(t["split"], t["frames"] > 0) for t in fit["tuned_on"]] == [("val", True)]
    # the tuned choice is never worse on its tuning frames than the nearest entry (top_k 1 is in the grid)
    assert fit["tune_caption_object_f1"]["chosen"]["f1"] >= fit["tune_caption_object_f1"]["nearest"]["f1"]
    ev = Evaluator(bundle)
    assert ev.presence is not None and len(ev.presence.objects) == len(texts)
    sp = load_split(data, "test")
    tok = ev.embed(sp)
    fused = ev.fuse(tok, [1, 1, 1, 1])
    want = ev.presence.choose(
        np.where(ev.memory_rows(["camera", "lidar", "audio", "imu"])[None],
                 fused @ (ev.memory / np.linalg.norm(ev.memory, axis=1, keepdims=True)).T, -np.inf),
        ev.presence.probs(tok, np.ones(4, np.float32)))
    assert np.array_equal(ev.memory_choice(fused, ["camera", "lidar", "audio", "imu"], tok), want)


def test_tune_keeps_the_nearest_entry_unless_re_ranking_names_more_of_the_frame():
    from mmfusion_ros.train.caption_presence import tune

    objects = np.array([[1, 0, 0], [1, 1, 0]], bool)  # entry 0: person; entry 1: person and dog
    base = _probe(objects)
    sims = np.array([[0.9, 0.8]] * 4)
    probs = np.array([[0.9, 0.9, 0.0]] * 4)  # the probe sees a dog too
    only_person = np.array([[1, 0, 0]] * 4, bool)
    picked, rows = tune(base, sims, probs, only_person)
    assert picked.top_k == 1  # re-ranking would name a dog that is not there: the nearest entry stays
    assert len(rows) > 1 and max(r["f1"] for r in rows) == pytest.approx(1.0)
    with_dog = np.array([[1, 1, 0]] * 4, bool)
    picked, _ = tune(base, sims, probs, with_dog)
    assert picked.top_k > 1 and np.array_equal(picked.choose(sims, probs), [1, 1, 1, 1])
