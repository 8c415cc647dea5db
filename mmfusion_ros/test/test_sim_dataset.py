"""`mmfusion sim dataset`: the docs/architecture.md format, split rules, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.core.preprocess import DEFAULT
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, OBJECT_CLASSES
from mmfusion_ros.sim.dataset import HELDOUT_COMBINATIONS, DatasetConfig, plan_scenes, write_dataset

SMALL = dict(n=48, frames_per_scene=4)  # 12 scenes: every split gets at least one


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    m = write_dataset(out, DatasetConfig(seed=0, **SMALL), progress=False)
    return out, m


def _load(out: Path, split: str):
    arrays = [dict(np.load(out / f)) for f in json.loads((out / "manifest.json").read_text())["splits"][split]]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]} if arrays else None


def test_manifest_and_shards_follow_the_contract(dataset):
    out, m = dataset
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["format_version"] == 1 and m["n_samples"] == SMALL["n"] and m["frame_step"] == 0.2
    assert m["classes"] == OBJECT_CLASSES and m["event_types"] == EVENT_TYPES and m["horizons"] == EVENT_HORIZONS
    assert m["preprocess"]["image_size"] == DEFAULT.image_size
    assert m["samples_per_second"] > 0
    assert [list(c) for c in HELDOUT_COMBINATIONS] == m["heldout_combinations"]
    total = 0
    C, E, H = len(OBJECT_CLASSES), len(EVENT_TYPES), len(EVENT_HORIZONS)
    for split, files in m["splits"].items():
        assert files, f"split {split} is empty"
        for f in files:
            d = np.load(out / f)
            n = len(d["t"])
            total += n
            expect = {"camera": (np.uint8, (n, 128, 128, 3)), "lidar": (np.float16, (n, 4, 128, 128)),
                      "audio": (np.float16, (n, 1, 64, 101)), "imu": (np.float16, (n, 6, 400)),
                      "scene_id": (np.int32, (n,)), "t": (np.float32, (n,)), "class_id": (np.int16, (n,)),
                      "classes_present": (np.uint8, (n, C)), "sound_class": (np.int16, (n,)),
                      "events_now": (np.uint8, (n, E)), "events_future": (np.uint8, (n, E, H)),
                      "time_to_onset": (np.float32, (n, E))}
            assert set(d.files) == set(expect)
            for k, (dt, shape) in expect.items():
                assert d[k].dtype == dt and d[k].shape == shape, k
            for k in ("lidar", "audio", "imu"):
                assert np.isfinite(d[k]).all(), k
            side = json.loads((out / f.replace(".npz", ".json")).read_text())
            assert len(side["captions"]) == n and len(side["objects"]) == n
            assert all(len(c) >= 2 and all(isinstance(s, str) and s for s in c) for c in side["captions"])
            # frames of a scene are consecutive, frame_step apart, and in time order
            for sid in np.unique(d["scene_id"]):
                t = d["t"][d["scene_id"] == sid]
                assert np.allclose(np.diff(t), 0.2) and t[0] == 0.0
            # the focus class is the zero-shot label and is present (seen or heard) in most frames
            present = d["classes_present"][np.arange(n), d["class_id"]]
            assert present.mean() > 0.6
            assert (d["lidar"][:, 0] > 0).sum(axis=(1, 2)).min() > 100  # LiDAR returns in every sweep
    assert total == SMALL["n"]


def test_splits_keep_scenes_apart_and_heldout_combinations_out_of_train(dataset):
    out, m = dataset
    ids = {s: set(np.unique(_load(out, s)["scene_id"]).tolist()) for s in m["splits"]}
    names = list(ids)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not ids[names[i]] & ids[names[j]]
    for split in ("train", "val", "test"):
        d = _load(out, split)
        for c, e in HELDOUT_COMBINATIONS:
            rows = d["class_id"] == OBJECT_CLASSES.index(c)
            ei = EVENT_TYPES.index(e)
            assert not d["events_now"][rows, ei].any() and not d["events_future"][rows, ei].any(), (split, c, e)
    h = _load(out, "heldout")
    per_class = np.stack([h["events_now"][h["class_id"] == k].any(0) for k in range(len(OBJECT_CLASSES))])  # (C, E)
    combos = {(OBJECT_CLASSES[c], EVENT_TYPES[e]) for c, e in zip(*np.nonzero(per_class))}
    assert combos & set(HELDOUT_COMBINATIONS)


def test_class_balance_is_even():
    plans = plan_scenes(DatasetConfig(n=40 * 180, seed=3))
    train = [p.focus for p in plans if p.split == "train"]
    counts = np.array([train.count(c) for c in OBJECT_CLASSES])
    assert counts.max() - counts.min() <= 1


def test_view_variety_must_be_a_share():
    with pytest.raises(ValueError, match="view_variety"):
        plan_scenes(DatasetConfig(n=400, view_variety=1.5))


def test_same_seed_same_bytes_and_different_seed_differs(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    write_dataset(again, DatasetConfig(seed=0, workers=2, **SMALL), progress=False)
    assert _digest(again) == _digest(out)  # also with two worker processes
    other = tmp_path / "other"
    write_dataset(other, DatasetConfig(seed=1, **SMALL), progress=False)
    a, b = np.load(out / "train-0.npz"), np.load(other / "train-0.npz")
    assert not np.array_equal(a["camera"], b["camera"])


def test_lidar_sweeps_are_kept_per_frame_without_changing_the_frames(dataset, tmp_path):
    from mmfusion_ros.sim.dataset import SWEEP_BOX_FIELDS
    from mmfusion_ros.train.data import load_split

    out, m = dataset
    assert m["sweeps"] == {"boxes": SWEEP_BOX_FIELDS, "preroll": 10, "step": 0.1}
    sp = load_split(out, "train")
    first = np.r_[True, sp.arrays["scene_id"][1:] != sp.arrays["scene_id"][:-1]]
    assert [len(w) for w in sp.sweeps] == [11 if f else 2 for f in first]  # pre-roll, then 10 Hz: 2 a frame
    for w, t in zip(sp.sweeps, sp.arrays["t"]):
        assert w[-1][0] == pytest.approx(float(t), abs=1e-3)  # the frame's own sweep last
        assert np.diff([x[0] for x in w]) == pytest.approx(0.1, abs=1e-3)
        assert all(len(b) == len(SWEEP_BOX_FIELDS) for _, _, boxes in w for b in boxes)
    assert sum(len(w[-1][2]) for w in sp.sweeps) > 0
    # the sweeps draw nothing from the frames' random stream: without them the arrays are byte for byte the same
    bare = tmp_path / "bare"
    mb = write_dataset(bare, DatasetConfig(seed=0, lidar_sweeps=False, **SMALL), progress=False)
    assert mb["sweeps"] is None and load_split(bare, "train").sweeps is None
    assert {k: v for k, v in _digest(bare).items() if k.endswith(".npz")} == \
        {k: v for k, v in _digest(out).items() if k.endswith(".npz")}


def test_cli_dataset_writes_and_rejects_bad_options(tmp_path, capsys):
    from mmfusion_ros.cli import main

    out = tmp_path / "nested" / "ds"
    assert main(["sim", "dataset", "--n", "8", "--frames-per-scene", "4", "--seed", "2", "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_samples"] == 8 and m["splits"]["train"] == ["train-0.npz"]
    assert len(np.load(out / "train-0.npz")["t"]) == 8
    # writing a smaller dataset into the same folder leaves none of the old shards behind
    assert main(["sim", "dataset", "--n", "16", "--frames-per-scene", "4", "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert main(["sim", "dataset", "--n", "4", "--frames-per-scene", "4", "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "scenes.json", "train-0.json", "train-0.npz"]
    assert main(["sim", "dataset", "--n", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--n" in capsys.readouterr().err


def test_linear_probes_run_on_a_dataset(dataset):
    from mmfusion_ros.sim.probes import run_probes

    out, _ = dataset
    acc = run_probes(out)
    assert set(acc) == {"camera", "lidar", "audio", "imu"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
