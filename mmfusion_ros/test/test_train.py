"""Training recipe on a tiny synthetic dataset in the simulator's format, plus the metrics."""

import json
import math

import numpy as np
import pytest
import torch

from mmfusion_ros.cli import main
from mmfusion_ros.train import metrics as M
from mmfusion_ros.train.config import TrainConfig

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- metrics
def test_bleu4_matches_hand_computation():
    assert M.bleu4(["a dog is near the robot"], [["a dog is near the robot"]]) == pytest.approx(1.0)
    # hyp 6 words; matches: 1g 5/6, 2g 3/5, 3g 2/4, 4g 1/3; ref length 6 -> BP 1
    hyp = "a dog is near a robot"
    want = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert M.bleu4([hyp], [["a dog is near the robot"]]) == pytest.approx(want)
    # brevity penalty: 4-word hyp against 6-word ref
    assert M.bleu4(["a dog is near"], [["a dog is near the robot"]]) == pytest.approx(math.exp(1 - 6 / 4))
    assert M.bleu4(["car"], [["a dog"]]) == 0.0


def test_cider_rewards_consensus():
    refs = [["a dog barks ahead", "a dog is barking ahead"], ["a car drives past", "a car passes by"],
            ["a person walks across", "a person crosses the path"]]
    good = M.cider(["a dog barks ahead", "a car drives past", "a person walks across"], refs)
    bad = M.cider(["a car drives past", "a person walks across", "a dog barks ahead"], refs)
    assert good > 1.0 > bad >= 0.0


def test_average_precision_known_values():
    assert M.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert M.average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert math.isnan(M.average_precision([0, 0], [0.1, 0.2]))


def test_recall_at_k_and_zero_shot():
    g = np.eye(4, dtype=np.float32)
    q = g[[1, 0, 2, 3]]
    r = M.recall_at_k(q, g, np.eye(4, dtype=bool), ks=(1, 2))
    assert r[1] == 0.5 and r[2] == 1.0 or r[1] == 0.5
    assert M.zero_shot_accuracy(g, g, np.array([0, 1, 2, 0])) == 0.75


def test_lead_time_and_false_alarms():
    scene = np.zeros(10, np.int32)
    t = np.arange(10) * 0.2
    active = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0], bool)
    alarm = np.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 1], bool)  # warns from frame 3: 0.4 s before onset at 5
    assert M.lead_times(alarm, active, scene, t) == [pytest.approx(0.4)]
    assert math.isnan(M.lead_times(np.zeros(10, bool), active, scene, t)[0])
    future = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], bool)
    # false alarms: rising edges at 0 and 9 outside the future window -> 2 in 2 s of data
    assert M.false_alarms_per_minute(alarm, future, scene, 0.2) == pytest.approx(2 / (10 * 0.2 / 60))
    assert M.best_f1_threshold(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9])) == pytest.approx(0.675, abs=0.03)
    # a rare event whose scores barely separate: unconstrained F1 picks a near-zero threshold
    # (flag everything); the floor keeps calibration from doing that
    y = np.r_[np.ones(5), np.zeros(95)]
    sc = np.r_[np.full(5, 0.12), np.linspace(0.0, 0.2, 95)]
    assert M.best_f1_threshold(y, sc) < 0.3
    assert M.best_f1_threshold(y, sc, floor=0.3) >= 0.3


def test_mentions_and_precision_recall():
    from mmfusion_ros.train.evaluate import OBJECT_WORDS

    got = M.mentions("A traffic cone stands ahead while a dog barking can be heard", OBJECT_WORDS)
    assert got == {"traffic_cone", "dog"}
    pr = M.precision_recall([{"dog", "car"}], [{"dog"}])
    assert pr["precision"] == 0.5 and pr["recall"] == 1.0


