"""`mmfusion train --bags`: binding from simulator bags through the node's own sync code, no labels."""

import json

import pytest

from mmfusion_ros.cli import main


@pytest.mark.slow
def test_bags_binding_improves_lidar_camera_retrieval(tmp_path, repo_root):
    init = repo_root / "mmfusion_ros" / "models" / "mmfusion_small" / "checkpoint.pt"
    if not init.is_file():
        pytest.skip(f"shipped model not found at {init} (train and export it first; see models/MODEL_CARD.md)")
    bag = tmp_path / "bag"
    assert main(["sim", "--scenario", "street_mix", "--seconds", "5", "--seed", "11", "--out", str(bag)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--bags", str(bag), "--init", str(init), "--out", str(out), "--epochs", "6", "--seed", "0"]) == 0
    rep = json.loads((out / "bags_report.json").read_text())
    assert rep["windows"] >= 30  # 5 s at 10 Hz, minus frames before every sensor had data
    b, a = rep["before"], rep["after"]
    assert a["lidar->camera R@1"] > b["lidar->camera R@1"], rep
    assert a["lidar->camera R@5"] >= b["lidar->camera R@5"], rep
    assert rep["loss_last"] < rep["loss_first"]
    # the new checkpoint is a complete, exportable model
    assert (out / "checkpoint.pt").is_file()
    # the bag recordings are now the familiar world: statistics refitted on them, and they survive export
    from mmfusion_ros.core.familiarity import Familiarity
    from mmfusion_ros.model.checkpoint import load_checkpoint
    from mmfusion_ros.runtime.manifest import load_manifest

    fam = load_checkpoint(out / "checkpoint.pt")[2]["metadata"]["familiarity"]
    assert fam["fitted_on"].startswith("train --bags") and (out / fam["file"]).is_file()
    bundle = tmp_path / "bundle"
    assert main(["export", "--model", str(out / "checkpoint.pt"), "--out", str(bundle)]) == 0
    f = Familiarity.from_manifest(load_manifest(bundle), bundle)
    assert all(f.assessed(m) for m in ("camera", "lidar", "audio", "imu"))
    shipped = json.loads((init.parent / "manifest.json").read_text())["familiarity"]["modalities"]
    assert json.loads((bundle / "manifest.json").read_text())["familiarity"]["modalities"] != shipped


def test_bags_needs_init_and_out(tmp_path):
    assert main(["train", "--bags", str(tmp_path)]) == 2
    assert main(["train", "--bags", str(tmp_path / "missing"), "--init", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")]) == 2
