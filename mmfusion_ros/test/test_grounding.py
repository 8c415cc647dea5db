"""Every published claim rests on a present, familiar modality that can observe it (issue: grounded outputs).

Unit tests change a row of the observability table and watch the behaviour follow; bag tests run the
shipped model through `mmfusion process` on the real Husky recording and on simulator bags with sensors
left out, and count what the outputs claim that their frames' sensors cannot observe.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.core import observability as obs
from mmfusion_ros.core.familiarity import Familiarity, describe
from mmfusion_ros.core.pipeline import Pipeline, PipelineConfig
from mmfusion_ros.core.types import EVENT_TYPES
from test_pipeline import FakeBackend, frame, make

SOUND_WORDS = re.compile(r"\b(hear|heard|sound|sounds|barking|bark|talking|voices|siren|knocking|scraping|engine|"
                         r"noise|quiet|slam|beep|beeping|ringing|squeaking|creaking)\b", re.I)
OBJECT_WORDS = re.compile(r"\b(person|people|dog|car|bicycle|cone|box|chair|door|alarm|in view|parked|stands|sits|"
                          r"nothing stands out)\b", re.I)
FULL = ("A person walks toward the robot from the left, a box sits ahead while a dog barking can be heard; "
        "the robot drives over rough ground, about to hit a box")


# ---- the table drives the behaviour -----------------------------------------------------------------
def test_caption_keeps_only_the_clauses_its_modalities_observe():
    text, kinds, mods = obs.grounded_caption(FULL, ["imu"])
    assert text == "The robot drives over rough ground" and kinds == ["ego"] and mods == ["imu"]
    text, kinds, mods = obs.grounded_caption(FULL, ["audio"])
    assert not OBJECT_WORDS.search(text) and text == "Barking can be heard" and mods == ["audio"]
    text, _, mods = obs.grounded_caption(FULL, ["camera", "imu"])
    assert not SOUND_WORDS.search(text) and "a person walks" in text.lower() and "about to hit a box" in text
    assert obs.grounded_caption(FULL, []) == ("", [], [])
    # a published caption reads back as the same clauses (a checker parsing our output agrees with us)
    for mods in (["audio"], ["audio", "imu"], ["camera", "audio"], ["camera", "lidar", "audio", "imu"], ["imu"]):
        text, kinds, _ = obs.grounded_caption(FULL, mods)
        assert sorted({k for k, _ in obs.caption_clauses(text)}) == kinds, (mods, text)
    # every template of the caption grammar splits into its facts
    for t in ["The robot stands still. nothing is in view. it is quiet.",
              "You can hear barking; a dog sits ahead, and the robot drives slowly"]:
        assert {k for k, _ in obs.caption_clauses(t)} == {"objects", "sounds", "ego"}


def test_changing_a_row_changes_captions_events_and_labels(monkeypatch):
    # a row that lets the IMU observe sounds: the sound clause now survives an IMU-only frame
    monkeypatch.setitem(obs.CLAIM_OBSERVERS, "sounds", frozenset({"audio", "imu"}))
    assert "can be heard" in obs.grounded_caption(FULL, ["imu"])[0]
    # labels: an IMU-only frame gets none, until the row says the IMU can observe them
    b, p = make(top_k=1)
    imu_only = frame(camera=False, lidar=False, audio=False)
    assert p.process(imu_only).labels == []
    monkeypatch.setitem(obs.CLAIM_OBSERVERS, "labels", frozenset({"imu"}))
    assert p.process(frame(0.1, camera=False, lidar=False, audio=False)).labels[0][0] == "imu thing"


def test_events_no_used_modality_observes_are_unobservable_not_probabilities(monkeypatch):
    b = FakeBackend()
    b.event_probs = np.full((2, 3), 0.95, np.float32)  # person_approaching, crossing_path: both "certain"
    _, p = make(b)
    r = p.process(frame(camera=False, lidar=False))  # audio + IMU cannot see a person
    assert r.unobservable == EVENT_TYPES[:2] and r.events == []
    assert np.isnan(r.event_probs).all()
    monkeypatch.setitem(obs.EVENT_OBSERVERS, "person_approaching", frozenset({"audio"}))
    r = p.process(frame(0.1, camera=False, lidar=False))
    assert r.unobservable == [EVENT_TYPES[1]] and [e.type for e in r.events] == [EVENT_TYPES[0]]
    r = p.process(frame(0.2))  # with the camera both are observable and flagged
    assert r.unobservable == [] and {e.type for e in r.events} == set(EVENT_TYPES[:2])


def test_a_failing_encoder_costs_its_modality_not_the_frame():
    b = FakeBackend()
    real = b.encode

    def encode(modality, x):
        if modality == "audio":
            raise RuntimeError("audio encoder blew up")
        return real(modality, x)

    b.encode = encode
    _, p = make(b, top_k=2)
    r = p.process(frame())
    assert "audio" in r.dropped and "blew up" in r.dropped["audio"]
    assert r.used == ["camera", "lidar", "imu"] and r.labels and r.modality_weights[2] == 0


# ---- familiarity ----------------------------------------------------------------------------------------
class _FamiliarWorld:
    """Inputs of one 'world' (smooth noise) and of another (loud spikes), in model-input layout."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def imu(self, n, loud=False):
        x = 0.05 * self.rng.standard_normal((n, 6, 400)).astype(np.float32)
        x[:, 2] += 1.0
        if loud:
            x += 3.0 * np.sin(np.linspace(0, 200, 400, dtype=np.float32))[None, None]
        return x