# ----------------------------------------------------------------------------- config
def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="unknown stages"):
        TrainConfig.from_dict({"stages": ["camera", "magic"]})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": 1})
    with pytest.raises(ValueError, match="bind_targets.imu"):
        TrainConfig.from_dict({"bind_targets": {"imu": "video"}})
    with pytest.raises(ValueError, match="bind_targets.camera"):
        TrainConfig.from_dict({"bind_targets": {"camera": "ego"}})
    with pytest.raises(ValueError, match="bind_modalities"):
        TrainConfig.from_dict({"bind_modalities": ["camera"]})
    with pytest.raises(ValueError, match="bind_modalities"):
        TrainConfig.from_dict({"bind_modalities": []})
    with pytest.raises(ValueError, match="camera_roll"):
        TrainConfig.from_dict({"camera_roll": -3})
    with pytest.raises(ValueError, match="camera_zoom"):
        TrainConfig.from_dict({"camera_zoom": 2.5})
    with pytest.raises(ValueError, match="camera_focus_fact"):
        TrainConfig.from_dict({"camera_focus_fact": 1.5})
    with pytest.raises(ValueError, match="camera_encoder keys"):
        TrainConfig.from_dict({"camera_encoder": {"stride": 2}})
    with pytest.raises(ValueError, match="camera_encoder.stem_stride"):
        TrainConfig.from_dict({"camera_encoder": {"stem_stride": 0}})
    with pytest.raises(ValueError, match="camera_encoder.widths"):
        TrainConfig.from_dict({"camera_encoder": {"widths": []}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: huge\n")
    assert main(["train", "--config", str(bad), "--data", str(tmp_path)]) == 2


def test_camera_augment_warps_within_its_bounds():
    from mmfusion_ros.train.augment import CameraAugment
    rng = np.random.default_rng(0)
    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 12:20, 14:18] = 1.0  # an upright bar in the middle
    assert torch.equal(CameraAugment()(x, rng), x)  # all off: untouched
    # a pure roll keeps the bar's mass (up to interpolation) but changes its orientation
    y = CameraAugment(roll_deg=30.0)(x, rng)
    assert y.shape == x.shape
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.15)
    assert (y - x).abs().amax((1, 2, 3)).min() > 0.1
    # zoom in by at most 1.5x: the bar's area grows by at most 1.5^2, and never shrinks below 1/1.5^2
    z = CameraAugment(zoom=0.5)(x, rng)
    ratio = z.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert bool(((ratio > 1 / 2.25 - 0.1) & (ratio < 2.25 + 0.1)).all()) and float(ratio.std()) > 0.05
    # a shift moves the bar by whole pixels, at most 3
    s = CameraAugment(shift=3)(x, rng)
    cols = [int(torch.nonzero(s[i, 0].sum(0) > 4).float().mean().round()) for i in range(8)]
    assert all(abs(c - 15.5) <= 3.5 for c in cols)
    # jitter changes brightness and contrast only: the bar stays where it was
    j = CameraAugment(jitter=0.2)(x, rng)
    assert torch.equal(j[:, :, 12:20, 14:18].std((1, 2, 3)) < 1e-6, torch.ones(8, dtype=torch.bool))


def test_shipped_configs_parse(repo_root):
    for name in ("train_tiny.yaml", "train_small.yaml", "train_joint.yaml", "train_small_refine.yaml",
                 "train_small_prior.yaml", "train_small_focus.yaml", "train_upper_bound.yaml"):
        TrainConfig.from_yaml(repo_root / "mmfusion_ros" / "config" / name).validate()
    ub = TrainConfig.from_yaml(repo_root / "mmfusion_ros" / "config" / "train_upper_bound.yaml")
    assert ub.supervised_upper_bound and ub.stages == ["bind"] and set(ub.bind_modalities) == {"lidar", "audio", "imu"}


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmfusion_ros.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_scenes=24, frames_per_scene=12, seed=0)


def _cfg(tmp_path, synth, **kw):
    d = dict(model="tiny", data=str(synth), out=str(tmp_path / "run"), threads=1, batch_size=32, lr=3e-3,
             epochs={"camera": 8, "bind": 8, "fusion": 2, "caption": 2, "events": 2},
             text_cache=str(tmp_path.parent / "text_cache"))
    d.update(kw)
    p = tmp_path / "cfg.yaml"
    import yaml

    p.write_text(yaml.safe_dump(d))
    return p


