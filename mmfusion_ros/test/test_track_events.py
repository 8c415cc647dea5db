"""train.track_events: the node's track forecasts replayed over a dataset's LiDAR sweeps, and `mmfusion eval`
scoring them beside the event head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion_ros.core.kinematic_events import merge_forecast
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES
from mmfusion_ros.train.track_events import sweep_objects, track_forecasts

E = {n: i for i, n in enumerate(EVENT_TYPES)}
STEP = 0.2  # s between dataset frames


def box(x, y, length=0.5, width=0.5, height=1.0, label="small object"):
    return [x, y, 0.5, length, width, height, 0.0, label, 0.8, 60]


def scene_sweeps(frames, preroll=5, x0=8.0, speed=2.0):
    """A crate rolling straight at a standing robot from x0 at `speed`, two static posts to the side;
    per sample the sweeps since the previous one (the first carries the pre-roll), as sim/dataset.py writes."""
    out = []
    for i in range(frames):
        ts = [STEP * k for k in range(-preroll, 1)] if i == 0 else [STEP * i]
        out.append([[t, 0.0, [box(6.0, 6.0), box(9.0, -7.0), box(x0 - speed * (t + preroll * STEP), 0.0)]]
                    for t in ts])
    return out


def test_sweep_boxes_become_untracked_objects():
    (o,) = sweep_objects([box(3.0, -1.0, 4.2, 1.8, 1.5, "vehicle-sized object")])
    assert o.center.tolist() == pytest.approx([3.0, -1.0, 0.5]) and o.size.tolist() == pytest.approx([4.2, 1.8, 1.5])
    assert o.label == "vehicle-sized object" and not o.label_from_camera and o.track_id == 0


def test_a_crate_rolling_at_the_robot_is_forecast_and_each_scene_starts_afresh():
    first = scene_sweeps(10)
    second = scene_sweeps(10, preroll=0)  # no pre-roll: its tracks need min_hits sweeps of their own
    scene = np.array([1] * 10 + [2] * 10)
    f = track_forecasts(first + second, scene, EVENT_TYPES, EVENT_HORIZONS, np.zeros(20))
    assert f.shape == (20, len(EVENT_TYPES), len(EVENT_HORIZONS))
    assert np.isnan(f[:, E["alarm_sounding"]]).all() and np.isnan(f[:, E["dog_barking"]]).all()  # the head's alone
    col = f[:, E["collision_imminent"]]
    # horizons 0.5 / 1 / 2 s. Frame 0: the crate is 8 - 2 x 1 = 6 m away, contact in ~2.7 s, so the time to
    # collision drops under 1.5 s in ~1.2 s: within 2 s, not within 1 s. Frame 9: 2.4 m away, imminent now
    assert col[0, 0] < 0.5 and col[0, 1] < 0.5 and col[0, 2] > 0.8
    assert col[9].min() > 0.8
    # the second scene's first frame: the crate is at 8 m and its track is new, nothing is forecast yet
    assert col[10].max() == 0.0
    assert not np.isnan(f[:, E["collision_imminent"]]).any()


def test_merge_is_a_noisy_or_where_tracks_forecast():
    head = np.full((2, len(EVENT_TYPES), len(EVENT_HORIZONS)), 0.5)
    tracks = np.full_like(head, np.nan)
    tracks[:, E["crossing_path"]] = 0.5
    m = merge_forecast(head, tracks)
    assert m[:, E["crossing_path"]] == pytest.approx(0.75)
    assert m[:, E["alarm_sounding"]] == pytest.approx(0.5)


def test_calibrate_fits_and_eval_scores_the_node_events_on_a_simulator_dataset(random_model_dir, tmp_path):
    import shutil

    from mmfusion_ros.cli import main
    from mmfusion_ros.sim.dataset import DatasetConfig, write_dataset

    data = tmp_path / "ds"
    write_dataset(data, DatasetConfig(seed=4, n=48, frames_per_scene=4), progress=False)
    bundle = tmp_path / "bundle"
    shutil.copytree(random_model_dir, bundle)
    assert main(["calibrate", "--model", str(bundle), "--data", f"{data}:train,val"]) == 0
    cal = json.loads((bundle / "manifest.json").read_text())["calibration"]
    kinds = {"person_approaching", "crossing_path", "collision_imminent", "robot_impact"}
    assert set(cal["track_event_thresholds"]) == kinds  # the forecast types, fitted on the merge
    assert all(0.0 < v <= 1.0 for v in cal["track_event_thresholds"].values())
    js = tmp_path / "eval.json"
    md = tmp_path / "eval.md"
    assert main(["eval", "--model", str(bundle), "--data", str(data), "--split", "test",
                 "--json", str(js), "--markdown", str(md), "--tables", "T5"]) == 0
    tr = json.loads(js.read_text())["T5_events"]["tracker"]
    node = tr["variants"][-1]
    assert node["name"].endswith("+ LiDAR track forecasts (the node)") and "tracks" not in tr
    assert len(node["mAP_1s_ci95"]) == 2
    rows = {r["event"]: r for r in node["per_type"]}
    # forecast types are flagged at the pipeline's raised on-threshold, the others at the head's
    assert rows["collision_imminent"]["threshold"] >= max(0.5, cal["track_event_thresholds"]["collision_imminent"])
    assert rows["alarm_sounding"]["threshold"] == tr["variants"][-2]["per_type"][E["alarm_sounding"]]["threshold"]
    assert "LiDAR track forecasts (the node)" in md.read_text()


def _walker_sweeps(frames, size, preroll=5, x0=9.0, speed=1.5):
    """A standing robot; two static posts; one object of `size` walking straight at it from x0."""
    out = []
    for i in range(frames):
        ts = [STEP * k for k in range(-preroll, 1)] if i == 0 else [STEP * i]
        out.append([[t, 0.0, [box(6.0, 6.0), box(9.0, -7.0),
                              box(x0 - speed * (t + preroll * STEP), 0.3, *size)]] for t in ts])
    return out


def test_person_shape_share_counts_person_shaped_walkers_against_the_ground_truth():
    from mmfusion_ros.train.track_events import person_shape_share

    frames = 6
    person = _walker_sweeps(frames, (0.6, 0.4, 1.7))
    gt = [[{"class": "person", "center": [9.0 - 1.5 * (STEP * i + 5 * STEP), 0.3, 0.0]}] for i in range(frames)]
    people, tracks = person_shape_share(person, np.ones(frames), gt)
    assert tracks == frames and people == frames  # confirmed by the pre-roll, in range, walking at 1.5 m/s
    # the same walker labelled a bicycle by the ground truth counts against; one 2 m off matches nothing
    bike = [[dict(g[0], **{"class": "bicycle"})] for g in gt]
    assert person_shape_share(person, np.ones(frames), bike) == (0, frames)
    far = [[dict(g[0], center=[g[0]["center"][0], 2.3, 0.0])] for g in gt]
    assert person_shape_share(person, np.ones(frames), far) == (0, frames)
    # a dog-shaped walker (0.6 m tall) is not counted at all
    assert person_shape_share(_walker_sweeps(frames, (0.9, 0.3, 0.6)), np.ones(frames), gt) == (0, 0)


def test_calibrate_fits_the_person_shape_weight_only_with_enough_tracks():
    from types import SimpleNamespace

    from mmfusion_ros.train.calibrate import fit_person_shape_prob

    frames = 6
    gt = [[{"class": "person", "center": [9.0 - 1.5 * (STEP * i + 5 * STEP), 0.3, 0.0]}] for i in range(frames)]
    split = SimpleNamespace(sweeps=_walker_sweeps(frames, (0.6, 0.4, 1.7)), arrays={"scene_id": np.ones(frames)},
                            objects=gt)
    no_sweeps = SimpleNamespace(sweeps=None, arrays={"scene_id": np.ones(frames)}, objects=gt)
    assert fit_person_shape_prob([split, no_sweeps], min_tracks=frames) == {"prob": 1.0, "people": frames,
                                                                            "tracks": frames}
    assert fit_person_shape_prob([split], min_tracks=frames + 1) is None