def test_familiarity_flags_another_world_and_survives_the_bundle(tmp_path, caplog):
    from mmfusion_ros.train.familiarity import fit, write_into_bundle

    w = _FamiliarWorld()
    spec = fit({"imu": w.imu(600)}, {"imu": w.imu(200)}, tmp_path, bank_size=256)
    (tmp_path / "manifest.json").write_text("{}")
    write_into_bundle(tmp_path, spec)
    import json

    fam = Familiarity.from_manifest(json.loads((tmp_path / "manifest.json").read_text()), tmp_path)
    assert fam.available and fam.assessed("imu") and not fam.assessed("camera")
    same = fam.scores("imu", w.imu(200))
    other = fam.scores("imu", w.imu(50, loud=True))
    assert np.mean(same < fam.threshold) < 0.05 and np.all(other < fam.threshold)
    assert describe("imu", w.imu(3)).shape[0] == 3
    # a NaN-laden input is never familiar
    bad = w.imu(1)[0]
    bad[0, 0] = np.nan
    assert fam.score("imu", bad) == 0.0


def test_unfamiliar_modality_is_treated_as_absent_for_claims(tmp_path):
    from mmfusion_ros.train.familiarity import fit

    w = _FamiliarWorld()
    spec = fit({"imu": w.imu(400)}, {"imu": w.imu(100)}, tmp_path, bank_size=256)
    import json

    (tmp_path / "manifest.json").write_text(json.dumps({"familiarity": spec}))
    fam = Familiarity.from_manifest(json.loads((tmp_path / "manifest.json").read_text()), tmp_path)
    b = FakeBackend()
    b.event_probs = np.full((2, 3), 0.95, np.float32)
    prompts = ["camera thing", "lidar thing", "audio thing", "imu thing", "nothing"]
    emb = np.stack([b.base[m] for m in ["camera", "lidar", "audio", "imu"]] + [np.ones(384) / np.sqrt(384)])
    p = Pipeline(b, PipelineConfig(top_k=3), prompts, emb, familiarity=fam)
    f = frame(camera=False, lidar=False, audio=False)
    f.imu = (w.imu(1, loud=True)[0].T * 9.80665).astype(np.float32)  # (T, 6) back to m/s^2: another world
    r = p.process(f)
    assert r.familiarity["imu"] < 0.5 and r.used == []
    assert r.labels == [] and r.caption == "" and r.caption_confidence == 0.0 and r.events == []
    assert r.unobservable == EVENT_TYPES[:2]


def test_bundle_without_familiarity_loads_with_one_warning(random_model_dir, caplog):
    from mmfusion_ros.runtime import create_backend

    backend = create_backend(random_model_dir, "onnxruntime")
    with caplog.at_level(logging.WARNING):
        p = Pipeline(backend, PipelineConfig())
    warns = [r for r in caplog.records if "familiarity" in r.getMessage()]
    assert len(warns) == 1 and "not assessed" in warns[0].getMessage()
    r = p.process(frame())
    assert r.familiarity == {} and r.used == ["camera", "lidar", "audio", "imu"]
    from mmfusion_ros.ros.messages import familiarity_row

    assert familiarity_row(r) == [-1.0, -1.0, -1.0, -1.0]  # -1: present, not assessed
    backend.close()


def test_shipped_bundle_familiarity_is_fast_and_ships(repo_root):
    import time

    from mmfusion_ros.runtime.manifest import load_manifest

    bundle = repo_root / "mmfusion_ros" / "models" / "mmfusion_small"
    fam = Familiarity.from_manifest(load_manifest(bundle), bundle)
    assert fam.available and all(fam.assessed(m) for m in ("camera", "lidar", "audio", "imu"))
    x = np.random.default_rng(0).standard_normal((3, 128, 128)).astype(np.float32)
    fam.score("camera", x)
    t = time.perf_counter()
    for _ in range(20):
        fam.score("camera", x)
    assert (time.perf_counter() - t) / 20 < 0.05  # generous bound; the bench row gives the real figure