def _camera_text_accuracy(ckpt, synth):
    """Share of train frames whose camera embedding is closest to their own caption group."""
    from mmfusion_ros.model.checkpoint import load_checkpoint
    from mmfusion_ros.model.text import TextEmbedder
    from mmfusion_ros.train.data import load_split
    from mmfusion_ros.train.evaluate import embed_split

    model = load_checkpoint(ckpt)[0]
    sp = load_split(synth, "train")
    tok = embed_split(model, sp)
    canon = [c[0] for c in sp.captions]
    uniq = sorted(set(canon))
    emb = TextEmbedder(ckpt.parent.parent.parent / "text_cache").encode(uniq)
    lab = np.array([uniq.index(c) for c in canon])
    return M.zero_shot_accuracy(tok[:, 0], emb, lab), M.zero_shot_accuracy(tok[:, 1], emb, lab)


def test_train_resume_and_export(tmp_path, synth):
    cfg = _cfg(tmp_path, synth, stages=["camera", "bind"], bind_targets={"imu": "ego"})
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    assert (run / "last.pt").is_file() and not (run / "checkpoint.pt").exists()  # not all stages done yet
    # an untrained model as the reference point
    from mmfusion_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from mmfusion_ros.model.mmfusion import build_model

    _, vocab, info = load_checkpoint(run / "last.pt")
    torch.manual_seed(0)
    from mmfusion_ros.model.config import ModelConfig

    init = build_model(ModelConfig.from_dict(info["config"]))
    save_checkpoint(run / "init" / "ck.pt", init, vocab)
    cam0, lid0 = _camera_text_accuracy(run / "init" / "ck.pt", synth)

    # resume with all stages: camera/bind are not repeated, the rest run, a final checkpoint appears
    cfg2 = _cfg(tmp_path, synth)
    assert main(["train", "--config", str(cfg2), "--resume"]) == 0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    epochs = [(r["stage"], r["epoch"]) for r in log if "epoch_loss" in r]
    assert epochs.count(("camera", 0)) == 1 and ("events", 1) in epochs
    cam_loss = [r["epoch_loss"] for r in log if r.get("stage") == "camera" and "epoch_loss" in r]
    assert cam_loss[-1] < cam_loss[0]
    ck = run / "checkpoint.pt"
    _, _, info = load_checkpoint(ck)
    meta = info["metadata"]
    assert set(meta["event_thresholds"]) and meta["progress"]["events"] == 2
    assert (run / meta["caption_memory_file"]).is_file()
    cam1, lid1 = _camera_text_accuracy(ck, synth)
    assert cam1 > max(0.6, cam0 + 0.2), (cam0, cam1)  # camera learned to meet its captions
    assert lid1 > lid0 + 0.1, (lid0, lid1)  # LiDAR reaches text through the camera, never trained on it

    out = tmp_path / "bundle"
    assert main(["export", "--model", str(ck), "--out", str(out), "--text-cache", str(tmp_path.parent / "text_cache")]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["caption_memory"] == "caption_memory.npz" and (out / "caption_memory.npz").is_file()
    assert man["event_thresholds"] == meta["event_thresholds"]
    # familiarity statistics fitted by training survive export; the grounded caption memory records kinds
    assert man["familiarity"]["modalities"].keys() == {"camera", "lidar", "audio", "imu"}
    from mmfusion_ros.core.familiarity import Familiarity
    from mmfusion_ros.runtime.manifest import load_manifest

    assert Familiarity.from_manifest(load_manifest(out), out).assessed("imu")
    with np.load(out / "caption_memory.npz") as z:
        kinds = z["kinds"].tolist()
        assert len(kinds) == len(z["texts"]) == len(z["embeddings"])
    assert kinds and all(set(k.split("+")) <= {"objects", "sounds", "ego"} for k in kinds)

    js = tmp_path / "eval.json"
    assert main(["eval", "--model", str(ck), "--data", str(synth), "--split", "test", "--json", str(js),
                 "--text-cache", str(tmp_path.parent / "text_cache")]) == 0
    res = json.loads(js.read_text())
    assert len(res["T3_robustness"]["subsets"]) == 15
    assert {r["query"] for r in res["T1_retrieval"]} >= {"camera", "lidar", "audio", "imu", "text"}
    assert [h["horizon_s"] for h in res["T5_events"]["per_horizon"]] == [0.5, 1.0, 2.0]
    ceiling = res["T2_zero_shot"]["text_ceiling"]  # the captions' own texts against the class prompts
    assert set(ceiling) == {"whole caption", "objects in view", "the object ahead (named first)"}
    assert all(0.0 <= v["ci95"][0] <= v["accuracy"] <= v["ci95"][1] <= 1.0 for v in ceiling.values())

    # --init + --stages into a new run retrains just those stages from scratch (new residual fusion),
    # keeps the encoders, and calibrates thresholds no lower than the floor
    run2 = tmp_path / "run2"
    assert main(["train", "--config", str(cfg2), "--init", str(run / "last.pt"), "--stages", "fusion", "events",
                 "--out", str(run2)]) == 0
    log2 = [json.loads(x) for x in (run2 / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log2 if "epoch_loss" in r} == {"fusion", "events"}
    m1, _, _ = load_checkpoint(ck)
    m2, _, info2 = load_checkpoint(run2 / "checkpoint.pt")
    assert m2.fusion.residual and min(info2["metadata"]["event_thresholds"].values()) >= 0.3
    for a, b in zip(m1.modality_trunks.parameters(), m2.modality_trunks.parameters()):
        torch.testing.assert_close(a, b)

    # --calibrate-only recomputes the thresholds on val and trains nothing
    assert main(["train", "--config", str(cfg2), "--calibrate-only", "--out", str(tmp_path / "run3")]) == 2  # needs --init
    assert main(["train", "--config", str(cfg2), "--init", str(run2 / "last.pt"), "--calibrate-only",
                 "--out", str(tmp_path / "run3")]) == 0
    m3, _, info3 = load_checkpoint(tmp_path / "run3" / "checkpoint.pt")
    assert info3["metadata"]["event_thresholds"] == info2["metadata"]["event_thresholds"]
    for a, b in zip(m2.parameters(), m3.parameters()):
        torch.testing.assert_close(a, b)

    # re-binding one sensor (bind_modalities) trains its encoder and leaves the others as they were
    cfg4 = _cfg(tmp_path, synth, bind_modalities=["imu"], bind_targets={"imu": "ego"})
    assert main(["train", "--config", str(cfg4), "--init", str(run2 / "last.pt"), "--stages", "bind",
                 "--out", str(tmp_path / "run4")]) == 0
    m4, _, _ = load_checkpoint(tmp_path / "run4" / "last.pt")
    for k in ("camera", "lidar", "audio"):
        for a, b in zip(m2.modality_trunks[k].parameters(), m4.modality_trunks[k].parameters()):
            torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(m2.modality_heads["imu"].parameters(),
                                                    m4.modality_heads["imu"].parameters()))


def test_train_missing_dataset_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, tmp_path / "nowhere")
    assert main(["train", "--config", str(cfg)]) == 2


