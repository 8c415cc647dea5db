"""Calibrated confidence: the runtime maps (core/calibration.py) and their fitting (train/calibrate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion_ros.core.calibration import Calibration, knots_to_json
from mmfusion_ros.train import calibrate as C

EVENTS = ["person_approaching", "alarm_sounding"]
HORIZONS = [0.5, 1.0, 2.0]


def _manifest(cal=None):
    m = {"event_types": EVENTS, "horizons": HORIZONS, "event_thresholds": {"person_approaching": 0.8, "alarm_sounding": 0.6}}
    if cal is not None:
        m["calibration"] = cal
    return m


def _spec():
    half = knots_to_json([0.0, 1.0], [0.0, 0.5])  # p -> p / 2
    const = knots_to_json([0.0, 1.0], [0.3, 0.3])
    return {"format_version": 1,
            "labels": {"subsets": {"camera+audio": half}, "fallback": const},
            "caption": {"subsets": {"imu": const}, "fallback": half},
            "events": {"event_types": EVENTS, "horizons": HORIZONS,
                       "maps": {"person_approaching": [half, half, half]}},
            "event_thresholds": {"person_approaching": 0.4, "alarm_sounding": 0.35}, "event_budget_per_min": 1.0}


def test_missing_calibration_is_identity():
    cal = Calibration.from_manifest(_manifest())
    assert not cal.available
    p = np.array([0.1, 0.7, 0.2])
    np.testing.assert_allclose(cal.labels(p, ["camera"]), p)
    ev = np.random.default_rng(0).random((2, 3))
    np.testing.assert_allclose(cal.events(ev), ev, rtol=1e-6)
    assert cal.caption(0.42, ["audio"]) == pytest.approx(0.42)
    assert cal.thresholds == {"person_approaching": 0.8, "alarm_sounding": 0.6}  # the manifest's raw ones


def test_maps_per_subset_fallback_and_events():
    cal = Calibration.from_manifest(_manifest(_spec()))
    assert cal.available and cal.budget_per_min == 1.0
    p = np.array([0.8, 0.2])
    np.testing.assert_allclose(cal.labels(p, ["audio", "camera"]), [0.4, 0.1])  # key is order-free: camera+audio
    np.testing.assert_allclose(cal.labels(p, ["camera", "audio", "imu"]), [0.3, 0.3])  # unknown subset -> fallback
    assert cal.caption(0.9, ["imu"]) == pytest.approx(0.3)
    assert cal.caption(0.9, ["camera"]) == pytest.approx(0.45)
    ev = np.full((2, 3), 0.8)
    out = cal.events(ev)
    np.testing.assert_allclose(out[0], 0.4)  # mapped
    np.testing.assert_allclose(out[1], 0.8)  # a type without a map keeps its probabilities
    assert cal.events(np.full((5, 2, 3), 0.8)).shape == (5, 2, 3)  # batched
    with pytest.raises(ValueError, match="expected"):
        cal.events(np.zeros((3, 3)))
    assert cal.thresholds == {"person_approaching": 0.4, "alarm_sounding": 0.35}  # replace the raw ones
    # changing one subset's map changes only that subset
    spec = _spec()
    spec["labels"]["subsets"]["camera+audio"] = knots_to_json([0.0, 1.0], [0.0, 1.0])
    cal2 = Calibration.from_manifest(_manifest(spec))
    np.testing.assert_allclose(cal2.labels(p, ["camera", "audio"]), p)
    np.testing.assert_allclose(cal2.labels(p, ["lidar"]), [0.3, 0.3])


@pytest.mark.parametrize("bad, match", [
    ({"labels": {"subsets": {"camera": {"x": [0.5, 0.2], "y": [0.1, 0.2]}}}}, "strictly increasing"),
    ({"labels": {"subsets": {"camera": {"x": [0.0, 1.0], "y": [0.1, 1.5]}}}}, r"\[0, 1\]"),
    ({"labels": {"fallback": {"x": [0.0], "y": [0.0]}}}, ">= 2"),
    ({"event_thresholds": {"person_approaching": 0.0}}, r"\(0, 1\]"),
    ({"event_thresholds": {"unknown_event": 0.5}}, "unknown event"),
    ({"format_version": 99}, "not supported"),
    ({"track_event_thresholds": {"person_approaching": 1.5}}, r"track_event_thresholds.person_approaching"),
    ({"track_event_thresholds": {"unknown_event": 0.5}}, "unknown event type"),
])
def test_malformed_calibration_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        Calibration.from_manifest(_manifest(bad))


def test_isotonic_fit_calibrates_and_keeps_order():
    rng = np.random.default_rng(0)
    s = rng.random(20000)
    y = rng.random(20000) < s ** 3  # overconfident raw scores: P(right | s) = s^3
    x, yk = C.fit_isotonic(s[:10000], y[:10000])
    assert len(x) <= 26 and x[0] == 0.0 and x[-1] == 1.0
    assert np.all(np.diff(x) > 0) and np.all(np.diff(yk) > 0)  # strictly increasing: rankings survive
    cal = np.interp(s[10000:], x, yk)
    raw_ece, cal_ece = C.ece(s[10000:], y[10000:]), C.ece(cal, y[10000:])
    assert raw_ece > 0.15 and cal_ece < 0.02, (raw_ece, cal_ece)
    order = np.argsort(s[10000:])
    assert np.all(np.diff(cal[order]) >= 0)


def test_ece_known_values():
    assert C.ece(np.full(10, 0.9), np.r_[np.ones(9), 0]) == pytest.approx(0.0, abs=1e-12)
    assert C.ece(np.ones(4), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert C.ece(np.r_[np.full(5, 0.1), np.full(5, 0.7)], np.r_[np.zeros(5), np.ones(5)]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)
    rel = C.reliability(np.array([0.05, 0.95]), np.array([0, 1]))
    assert [b["count"] for b in rel] == [1, 1] and rel[1]["accuracy"] == 1.0


def _event_outputs(n_scenes=30, frames=20, seed=0):
    """One event type; scenes with an onset at frame 12 preceded by rising scores, others noise."""
    rng = np.random.default_rng(seed)
    N = n_scenes * frames
    scene = np.repeat(np.arange(n_scenes), frames)
    t = np.tile(np.arange(frames) * 0.2, n_scenes).astype(np.float32)
    now = np.zeros((N, 1), bool)
    fut = np.zeros((N, 1, 3), bool)
    probs = rng.random((N, 1, 3)) * 0.5  # noise up to 0.5
    for s in range(0, n_scenes, 2):
        base = s * frames
        now[base + 12: base + 16, 0] = True
        for h, hz in enumerate(HORIZONS):
            k = int(round(hz / 0.2))
            fut[base + max(0, 12 - k): base + 16, 0, h] = True
        probs[base + 8: base + 16, 0, :] = 0.6 + 0.3 * rng.random((8, 3))
    o = C.SplitOutputs(["person"], np.array([0]), scene, t, 0.2, np.zeros((N, 1), bool), np.zeros((N, 1), bool))
    o.event_probs, o.events_future, o.events_now = probs, fut, now
    o.event_types, o.horizons = ["person_approaching"], HORIZONS
    return o


def test_event_thresholds_meet_the_false_alarm_budget_with_the_tracker():
    o = _event_outputs()
    thr, info = C.choose_thresholds(o.event_probs, o, budget_per_min=1.0)
    t = thr["person_approaching"]
    assert info["person_approaching"]["false_alarms_per_min"] <= 1.0
    assert info["person_approaching"]["warned"] > 0  # the budget is not met by never flagging
    # rule "lowest": one grid step lower breaks the budget (noise reaches 0.5, smoothed a bit lower)
    def at(x):
        st, sh, ac = C.run_tracker(o.event_probs, o.scene, o.event_types, o.horizons, {"person_approaching": x})
        return C.tracker_metrics(st, sh, ac, o.events_now, o.events_future, o.scene, o.t, o.frame_step)[0]

    assert at(t - 0.01)["false_alarms_per_min"] > 1.0 or t == pytest.approx(0.10)
    # rule "fewest_false_alarms": no higher threshold (all in budget) warns more onsets, or as many with fewer
    # false alarms
    thr_f, _ = C.choose_thresholds(o.event_probs, o, budget_per_min=1.0, rule="fewest_false_alarms")
    tf = thr_f["person_approaching"]
    here = at(tf)
    assert tf >= t and here["false_alarms_per_min"] <= 1.0
    for x in np.arange(tf + 0.01, 1.0, 0.05):
        m = at(float(x))
        assert m["warned"] < here["warned"] or (m["warned"] == here["warned"]
                                                and m["false_alarms_per_min"] >= here["false_alarms_per_min"])
    with pytest.raises(ValueError, match="rule"):
        C.choose_thresholds(o.event_probs, o, rule="best")
    # a stricter budget gives a threshold at least as high
    thr2, _ = C.choose_thresholds(o.event_probs, o, budget_per_min=0.1)
    assert thr2["person_approaching"] >= t


def test_flags_that_warn_nothing_do_not_spend_the_budget():
    """Scores that rise only where nothing follows: every threshold in budget warns no onset, so rule
    "fewest_false_alarms" takes the one with none, where "lowest" spends the budget."""
    o = _event_outputs()
    o.event_probs = np.roll(o.event_probs, 20, axis=0)  # one scene on: the rising scores sit in scenes without onsets
    thr, info = C.choose_thresholds(o.event_probs, o, budget_per_min=3.0, rule="fewest_false_alarms")
    r = info["person_approaching"]
    assert r["warned"] == 0 and r["false_alarms"] == 0
    assert thr["person_approaching"] > 0.6  # above the rising scores (0.6-0.9, smoothed)
    low_thr, low = C.choose_thresholds(o.event_probs, o, budget_per_min=3.0)
    assert low["person_approaching"]["warned"] == 0 and low["person_approaching"]["false_alarms"] > 0
    assert low_thr["person_approaching"] < thr["person_approaching"]


def test_event_type_without_positives_gets_the_no_evidence_threshold():
    o = _event_outputs()
    o.events_future[:] = False
    o.events_now[:] = False
    thr, info = C.choose_thresholds(o.event_probs * 0.1, o)
    assert thr["person_approaching"] == pytest.approx(0.5) and info["person_approaching"]["rule"] == "no evidence"


def test_fit_writes_a_small_manifest_entry_that_loads(tmp_path):
    rng = np.random.default_rng(1)
    o = _event_outputs()
    N = len(o.scene)
    o.classes = ["person", "dog"]
    o.prompt_class = np.array([0, 1, -1])  # a third prompt names no simulator class
    for key in ("camera+audio", "imu"):
        p = rng.dirichlet(np.ones(3), N)
        o.label_probs[key] = p
        o.label_right[key] = rng.random((N, 3)) < p
        o.caption_conf[key] = rng.random(N)
        o.caption_right[key] = rng.random(N) < 0.5
        o.caption_frame[key] = np.arange(N)
        o.caption_text[key] = [""] * N
        o.caption_raw[key] = [""] * N
    spec = C.fit(o)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x", "event_types": o.event_types, "horizons": HORIZONS,
                                                        "event_thresholds": {"person_approaching": 0.9}}))
    C.write_into_bundle(tmp_path, spec)
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["name"] == "x" and len(json.dumps(man["calibration"])) < 20000
    cal = Calibration.from_manifest(man)
    assert cal.available and cal.subsets("labels") == ["camera+audio", "imu"]
    assert set(cal.thresholds) == {"person_approaching"} and cal.thresholds["person_approaching"] != 0.9
    out = cal.labels(np.array([0.9, 0.05, 0.05]), ["audio", "camera"])
    assert out.shape == (3,) and np.all((out >= 0) & (out <= 1))


def test_ground_truth_seen_heard_and_caption_right():
    classes = ["person", "dog", "box", "door"]
    caps = [["A box sits ahead while a dog barking can be heard; the robot stands still"],
            ["The robot drives. nothing is in view. it is quiet."]]
    present = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.uint8)
    seen, heard, ego = C.frame_truth(classes, caps, present, np.array([1, -1]))
    assert seen[0].tolist() == [False, False, True, False] and heard[0].tolist() == [False, True, False, False]
    assert not seen[1].any() and not heard[1].any()
    assert ego == ["the robot is stationary", "the robot drives"]
    truth = C.observable_truth(seen, heard, ["imu"])
    assert not truth.any()  # the IMU observes no class
    assert C.observable_truth(seen, heard, ["audio"])[0].tolist() == [False, True, False, False]
    text = "A box sits ahead while barking can be heard; the robot stands still"
    assert C.caption_right(text, ["camera", "audio", "imu"], seen[0], heard[0], ego[0], classes) is True
    # from audio alone the object clause is not published: the sound clause alone is judged
    assert C.caption_right("A door stands ahead while barking can be heard", ["audio"], seen[0], heard[0], ego[0], classes) is True
    assert C.caption_right("A door stands ahead while barking can be heard", ["camera"], seen[0], heard[0], ego[0], classes) is False
    assert C.caption_right("The robot drives", ["imu"], seen[0], heard[0], ego[0], classes) is False  # it stands still
    assert C.caption_right("A door stands ahead", ["imu"], seen[0], heard[0], ego[0], classes) is None  # nothing to publish