# ---- bags through `mmfusion process` --------------------------------------------------------------------
def _process(bag: Path, out: Path, repo_root: Path, topics=None):
    from mmfusion_ros.ros import offline

    values = offline.load_param_values(None, {"backend.intra_op_threads": 1})
    opts = offline.OfflineOptions(bag=bag, out=out, model_dir=repo_root / "mmfusion_ros" / "models" / "mmfusion_small",
                                  backend="onnxruntime", progress=False, topics=list(topics) if topics else None)
    return offline.process_bag(opts, values)


def _outputs(out: Path):
    from rosbags.highlevel import AnyReader

    res = {"perception": [], "caption": [], "events": []}
    with AnyReader([out]) as r:
        for c, _, raw in r.messages():
            key = c.topic.rsplit("/", 1)[-1]
            if key in res:
                res[key].append(r.deserialize(raw, c.msgtype))
    return res


def _unsupported(res) -> int:
    """Claims whose frame's present modalities cannot observe them (the count ../shared/tools makes)."""
    present = {(m.header.stamp.sec, m.header.stamp.nanosec): set(m.present_modalities) for m in res["perception"]}
    n = 0
    for m in res["perception"]:
        if m.labels and m.labels[0].score >= 0.5 and not set(m.present_modalities) & {"camera", "lidar", "audio"}:
            n += 1
    for m in res["caption"]:
        p = present[(m.header.stamp.sec, m.header.stamp.nanosec)]
        if m.text and OBJECT_WORDS.search(m.text) and not p & {"camera", "lidar"}:
            n += 1
        if m.text and SOUND_WORDS.search(m.text) and "audio" not in p:
            n += 1
    for m in res["events"]:
        p = present[(m.header.stamp.sec, m.header.stamp.nanosec)]
        n += sum(1 for e in m.events if not obs.EVENT_OBSERVERS[e.type] & p)
    return n


@pytest.mark.slow
def test_husky_imu_bag_claims_nothing_an_imu_cannot_observe(shared_data, repo_root, tmp_path):
    bag = shared_data / "ros1_bags" / "robot_localization_husky_imu.bag"
    s = _process(bag, tmp_path / "out", repo_root)
    assert s.frames > 3000
    res = _outputs(tmp_path / "out")
    assert _unsupported(res) == 0
    fam = np.array([np.frombuffer(m.modality_familiarity, np.float32) for m in res["perception"]])  # (N, 4)
    assert np.all(fam[:, 3] < 0.5)  # the real IMU is reported unfamiliar (the model knows only the simulator)
    assert all(list(m.modalities_used) == [] for m in res["perception"])
    assert all(not m.events for m in res["events"])
    assert all(m.text == "" and m.confidence == 0.0 for m in res["caption"])


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory) -> Path:
    from mmfusion_ros.cli import main

    bag = tmp_path_factory.mktemp("grounding") / "street"
    assert main(["sim", "--scenario", "street_mix", "--seconds", "4", "--seed", "5", "--out", str(bag)]) == 0
    return bag


@pytest.mark.slow
@pytest.mark.parametrize("topics, forbidden", [
    (["/camera/image_raw", "/camera/camera_info", "/lidar/points", "/imu/data"], SOUND_WORDS),
    (["/audio/audio", "/imu/data"], OBJECT_WORDS),
], ids=["no-microphone", "no-camera-no-lidar"])
def test_sim_bag_without_a_sensor_says_nothing_that_sensor_observes(sim_bag, repo_root, tmp_path, topics, forbidden):
    s = _process(sim_bag, tmp_path / "out", repo_root, topics)
    assert s.frames > 20
    res = _outputs(tmp_path / "out")
    assert _unsupported(res) == 0
    said = [m.text for m in res["caption"] if m.text]
    assert said, "the familiar sensors still describe something"
    assert not [t for t in said if forbidden.search(t)]
    if forbidden is SOUND_WORDS:
        assert all({"dog_barking", "alarm_sounding"} <= set(m.unobservable) for m in res["events"])
    else:
        assert all({"person_approaching", "crossing_path", "collision_imminent"} <= set(m.unobservable)
                   for m in res["events"])
        assert all(not m.labels or set(m.modalities_used) & {"audio"} for m in res["perception"])