# ----------------------------------------------------------------------------- fact phrasings
def test_caption_facts_split_a_simulator_caption_into_single_facts():
    from mmfusion_ros.sim.captions import caption_facts

    f = caption_facts("A person stands ahead, a box sits on the left while a dog barking can be heard; "
                      "the robot drives quickly turning left, about to hit a box")
    assert f == {"seen": ["a person stands ahead", "a box sits on the left"], "nouns": ["a person", "a box"],
                 "heard": ["a dog barking can be heard"], "ego": ["the robot drives quickly turning left, about to hit a box"]}
    quiet = caption_facts("Nothing stands out; the robot stands still")
    assert quiet == {"seen": [], "nouns": [], "heard": [], "ego": ["the robot stands still"]}
    assert caption_facts("A traffic cone stands ahead; the robot drives")["nouns"] == ["a traffic cone"]


def test_caption_table_fact_positives():
    """A fact text is a match for every sample it is true of, and never for one it is not."""
    from types import SimpleNamespace

    from mmfusion_ros.train.trainer import CaptionTable

    class FakeEmbedder:
        def encode(self, texts):
            return np.zeros((len(texts), 4), np.float32)

    caps = [["A dog sits ahead; the robot stands still", "x1"],
            ["A dog sits ahead, a box sits on the left; the robot drives", "x2"],
            ["Nothing stands out while barking can be heard; the robot drives", "x3"]]
    table = CaptionTable(SimpleNamespace(captions=caps), FakeEmbedder(), facts=True)
    assert table.n_full == 6 and "a dog" in table.texts and "barking can be heard" in table.texts
    dog, drives, barking = (table.texts.index(t) for t in ("a dog", "the robot drives", "barking can be heard"))
    idx = np.arange(3)
    pos = table.positives(idx, np.array([dog, drives, barking]), "fused")
    assert pos.tolist() == [[True, False, False], [True, True, False], [False, True, True]]
    cam = table.positives(idx, np.array([dog, table.sample_ids[1][0], table.sample_ids[2][1]]), "camera")
    assert cam.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    rng = np.random.default_rng(0)
    picks = table.pick(np.zeros(200, np.int64), rng, "camera", 0.5)
    assert set(picks) <= set(table.sample_ids[0]) | set(table.fact_ids["camera"][0])
    assert any(p >= table.n_full for p in picks) and any(p < table.n_full for p in picks)
    assert set(table.pick(np.zeros(50, np.int64), rng)) <= set(table.sample_ids[0])  # facts off: whole phrasings
    # the IMU's bind target: each caption's robot-motion fact, one text shared by every caption with that motion
    ego = [table.texts[i[0]] for i in table.fact_ids["ego"]]
    assert ego == ["the robot stands still", "the robot drives", "the robot drives"]
    assert table.fact_ids["ego"][1] == table.fact_ids["ego"][2] and all(i[0] >= table.n_full for i in table.fact_ids["ego"])
    # the object ahead (named first): the camera's focus text; a caption that sees nothing has none
    assert [table.texts[f[0]] if f else None for f in table.fact_ids["focus"]] == ["a dog sits ahead", "a dog sits ahead", None]
    foc = table.pick(np.array([1] * 50 + [2] * 50), rng, "camera", 0.0, p_focus=1.0)
    assert set(foc[:50]) == {table.fact_ids["focus"][1][0]}
    assert set(foc[50:]) <= set(table.sample_ids[2])  # no focus fact: a whole phrasing


