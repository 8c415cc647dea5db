"""3D perception: ground model, clustering, boxes, camera projection and labels, tracking, kinematics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmfusion_ros.bench.perception import SceneBox, make_sweep
from mmfusion_ros.core.perception import (
    Perception,
    PerceptionConfig,
    box_corners,
    fit_box,
    geometric_label,
    ground_model,
    project_box,
)
from mmfusion_ros.core.tracking import (
    Tracker,
    TrackerConfig,
    closing_speed,
    crossing_time,
    is_approaching,
    time_to_collision,
)
from mmfusion_ros.core.types import CameraIntrinsics, DetectedObject

H = 1.7  # LiDAR height of the synthetic sweeps


def _box(kind, x, y, yaw=0.0, size=None, ground=-H):
    size = np.array(size if size is not None else {"car": (4.3, 1.8, 1.5), "person": (0.6, 0.5, 1.75)}[kind], float)
    return SceneBox(kind, np.array([x, y, ground + size[2] / 2]), size, yaw)


def _nearest(objs, xy):
    d = [np.linalg.norm(o.center[:2] - np.asarray(xy)) for o in objs]
    k = int(np.argmin(d))
    return objs[k], d[k]


def test_two_close_boxes_become_two_oriented_clusters():
    # side by side, 1.3 m apart, each showing an end and a side (an L) to a 64 x 2048 LiDAR
    a = _box("car", 12.0, 2.2, yaw=0.6)
    b = _box("car", 12.0, -1.6, yaw=0.6)
    pts, _ = make_sweep(beams=64, columns=2048, seed=1, boxes=[a, b])
    objs = Perception().process(pts, 0.0)
    big = [o for o in objs if o.size[0] > 1.5]
    assert len(big) == 2, [(o.center, o.size) for o in objs]
    for truth in (a, b):
        o, d = _nearest(big, truth.center[:2])
        assert d < 0.3
        yaw_err = abs((o.yaw - truth.yaw + math.pi / 2) % math.pi - math.pi / 2)
        assert yaw_err < math.radians(8)
        assert 3.9 < o.size[0] < 4.5 and 1.5 < o.size[1] < 2.0 and 1.3 < o.size[2] < 1.7  # box reaches the ground through the ground band
        assert o.label == "vehicle-sized object" and not o.label_from_camera


def test_ground_model_follows_a_slope_where_one_plane_cannot():
    # flat for x < 5 m, then a 15 % ramp: one RANSAC plane cannot hold both
    people = [_box("person", x, y, ground=-H + 0.15 * (x - 5.0)) for x, y in ((12, 3), (20, -4), (28, 2))]
    # a LiDAR looking up to +15 deg (like the simulator's) so people high up the ramp are seen whole
    pts, _ = make_sweep(beams=64, columns=1024, seed=2, slope=0.15, slope_start=5.0, boxes=people, max_range=40,
                        fov=(-25.0, 15.0))
    objs = Perception().process(pts, 0.0)
    for p in people:
        o, d = _nearest(objs, p.center[:2])
        assert d < 0.5 and 1.3 < o.size[2] < 2.0, (p.center, o.center, o.size)
    # nothing else: the ramp itself produced no clusters
    assert len(objs) == len(people), [(o.center.round(1), o.size.round(1)) for o in objs]


def test_ground_heights_on_a_plane_are_small():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-30, 30, (5000, 2))
    z = -1.5 + 0.1 * xy[:, 0] - 0.05 * xy[:, 1]
    height, _, _ = ground_model(np.column_stack([xy, z]), PerceptionConfig())
    # a tilted plane is ground everywhere: the min of a cell lies at most one cell's rise below a point
    assert np.all(np.abs(height) < PerceptionConfig().ground_threshold)


def test_fit_box_recovers_yaw_and_size():
    rng = np.random.default_rng(3)
    local = rng.uniform(-0.5, 0.5, (400, 3)) * [4.0, 2.0, 1.0]
    yaw = 0.7
    R = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    centre, size, fyaw = fit_box(local @ R.T + [5, 2, 0])
    assert np.allclose(centre, [5, 2, 0], atol=0.1)
    assert np.allclose(size, [4, 2, 1], atol=0.15)
    assert abs(fyaw - yaw) < 0.03


def test_bad_input_is_rejected_or_dropped():
    p = Perception()
    with pytest.raises(ValueError):
        p.process(np.zeros((10, 2), np.float32), 0.0)
    assert p.process(np.zeros((0, 4), np.float32), 0.0) == []
    pts, _ = make_sweep(beams=32, columns=512, seed=4, boxes=[_box("person", 8, 0)])
    pts[:50, 0] = np.nan
    objs = p.process(pts, 0.1)
    assert p.stats["nonfinite_points_dropped"] == 50
    assert _nearest(objs, (8, 0))[1] < 0.4
    with pytest.raises(ValueError):
        PerceptionConfig(voxel_size=float("nan"))
    with pytest.raises(ValueError):
        PerceptionConfig.from_dict({"cluster_epsilon": 0.5})  # typo: unknown key


def test_geometric_labels_by_size():
    assert geometric_label(np.array([0.6, 0.5, 1.7]))[0] == "person-sized object"
    assert geometric_label(np.array([4.5, 1.9, 1.5]))[0] == "vehicle-sized object"
    assert geometric_label(np.array([0.4, 0.3, 0.4]))[0] == "small object"
    assert geometric_label(np.array([15.0, 0.5, 3.0]))[0] == "wall/structure"


# ---- camera -------------------------------------------------------------------------------------

#: LiDAR (x fwd, y left, z up) -> optical (x right, y down, z fwd), camera at the LiDAR origin
T_OPT = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
CAM = CameraIntrinsics(640, 480, np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]))


def test_projection_geometry():
    # a point 10 m ahead, 1 m left, 0.5 m up lands left of and above the principal point
    p = np.array([[10.0, 1.0, 0.5]])
    uv = CAM.project(p @ T_OPT[:3, :3].T)
    assert np.allclose(uv, [[320 - 50, 240 - 25]])
    box, vis = project_box(box_corners([10, 0, 0], [1, 1, 1], 0.0), T_OPT, CAM)
    # nearest face at 9.5 m: +-0.5 m -> +-26.3 px around the centre
    assert np.allclose(box, [320 - 500 * 0.5 / 9.5, 240 - 500 * 0.5 / 9.5, 320 + 500 * 0.5 / 9.5, 240 + 500 * 0.5 / 9.5])
    assert vis == pytest.approx(1.0)
    assert project_box(box_corners([-10, 0, 0], [1, 1, 1], 0.0), T_OPT, CAM) is None  # behind the camera
    assert project_box(box_corners([5, 30, 0], [1, 1, 1], 0.0), T_OPT, CAM) is None  # far outside the image


def test_camera_labels_in_view_geometric_out_of_view():
    people = [_box("person", 8.0, 0.5), _box("person", -8.0, 0.0)]  # one ahead (in view), one behind
    pts, _ = make_sweep(beams=64, columns=1024, seed=5, boxes=people, max_range=30)
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :320] = (200, 30, 30)  # the person ahead stands left of centre: its crop is mostly red
    prompts = ["a red thing", "a blue thing"]
    prompt_emb = np.eye(2, 384, dtype=np.float32)
    calls = []

    def embed(crops):
        calls.append(len(crops))
        red = np.array([c[..., 0].mean() > c[..., 2].mean() for c in crops], float)
        return np.stack([red, 1 - red], 1) @ prompt_emb  # (K, 384)

    objs = Perception().process(pts, 0.0, image, CAM, T_OPT, embed, prompt_emb, prompts)
    ahead, d1 = _nearest(objs, (8.0, 0.5))
    behind, d2 = _nearest(objs, (-8.0, 0.0))
    assert d1 < 0.4 and d2 < 0.4
    assert ahead.label_from_camera and ahead.label == "a red thing" and ahead.score > 0.9
    assert ahead.box2d is not None and 0 <= ahead.box2d[0] < ahead.box2d[2] <= 640
    assert not behind.label_from_camera and behind.label == "person-sized object" and behind.box2d is None
    assert calls == [sum(o.label_from_camera for o in objs)]  # every crop in one encoder call


# ---- tracking -----------------------------------------------------------------------------------


def _obj(x, y):
    return DetectedObject(center=np.array([x, y, 0.0], np.float32), size=np.ones(3, np.float32), yaw=0.0,
                          label="o", score=1.0, label_from_camera=False, point_count=10)


def test_tracker_keeps_ids_and_estimates_velocity():
    rng = np.random.default_rng(6)
    tr = Tracker(TrackerConfig())
    ids_a, ids_b = set(), set()
    for k in range(30):
        t = 0.1 * k
        a = _obj(10 - 1.5 * t + rng.normal(0, 0.05), 3 + rng.normal(0, 0.05))  # approaching at 1.5 m/s
        b = _obj(6 + rng.normal(0, 0.05), -4 + 1.0 * t + rng.normal(0, 0.05))  # crossing to the left at 1 m/s
        objs = [b, a] if k % 2 else [a, b]  # detection order must not matter
        tr.update(objs, t)
        ids_a.add(a.track_id)
        ids_b.add(b.track_id)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    assert np.allclose(a.velocity[:2], [-1.5, 0.0], atol=0.2)
    assert np.allclose(b.velocity[:2], [0.0, 1.0], atol=0.2)
    # a missed sweep keeps the id; a long absence ends the track and a new id is given
    tr.update([b], 3.0)
    tr.update([a, b], 3.1)
    assert a.track_id in ids_a
    for k in range(5):
        tr.update([b], 3.2 + 0.1 * k)
    tr.update([a, b], 3.8)
    assert a.track_id not in ids_a and b.track_id in ids_b


def test_tracking_through_perception_on_moving_sweeps():
    per = Perception()
    ids = []
    for k in range(6):
        person = _box("person", 10.0, -3.0 + 1.2 * 0.2 * k)  # walking left at 1.2 m/s, 5 Hz sweeps
        pts, _ = make_sweep(beams=32, columns=720, seed=k, boxes=[person], max_range=25)
        objs = per.process(pts, 0.2 * k)
        o, d = _nearest(objs, person.center[:2])
        assert d < 0.4
        ids.append(o.track_id)
    assert len(set(ids)) == 1
    assert abs(o.velocity[1] - 1.2) < 0.35 and abs(o.velocity[0]) < 0.35


def test_kinematic_predicates():
    # head-on at 2 m/s from 10 m, 1 m radius: contact after 4.5 s
    assert time_to_collision([10, 0], [-2, 0], radius=1.0) == pytest.approx(4.5)
    assert time_to_collision([10, 0], [2, 0]) == math.inf  # moving away
    assert time_to_collision([10, 5], [-2, 0], radius=1.0) == math.inf  # passes 5 m to the side
    assert time_to_collision([0.5, 0], [0, 0], radius=1.0) == 0.0  # already there
    assert closing_speed([3, 4], [-3, -4]) == pytest.approx(5.0)
    assert is_approaching([10, 0], [-1, 0]) and not is_approaching([10, 0], [0, 1])
    # walking left at 1 m/s from 3 m right, 5 m ahead: enters the 1 m half-width corridor after 2 s
    assert crossing_time([5, -3], [0, 1], half_width=1.0, horizon=3.0) == pytest.approx(2.0)
    assert crossing_time([5, -3], [0, 1], half_width=1.0, horizon=1.5) is None  # not within the horizon
    assert crossing_time([5, -3], [0, -1]) is None  # walking away from the path
    assert crossing_time([-5, -3], [0, 1]) is None  # behind the robot
    assert crossing_time([5, 0.2], [0, 1]) == 0.0  # in the path and moving across it
    assert crossing_time([5, 0.2], [-1, 0]) is None  # in the path but not crossing


def test_voxel_clustering_links_within_eps_and_splits_beyond():
    from mmfusion_ros.core.perception import voxel_components

    rng = np.random.default_rng(7)
    line = np.column_stack([np.arange(0, 3, 0.2), np.zeros(15), np.zeros(15)])  # 0.2 m steps: one cluster
    far = line + [0, 1.5, 0]  # 1.5 m away: its own cluster
    lab = voxel_components(np.vstack([line, far]) + rng.normal(0, 0.005, (30, 3)), eps=0.5)
    assert len(set(lab[:15])) == 1 and len(set(lab[15:])) == 1 and lab[0] != lab[15]


def test_shipped_configs_match_the_code(repo_root):
    from mmfusion_ros.commands.eval_kitti import load_perception_config
    from mmfusion_ros.core.perception import load_extrinsics

    cfg_dir = repo_root / "mmfusion_ros" / "config"
    assert load_perception_config(str(cfg_dir / "perception.yaml")) == PerceptionConfig()
    T = load_extrinsics(cfg_dir / "extrinsics.yaml")
    sim_config = pytest.importorskip("mmfusion_ros.sim.config")
    assert np.allclose(T, sim_config.CameraConfig().lidar_to_camera())  # the simulator's camera mount


def test_car_seen_end_on_is_completed_to_a_whole_car():
    car = _box("car", 16.0, 0.3, size=(4.4, 1.8, 1.5))  # straight ahead: only its rear is visible
    pts, _ = make_sweep(beams=64, columns=2048, seed=8, boxes=[car])
    o, d = _nearest(Perception().process(pts, 0.0), car.center[:2])
    assert d < 0.3 and o.size[0] == pytest.approx(4.4) and abs(math.sin(o.yaw)) < 0.05
    assert o.label == "vehicle-sized object"
    o, d = _nearest(Perception(PerceptionConfig(vehicle_completion=False)).process(pts, 0.0), car.center[:2])
    assert 1.9 < d < 2.4  # without it the box is the rear face, half a car length too close


def test_extrinsics_file_gives_the_default_transform(tmp_path):
    f = tmp_path / "ext.yaml"
    f.write_text("extrinsics:\n  translation: [0, 0, 0]\n  rpy: [0, 0, 0]\n")
    per = Perception(PerceptionConfig(extrinsics_file=str(f)))
    assert np.allclose(per.T_cam_lidar, T_OPT)
    pts, _ = make_sweep(beams=32, columns=720, seed=9, boxes=[_box("person", 8.0, 0.0)], max_range=20)
    o, _ = _nearest(per.process(pts, 0.0, camera=CAM), (8.0, 0.0))
    assert o.box2d is not None  # projected with the file's transform
    f.write_text("extrinsics:\n  translation: [0, 0]\n  rpy: [0, 0, 0]\n")
    with pytest.raises(ValueError):
        Perception(PerceptionConfig(extrinsics_file=str(f)))
    with pytest.raises(ValueError):
        Perception(PerceptionConfig(extrinsics_file=str(tmp_path / "missing.yaml")))


def test_car_seen_side_on_is_completed_to_its_width():
    # beside a robot whose LiDAR is 1 m up (below the roof): only the car's side is visible
    car = _box("car", 0.5, 6.0, size=(4.4, 1.8, 1.5), ground=-1.0)
    pts, _ = make_sweep(beams=64, columns=2048, seed=10, boxes=[car], lidar_height=1.0)
    o, d = _nearest(Perception().process(pts, 0.0), car.center[:2])
    assert d < 0.3 and o.size[1] == pytest.approx(1.8) and 4.0 < o.size[0] < 4.6


def test_image_of_another_size_than_camera_info_keeps_geometric_labels():
    pts, _ = make_sweep(beams=32, columns=720, seed=11, boxes=[_box("person", 8.0, 0.0)], max_range=20)
    per = Perception()
    calls = []
    objs = per.process(pts, 0.0, np.zeros((240, 320, 3), np.uint8), CAM, T_OPT,
                       lambda crops: calls.append(crops) or np.zeros((len(crops), 384)), np.eye(1, 384), ["x"])
    assert objs and not any(o.label_from_camera for o in objs) and not calls
    assert per.stats["camera_skipped_size_mismatch"] == 1 and "320x240" in per.last_warning


def test_slope_envelope_keeps_ramps_and_flattens_bumps():
    from mmfusion_ros.core.perception import slope_envelope

    x = np.arange(40) * 0.5
    ramp = np.tile(0.2 * x, (40, 1))  # rises 0.1 per 0.5 m cell: below the 0.3 limit
    assert np.allclose(slope_envelope(ramp, 0.3 * 0.5), ramp)
    bump = np.zeros((40, 40))
    bump[18:22, 18:22] = 1.5  # a car roof among road cells
    bump[5, 5] = np.inf  # an empty cell: the surface continues from its neighbours
    env = slope_envelope(bump, 0.3 * 0.5)
    assert env[20, 20] == pytest.approx(0.3)  # two cells from the road: 2 x 0.15, not the roof
    assert env[5, 5] == pytest.approx(0.15) and env[0, 0] == 0.0


def test_person_behind_parked_cars_is_found():
    # a LiDAR 1.7 m up sees only the upper body of a person on the pavement behind a row of parked
    # cars, in front of a facade
    cars = [_box("car", x, 4.3, size=(4.5, 1.8, 1.5)) for x in (7.0, 12.3, 17.6, 22.9)]
    wall = SceneBox("wall", np.array([15.0, 10.5, -H + 4.0]), np.array([40.0, 0.5, 8.0]), 0.0)
    person = _box("person", 14.0, 7.2)
    pts, _ = make_sweep(beams=64, columns=2048, seed=12, boxes=cars + [wall, person], lidar_height=H, max_range=40)
    assert person.hits > 20
    objs = Perception().process(pts, 0.0)
    o, d = _nearest(objs, person.center[:2])
    assert d < 0.5 and o.size[0] < 1.0  # its own box, not merged with a car or the wall


def test_object_cap_keeps_the_nearest_and_counts_the_rest():
    # six people at 5, 8, ... 20 m in different directions; a cap of 3 keeps the three nearest, counts three dropped
    people = [_box("person", (5.0 + 3.0 * k) * math.cos(0.8 * k), (5.0 + 3.0 * k) * math.sin(0.8 * k)) for k in range(6)]
    pts, _ = make_sweep(beams=64, columns=2048, seed=3, boxes=people)
    full = Perception(PerceptionConfig(max_objects=0)).process(pts, 0.0)
    assert len(full) == 6, [o.center for o in full]
    p = Perception(PerceptionConfig(max_objects=3))
    capped = p.process(pts, 0.0)
    assert sorted(round(float(np.hypot(*o.center[:2]))) for o in capped) == [5, 8, 11]
    assert p.stats["objects_dropped_cap"] == 3
    with pytest.raises(ValueError, match="max_objects"):
        PerceptionConfig(max_objects=-1)