def test_runtime_projects_only_onto_the_cut_for_the_observable_kinds(random_model_dir, tmp_path):
    import json
    import shutil

    from mmfusion_ros.runtime import create_backend

    bundle = tmp_path / "bundle"
    shutil.copytree(random_model_dir, bundle)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(bundle / "mem.npz", texts=np.array(["a", "b", "c"]), embeddings=emb.astype(np.float16),
             cut=np.array(["ego+objects+sounds", "ego", "sounds"]), kinds=np.array(["ego+objects", "ego", "sounds"]))
    man = json.loads((bundle / "manifest.json").read_text())
    man["caption_memory"] = "mem.npz"
    (bundle / "manifest.json").write_text(json.dumps(man))
    b = create_backend(bundle, "onnxruntime")
    assert b._memory_allowed(["ego"]).tolist() == [False, True, False]
    assert b._memory_allowed(["ego", "objects", "sounds"]).tolist() == [True, False, False]
    assert b._memory_allowed(["objects"]).tolist() == [False, False, False]
    assert b.caption(emb[0], kinds=["objects"]) == ("", 0.0)  # nothing cut for it: say nothing
    text, _ = b.caption(emb[0], kinds=["ego"])  # decodes entry "b" whatever the query is closest to
    assert isinstance(text, str)
    b.close()


def test_labels_read_the_mean_of_the_label_sensors_not_the_imu():
    from mmfusion_ros.core.observability import label_embedding

    rng = np.random.default_rng(0)
    tok = rng.standard_normal((4, 384)).astype(np.float32)  # camera, lidar, audio, imu
    fused = rng.standard_normal(384).astype(np.float32)
    e = label_embedding(tok, ["camera", "audio", "imu"], fused, "mean")
    want = (tok[0] + tok[2]) / 2
    np.testing.assert_allclose(e, want / np.linalg.norm(want), rtol=1e-5)  # the IMU is left out
    assert label_embedding(tok, ["imu"], fused, "mean") is None  # nothing that can observe a class
    assert label_embedding(tok, ["camera"], fused, "fused") is fused
    with pytest.raises(ValueError, match="label fusion"):
        label_embedding(tok, ["camera"], fused, "median")
    with pytest.raises(ValueError, match="label_fusion"):
        PipelineConfig(label_fusion="median").validate()


def test_label_skill_weights_drop_a_sensor_at_chance_from_the_labels_mean():
    from mmfusion_ros.core.calibration import Calibration
    from mmfusion_ros.core.observability import label_embedding
    from mmfusion_ros.train.calibrate import label_skill_weights

    rng = np.random.default_rng(1)
    P = np.eye(3, 8, dtype=np.float32)  # three prompts = three classes
    y = np.repeat(np.arange(3), 40)  # (120,) balanced: chance 1/3
    tok = np.zeros((120, 4, 8), np.float32)
    tok[:, 0] = P[y]  # camera: always right
    tok[:, 1] = P[rng.integers(0, 3, 120)]  # LiDAR: a random class, at chance
    tok[:, 2] = P[np.where(rng.random(120) < 0.5, y, (y + 1) % 3)]  # audio: right half the time
    lw = label_skill_weights([tok[:60], tok[60:]], [y[:60], y[60:]], P, np.arange(3))
    assert lw["chance"] == pytest.approx(1 / 3, abs=1e-3) and lw["weights"]["camera"] == pytest.approx(1.0)
    assert lw["weights"]["lidar"] < 0.15 and 0.1 < lw["weights"]["audio"] < 0.5  # (0.5 - 1/3) / (2/3) = 0.25
    assert "imu" not in lw["weights"]  # the IMU never votes on labels
    # the weighted mean leans on the skilled sensors; all-zero weights fall back to the plain mean
    e = label_embedding(tok[0], ["camera", "lidar", "audio"], tok[0, 0], "mean", weights={"camera": 1.0, "lidar": 0.0, "audio": 0.0})
    np.testing.assert_allclose(e, P[y[0]], atol=1e-6)
    plain = label_embedding(tok[0], ["lidar", "audio"], tok[0, 0], "mean")
    np.testing.assert_allclose(label_embedding(tok[0], ["lidar", "audio"], tok[0, 0], "mean", weights={"lidar": 0.0}), plain)
    # a bundle's weights are read from its calibration entry, and a malformed one is refused
    assert Calibration({"label_weights": {"camera": 0.8, "audio": 0.7}}).label_weights == {"camera": 0.8, "audio": 0.7}
    for bad in ({"radar": 1.0}, {"camera": -1.0}, {"camera": float("nan")}, [0.5]):
        with pytest.raises(ValueError, match="label_weights"):
            Calibration({"label_weights": bad})