def test_scene_bootstrap_interval_is_over_scenes():
    # 10 scenes of 10 frames: 5 scenes all right, 5 all wrong -> the mean is 0.5 and its interval is wide
    v = np.r_[np.ones(50), np.zeros(50)]
    sc = np.repeat(np.arange(10), 10)
    lo, hi = M.scene_bootstrap_ci(v, sc, n_boot=2000)
    assert lo < 0.5 < hi and hi - lo > 0.4
    # the same frames spread over 100 independent scenes give a much tighter interval
    lo2, hi2 = M.scene_bootstrap_ci(v, np.arange(100), n_boot=2000)
    assert hi2 - lo2 < 0.6 * (hi - lo)
    assert all(np.isnan(M.scene_bootstrap_ci(v, np.zeros(100))))  # one scene: no interval


def test_scene_bootstrap_f1_brackets_the_micro_f1():
    # 10 scenes: half name their one class right, half name a wrong one
    pred = [{"dog"}] * 50 + [{"car"}] * 50
    truth = [{"dog"}] * 100
    sc = np.repeat(np.arange(10), 10)
    f1 = M.precision_recall(pred, truth)["f1"]
    lo, hi = M.scene_bootstrap_f1(pred, truth, sc, n_boot=2000)
    assert lo < f1 < hi and hi - lo > 0.3
    assert M.scene_bootstrap_f1([{"dog"}] * 100, truth, sc) == (1.0, 1.0)
    assert all(np.isnan(M.scene_bootstrap_f1(pred, truth, np.zeros(100))))


def test_ogm_scales_down_only_the_dominant_modality():
    """OGM (JointStep, GE off): a modality whose own embedding matches the text far better than the others' gets its
    encoder gradient scaled by 1 - tanh(alpha (rho - 1)); the others' gradients are untouched."""
    from mmfusion_ros.model.config import tiny_config
    from mmfusion_ros.model.mmfusion import SENSOR_KEYS, build_model
    from mmfusion_ros.train.trainer import JointStep

    torch.manual_seed(0)
    model = build_model(tiny_config(vocab_size=8)).eval()
    b = 8
    shapes = {"camera": (3, 128, 128), "lidar": (4, 128, 128), "audio": (1, 64, 101), "imu": (6, 400)}
    x = {k: torch.randn(b, *s) for k, s in shapes.items()}
    with torch.no_grad():
        text = model.encode("camera", x["camera"])  # the camera embedding IS the text: camera dominates
    present, pos = torch.ones(b, 4), torch.zeros(b, b, dtype=torch.bool)

    def grads(alpha):
        model.zero_grad()
        step = JointStep(model, SENSOR_KEYS, alpha, ge=False)
        step.train()
        step(x, present, text, pos).backward()
        return step, {k: model.modality_heads[k].weight.grad.clone() for k in SENSOR_KEYS}

    _, plain = grads(0.0)
    step, mod = grads(10.0)
    coef = step.coef_sum / step.steps
    assert coef[0] < 0.9 and torch.all(coef[1:] == 1.0)
    assert torch.allclose(mod["camera"], plain["camera"] * coef[0], atol=1e-6)
    for k in ("lidar", "audio", "imu"):
        assert torch.allclose(mod[k], plain[k], atol=1e-7)


