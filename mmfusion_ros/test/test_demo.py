"""`mmfusion demo` end to end on a short scenario, and the report's scoring on hand-made inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.core.types import EVENT_TYPES
from mmfusion_ros.report import metrics as M
from mmfusion_ros.report.data import OutputFrame, Outputs, Scenario
from mmfusion_ros.report.summary import compute_summary, markdown, terminal


# ------------------------------------------------------------------------------ scoring, by hand
def test_intervals_from_samples_runs_and_edges():
    t = np.arange(10) * 0.1
    a = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1]
    iv = M.intervals_from_samples(t, a)
    assert np.allclose(iv, [(0.1, 0.3), (0.5, 0.6), (0.8, 1.0)])
    assert M.intervals_from_samples([], []) == []
    with pytest.raises(ValueError):
        M.intervals_from_samples([0.0, 0.1], [True])


def test_active_at_and_within_horizon():
    iv = [(1.0, 2.0)]
    t = np.array([0.0, 0.5, 0.99, 1.0, 1.5, 2.0])
    assert M.active_at(iv, t).tolist() == [False, False, False, True, True, False]
    assert M.active_within(iv, t, 0.5).tolist() == [False, True, True, True, True, False]


def test_event_scores_ap_lead_and_precision():
    t = np.arange(20) * 0.1  # 0.0 .. 1.9
    gt = {"a": [(1.0, 1.5)], "b": []}
    # "a": flagged from 0.7 s through the event, probability ranks the true-within-horizon frames first
    flagged = np.zeros((20, 2), bool)
    flagged[7:15, 0] = True
    scores = np.zeros((20, 2))
    y = M.active_within(gt["a"], t, 0.2)  # frames 8..14 (0.8 .. 1.4)
    scores[y, 0] = 0.9
    scores[6, 0] = 0.5  # a false positive ranked below every true one: AP stays 1
    s = M.score_events(t, scores, flagged, gt, ["a", "b"], horizon=0.2)
    a, b = s
    assert a.ap == pytest.approx(1.0)
    assert a.positives == int(y.sum()) == 7
    assert (a.onsets, a.detected) == (1, 1)
    assert a.lead_s == pytest.approx(0.3)  # flags began at 0.7, onset at 1.0
    assert a.flagged == 8 and a.flag_precision == pytest.approx(7 / 8)
    assert math.isnan(b.ap) and b.onsets == 0 and math.isnan(b.lead_s) and math.isnan(b.flag_precision)
    # a false positive ranked above the 7 tied true frames: one threshold step at precision 7/8
    scores[0, 0] = 1.0
    assert M.score_events(t, scores, flagged, gt, ["a", "b"], horizon=0.2)[0].ap == pytest.approx(7 / 8)


def test_missed_onset_has_no_lead():
    t = np.arange(10) * 0.1
    flagged = np.zeros((10, 1), bool)
    flagged[8:, 0] = True  # too late: flagged after the onset at 0.5
    s = M.score_events(t, flagged.astype(float), flagged, {"a": [(0.5, 0.7)]}, ["a"], horizon=0.0)[0]
    assert (s.onsets, s.detected) == (1, 0) and math.isnan(s.lead_s)


def test_label_class_from_labels_and_prompts():
    assert M.label_class("person") == "person"
    assert M.label_class("traffic_cone") == "traffic_cone"
    assert M.label_class("a traffic cone") == "traffic_cone"
    assert M.label_class("an alarm ringing") == "alarm"
    assert M.label_class("a tree") is None


def _obj(cls, x, y, sounding=False):
    return M.GTObject(cls, np.array([x, y, 0.0]), np.ones(3), 0.0, sounding)


def test_label_accuracy_nearest_in_view_and_heard():
    hfov = math.radians(60)
    frames = [
        [_obj("dog", 5, 0), _obj("person", 8, 1)],  # dog nearest in view
        [_obj("car", -5, 0), _obj("alarm", 20, 30, sounding=True)],  # nothing in view; alarm heard (36 m)
        [_obj("box", 4, 10)],  # out of the field of view, silent: not scored
        [_obj("chair", 3, 0.5)],
    ]
    s = M.score_labels(["dog", "an alarm ringing", "box", "person"], frames, hfov)
    assert s.frames == 3 and s.nearest_frames == 2
    assert s.nearest_correct == 1 and s.present_correct == 2
    assert s.nearest_accuracy == pytest.approx(0.5) and s.present_accuracy == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.score_labels(["dog"], frames, hfov)


def test_latency_from_clock_mapping_and_drops():
    # sim clock 100 + k/10 s received at wall 5000 + k/10 + jitter >= 2 ms: offset 4900.002 s
    k = np.arange(50)
    clock_v = 100 + k / 10
    clock_r = clock_v + 4900 + 0.002 + (k % 3) * 0.004
    off = M.clock_offset(clock_r, clock_v)
    assert off == pytest.approx(4900.002)
    lat = M.latency_ms([101.0, 102.0], [101.0 + off + 0.080, 102.0 + off + 0.120], off)
    assert lat == pytest.approx([80.0, 120.0])
    # replayed at half speed: sim time runs at 0.5 x wall time
    off2 = M.clock_offset(2 * clock_v + 4900 + 0.002, clock_v, rate=0.5)
    assert off2 == pytest.approx(4900.002)
    assert M.latency_ms([101.0], [202.0 + off2 + 0.05], off2, rate=0.5) == pytest.approx([50.0])
    assert M.expected_frames(0.0, 1.0, 10.0) == 11
    assert M.expected_frames(0.05, 0.95, 10.0) == 9
    assert M.expected_frames(1.0, 0.0, 10.0) == 0
    d = M.count_drops(np.arange(0, 1.01, 0.2), 0.0, 1.0, 10.0)
    assert (d.expected, d.fused, d.dropped) == (11, 6, 5) and d.rate == pytest.approx(5 / 11)


def test_summary_from_hand_made_recording():
    """compute_summary on a scenario and recording built in memory: every headline figure checks out."""
    E = len(EVENT_TYPES)
    gt_t = np.arange(0, 2.0, 0.1)  # 20 ground-truth samples
    active = np.zeros((20, E), bool)
    active[10:15, EVENT_TYPES.index("dog_barking")] = True  # dog barks 1.0 .. 1.5
    objs = [[_obj("dog", 6, 0, sounding=bool(a))] for a in active[:, EVENT_TYPES.index("dog_barking")]]
    sc = Scenario(gt_t, objs, active, [["a dog"]] * 20, None, 0.0, 1.9, {})
    frames, events = [], []
    for k in range(0, 19, 2):  # 10 of the 20 frames a 10 Hz node should have made over 0 .. 1.9 s
        s = k / 10
        frames.append(OutputFrame(s, s + 1000.05, ["camera", "audio"], [("dog" if k < 10 else "person", 0.8)], [],
                                  5.0))
        evs = [{"type": "dog_barking", "probability": 0.9, "horizon": 0.5, "state": 1, "track_id": 1,
                "time_to_event": 0.25}] if 0.8 <= s < 1.5 else []
        events.append((s, evs))
    clock = np.stack([np.arange(0, 2, 0.01) + 1000.0, np.arange(0, 2, 0.01)], axis=1)  # offset 1000 s
    out = Outputs(frames, [(0.0, 1000.0, "a dog barks", 0.7)], events, 10, clock, {"backend": "onnxruntime"})
    s = compute_summary(sc, out, rate_hz=10.0, info={"scenario": "hand_made", "seconds": 2.0, "seed": 0, "model": "m"})
    assert s["frames_fused"] == 10
    assert s["latency_ms"]["p50"] == pytest.approx(50.0, abs=0.5)
    assert (s["drops"]["expected"], s["drops"]["dropped"]) == (20, 10)
    assert s["presence"]["camera"] == 1.0 and s["presence"]["lidar"] == 0.0
    assert s["labels"]["nearest_in_view_accuracy"] == pytest.approx(0.5)  # dog right in the first half only
    ev = {e["type"]: e for e in s["events"]}["dog_barking"]
    assert (ev["onsets"], ev["detected"]) == (1, 1) and ev["lead_s"] == pytest.approx(0.2)
    assert ev["ap"] == pytest.approx(0.9)  # 4 true frames ranked first, then 4 true among 6 tied at 0
    md, txt = markdown(s), terminal(s)
    for text in (md, txt):
        assert "frames fused" in text and "dog_barking" in text and "50 / 50 ms" in text


# --------------------------------------------------------------------------------- end to end
def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["ROS_LOG_DIR"] = str(tmp / "ros_log")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ROS_DOMAIN_ID", None)  # the demo picks and locks its own
    return env


def _demo(args, tmp: Path, timeout: float = 240):
    cmd = [sys.executable, "-m", "mmfusion_ros.cli", "demo", *map(str, args)]
    return subprocess.run(cmd, env=_env(tmp), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(random_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "out"
    p = _demo(["--out", out, "--seconds", 4, "--seed", 1, "--model", random_model_dir], tmp)  # default scenario
    return p, out, tmp


@pytest.mark.ros
@pytest.mark.slow
def test_demo_end_to_end(demo_run):
    p, out, _ = demo_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for f in ("demo.mp4", "contact_sheet.png", "timeline.png", "summary.md", "summary.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "outputs" / "metadata.yaml").is_file() and (out / "scenario" / "metadata.yaml").is_file()
    s = json.loads((out / "summary.json").read_text())
    assert s["frames_fused"] > 0
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] < 5000
    assert s["drops"]["expected"] >= 35  # 4 s at 10 Hz
    assert s["scenario"] in ("demo", "street_mix") and s["backend"] == "onnxruntime"
    assert s["captions"] > 0 and s["event_arrays"] == s["frames_fused"]
    assert str(out) in p.stdout and "frames fused" in p.stdout  # the table and where the report is
    import cv2

    cap = cv2.VideoCapture(str(out / "demo.mp4"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, img = cap.read()
    cap.release()
    # each fused frame is held until the next: the video lasts as long as the scene (10 fps)
    assert ok and img.shape[0] > 300 and s["frames_fused"] <= n <= 10 * s["scenario_span_s"] + 2
    assert (out / "contact_sheet.png").stat().st_size < 500_000
    # the recording is an ordinary bag: the report can be rebuilt from it
    from mmfusion_ros.report.data import read_outputs

    rec = read_outputs(out / "outputs")
    assert len(rec.frames) == s["frames_fused"] and len(rec.clock) > 100


@pytest.mark.ros
@pytest.mark.slow
def test_demo_names_the_failed_stage(demo_run, random_model_dir, tmp_path):
    """A model the node cannot load: exit code 4, the message names the node stage and its log."""
    _, out, tmp = demo_run
    bad = tmp_path / "bad_model"
    shutil.copytree(random_model_dir, bad)
    for f in (bad / "onnx").glob("*.onnx"):
        f.write_bytes(b"not an onnx file")
    p = _demo(["--out", tmp_path / "out", "--bag", out / "scenario", "--model", bad, "--no-video"], tmp, timeout=150)
    assert p.returncode == 4, p.stdout[-2000:] + p.stderr[-2000:]
    assert "stage 'node' failed" in p.stderr and "fusion_node.log" in p.stderr
    assert _demo(["--out", tmp_path / "o2", "--model", tmp_path / "nowhere"], tmp, timeout=60).returncode == 2


@pytest.mark.ros
@pytest.mark.slow
def test_report_rebuilt_from_bags(demo_run, tmp_path):
    """--bag + --outputs: the report again from the two bags alone, with the same figures."""
    p0, out, tmp = demo_run
    assert p0.returncode == 0
    again = tmp_path / "again"
    p = _demo(["--out", again, "--bag", out / "scenario", "--outputs", out / "outputs", "--no-video"], tmp, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, again))
    for k in ("frames_fused", "latency_ms", "drops", "labels", "events", "event_map"):
        assert a[k] == b[k], k
    assert (again / "timeline.png").is_file() and not (again / "demo.mp4").exists()
    bad = _demo(["--out", tmp_path / "x", "--bag", out / "scenario", "--outputs", out / "scenario"], tmp, timeout=120)
    assert bad.returncode == 6 and "stage 'report' failed" in bad.stderr  # a bag with no fused frames
