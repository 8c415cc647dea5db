"""`mmfusion calibrate` and the evaluation tables of issue 10: calibration error, events at the shipped
thresholds, unsupported claims per presence subset, familiarity (random bundle, synthetic dataset)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mmfusion_ros.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmfusion_ros.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth_eval"), n_scenes=16, frames_per_scene=10, seed=3)


def _digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def calibrated(random_model_dir, synth, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("cal") / "bundle"
    shutil.copytree(random_model_dir, bundle)
    before = _digests(bundle)
    old = json.loads((bundle / "manifest.json").read_text())
    assert main(["calibrate", "--model", str(bundle), "--data", str(synth), "--split", "val,test"]) == 0
    assert _digests(bundle) == before  # ONNX parts and checkpoint untouched
    man = json.loads((bundle / "manifest.json").read_text())
    assert {k: v for k, v in man.items() if k != "calibration"} == {k: v for k, v in old.items() if k != "calibration"}
    return bundle


def test_calibrate_writes_a_loadable_entry(calibrated):
    from mmfusion_ros.core.calibration import Calibration
    from mmfusion_ros.core.observability import subset_key
    from mmfusion_ros.train.calibrate import all_subsets

    man = json.loads((calibrated / "manifest.json").read_text())
    cal = Calibration.from_manifest(man)
    assert cal.available and cal.budget_per_min == 1.0
    assert set(cal.subsets("labels")) == {subset_key(s) for s in all_subsets()}
    assert set(cal.thresholds) == set(man["event_types"])
    assert man["calibration"]["fitted_on"]["frames"] > 0
    assert set(man["calibration"]["method_comparison_cv_ece"]) >= {"identity", "isotonic", "temperature"}
    # the labels' skill weights were fitted with it, one per label sensor (not the IMU), and load
    assert set(man["calibration"]["label_weights"]) == {"camera", "lidar", "audio"} == set(cal.label_weights)
    assert all(0.0 <= w <= 1.0 for w in cal.label_weights.values())


def test_calibrate_refuses_a_non_bundle(tmp_path, synth):
    assert main(["calibrate", "--model", str(tmp_path), "--data", str(synth)]) == 2


def test_eval_reports_calibration_events_and_unsupported_claims(calibrated, synth, tmp_path):
    js = tmp_path / "report" / "eval.json"
    assert main(["eval", "--model", str(calibrated), "--data", str(synth), "--split", "test", "--json", str(js),
                 "--markdown", str(tmp_path / "report" / "eval.md"), "--tables", "T5", "T6", "T7", "T8"]) == 0
    res = json.loads(js.read_text())
    t6 = res["T6_calibration"]
    assert t6["calibration_available"] and {"raw", "calibrated"} <= set(t6)
    for v in ("raw", "calibrated"):
        assert {"labels_top1_ECE", "events_1s_ECE", "caption_ECE"} <= set(t6[v])
    assert len(t6["per_subset"]) == 15
    figs = [Path(p) for p in t6["figures"]]
    assert len(figs) == 3 and all(p.is_file() and p.parent == js.parent and p.stat().st_size > 1000 for p in figs)
    # events as the node raises them, raw and calibrated, with the false-alarm rate and onsets warned
    names = [v["name"] for v in res["T5_events"]["tracker"]["variants"]]
    assert len(names) == 2 and "calibrated" in names[1]
    assert "not scored" in res["T5_events"]["tracker"]["tracks"]  # a dataset without LiDAR sweeps says so
    row = res["T5_events"]["tracker"]["variants"][1]["per_type"][0]
    assert {"false_alarms_per_min", "warned", "onsets", "AP_1s", "threshold"} <= set(row)
    # unsupported claims: what the robot publishes is always supported; the ungated model is not
    t7 = res["T7_unsupported_claims"]
    assert len(t7["subsets"]) == 15 and t7["published_total_unsupported"] == 0
    imu = next(r for r in t7["subsets"] if r["subset"] == "imu")
    assert imu["model"]["unsupported_labels"] > 0 and imu["published"]["unsupported_per_frame"] == 0
    assert "T8_familiarity" in res
    md = (tmp_path / "report" / "eval.md").read_text()
    assert "### T6 calibration error" in md and "### T7 unsupported claims" in md


def test_eval_of_an_uncalibrated_bundle_reports_raw_only(random_model_dir, synth, tmp_path):
    js = tmp_path / "eval.json"
    assert main(["eval", "--model", str(random_model_dir), "--data", str(synth), "--split", "test", "--json", str(js),
                 "--tables", "T6"]) == 0
    t6 = json.loads(js.read_text())["T6_calibration"]
    assert not t6["calibration_available"] and "raw" in t6 and "calibrated" not in t6


def test_calibrate_caption_only_keeps_every_other_entry(calibrated, synth, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated, bundle)
    old = json.loads((bundle / "manifest.json").read_text())["calibration"]
    assert "caption" in old  # the fixture's captions are calibrated
    fitted = old["caption"]
    old["events"] = {"tampered": True}  # a marker: --caption-only must keep it as it is
    old["caption"] = {"tampered": True}  # and this one it must refit
    man = json.loads((bundle / "manifest.json").read_text())
    man["calibration"] = old
    (bundle / "manifest.json").write_text(json.dumps(man))
    assert main(["calibrate", "--model", str(bundle), "--data", str(synth), "--split", "val,test", "--caption-only"]) == 0
    new = json.loads((bundle / "manifest.json").read_text())["calibration"]
    assert new["events"] == {"tampered": True}
    assert {k: v for k, v in new.items() if k not in ("caption", "caption_fitted_on")} == \
        {k: v for k, v in old.items() if k != "caption"}
    assert new["caption"] == fitted  # the same data give the same maps
    assert [x["split"] for x in new["caption_fitted_on"]["sets"]] == ["val", "test"]