def test_fusion_stage_with_a_skill_prior_fixes_the_mean_at_the_sensors_val_skill(tmp_path, synth):
    """`fusion_prior: skill`: the fusion stage measures each label sensor's zero-shot skill on val, builds the fusion
    with those weights (the IMU's 0) and the checkpoint carries them in its config, so a reload fuses the same."""
    from mmfusion_ros.model.checkpoint import load_checkpoint

    cfg = _cfg(tmp_path, synth, stages=["camera", "bind", "fusion"], fusion_residual=True, fusion_prior="skill",
               fusion_attention_gain=0.1, epochs={"camera": 2, "bind": 2, "fusion": 1})
    assert main(["train", "--config", str(cfg)]) == 0
    model, _, info = load_checkpoint(tmp_path / "run" / "last.pt")
    prior = info["config"]["fusion"]["prior"]
    skill = info["metadata"]["fusion_skill_prior"]
    assert len(prior) == 4 and prior[3] == 0.0  # the IMU cannot observe the class
    assert prior[:3] == [skill["weights"][k] for k in ("camera", "lidar", "audio")]
    assert model.fusion.fixed_prior and torch.equal(model.fusion.prior, torch.tensor(prior))


def test_camera_encoder_reshapes_the_camera_only_when_its_stage_is_retrained(tmp_path, synth):
    """`camera_encoder` with --init: retraining the camera stage swaps in a fresh camera of the new shape (the other
    encoders keep their weights, the checkpoint reloads with the new shape); a run that does not retrain the camera
    refuses the mismatch instead of silently keeping the old one."""
    from mmfusion_ros.model.checkpoint import load_checkpoint

    base = _cfg(tmp_path, synth, stages=["camera", "bind"], epochs={"camera": 1, "bind": 1}, out=str(tmp_path / "a"))
    assert main(["train", "--config", str(base)]) == 0
    old, _, _ = load_checkpoint(tmp_path / "a" / "last.pt")
    assert old.cfg.encoders["camera"].stem_stride == 4
    cfg = _cfg(tmp_path, synth, stages=["camera"], epochs={"camera": 1, "bind": 1},
               camera_encoder={"stem_stride": 2, "widths": [16, 24, 32, 32]}, out=str(tmp_path / "b"))
    assert main(["train", "--config", str(cfg), "--init", str(tmp_path / "a" / "last.pt"), "--stages", "camera"]) == 0
    new, _, _ = load_checkpoint(tmp_path / "b" / "last.pt")
    cam = new.cfg.encoders["camera"]
    assert (cam.stem_stride, cam.widths) == (2, (16, 24, 32, 32))
    assert new.modality_trunks["camera"].out_dim == 32
    x = torch.zeros(2, 3, 64, 64)
    assert new.encode("camera", x).shape == (2, new.cfg.embed_dim)
    for k in ("lidar", "audio"):  # untouched by a camera-only run
        for a, b in zip(old.modality_trunks[k].state_dict().values(), new.modality_trunks[k].state_dict().values()):
            assert torch.equal(a, b)
    cfg2 = _cfg(tmp_path, synth, stages=["bind"], epochs={"camera": 1, "bind": 1},
                camera_encoder={"stem_stride": 2}, out=str(tmp_path / "c"))
    assert main(["train", "--config", str(cfg2), "--init", str(tmp_path / "a" / "last.pt"), "--stages", "bind"]) == 2
