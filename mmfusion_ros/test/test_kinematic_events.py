"""core.kinematic_events: geometric events forecast from LiDAR tracks, alone and through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion_ros.core.events import STATE_START
from mmfusion_ros.core.kinematic_events import KinematicEventConfig, KinematicEventForecaster
from mmfusion_ros.core.pipeline import Pipeline, PipelineConfig
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, DetectedObject

E = {n: i for i, n in enumerate(EVENT_TYPES)}
HITS = KinematicEventConfig().min_hits  # sweeps before a track is trusted


def obj(tid, x, y, vx, vy, label="box", camera=False, size=(0.5, 0.5, 1.0)):
    return DetectedObject(center=np.array([x, y, 0.5]), size=np.array(size, float), yaw=0.0, label=label,
                          score=1.0, label_from_camera=camera, point_count=50, track_id=tid,
                          velocity=np.array([vx, vy, 0.0], np.float32))


def static_world(ego_speed):
    """Two static references to the side: seen from a robot driving at ego_speed they move back."""
    return [obj(101, 6.0, 6.0, -ego_speed, 0.0), obj(102, 9.0, -7.0, -ego_speed, 0.0)]


def forecast(objs_per_sweep, person_prob=0.0):
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    out = None
    for objs in objs_per_sweep:
        out = f.update(objs, person_prob=person_prob)
    return out


def test_a_crate_ahead_warns_of_collision_now_and_of_the_impact_once_it_is_a_second_away():
    # the robot drives at 2 m/s at a crate 3.5 m ahead: gap 3.5 - 0.25 - 0.4 = 2.85 m, time to collision 1.4 s
    k = forecast([static_world(2.0) + [obj(7, 3.5, 0.0, -2.0, 0.0)]] * HITS)
    col, imp = k.probs[E["collision_imminent"]], k.probs[E["robot_impact"]]
    assert col[0] > 0.8 and col[2] > 0.8  # (0.5, 1, 2 s): ttc < 1.5 s already
    assert imp.max() == 0.0  # contact in 1.4 s: the robot may still brake (impact_horizon 1 s)
    assert k.track_ids[E["collision_imminent"]] == 7
    assert k.ego_velocity[0] == pytest.approx(2.0)
    assert np.isnan(k.probs[E["alarm_sounding"]]).all()  # not a geometric event: the head's alone
    # 2.2 m ahead: contact in 0.78 s, not within 0.5 s, surely within 1 and 2 s
    imp = forecast([static_world(2.0) + [obj(7, 2.2, 0.0, -2.0, 0.0)]] * HITS).probs[E["robot_impact"]]
    assert imp[0] < 0.1 and imp[1] > 0.8 and imp[2] > 0.8


def test_a_track_is_trusted_only_after_min_hits_sweeps():
    sweep = static_world(2.0) + [obj(7, 3.5, 0.0, -2.0, 0.0)]
    assert forecast([sweep] * (HITS - 1)).probs[E["collision_imminent"]].max() == 0.0
    assert forecast([sweep] * HITS).probs[E["collision_imminent"]].max() > 0.8
    # a track that disappears starts counting again
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    for objs in [sweep] * (HITS - 1) + [static_world(2.0)] + [sweep] * (HITS - 1):
        k = f.update(objs)
    assert k.probs[E["collision_imminent"]].max() == 0.0


def test_crossing_is_forecast_when_the_object_will_enter_the_corridor():
    # 3 m to the left, walking right at 1.5 m/s: enters |y| < 0.3 + 0.5 + 0.25 after 1.3 s
    k = forecast([static_world(0.0) + [obj(5, 5.0, 3.0, 0.0, -1.5)]] * HITS)
    cross = k.probs[E["crossing_path"]]
    assert cross[0] < 0.1 and cross[2] > 0.8
    # standing beside the path, or walking away from it: no crossing
    k = forecast([static_world(0.0) + [obj(5, 5.0, 3.0, 0.0, 0.0), obj(6, 5.0, -3.0, 0.0, -1.5)]] * HITS)
    assert k.probs[E["crossing_path"]].max() == 0.0


def test_a_person_walking_up_is_approaching_a_person_the_robot_drives_at_is_not():
    ego = 1.0
    walking = obj(9, 6.0, 0.5, -ego - 1.0, 0.0, label="a person", camera=True)  # walks at us at 1 m/s
    standing = obj(9, 6.0, 0.5, -ego, 0.0, label="a person", camera=True)  # we drive at them
    assert forecast([static_world(ego) + [walking]] * HITS).probs[E["person_approaching"]][0] > 0.8
    assert forecast([static_world(ego) + [standing]] * HITS).probs[E["person_approaching"]].max() == 0.0
    # a cluster the camera did not name: as sure as the scene's person probability, and never a car-sized one
    unnamed = obj(9, 6.0, 0.5, -ego - 1.0, 0.0, label="person-sized object")
    p = forecast([static_world(ego) + [unnamed]] * HITS, person_prob=0.4).probs[E["person_approaching"]]
    assert 0.3 < p[0] <= 0.4
    car = obj(9, 6.0, 0.5, -ego - 1.0, 0.0, label="vehicle-sized object", size=(4.3, 1.8, 1.6))
    assert forecast([static_world(ego) + [car]] * HITS, person_prob=0.9).probs[E["person_approaching"]].max() == 0.0


def test_a_wheeled_robot_is_not_taken_to_slide_sideways_by_jittery_tracks():
    # on rough ground the clusters jump: the static references read as if the robot slid left at 0.8 m/s
    refs = [obj(101, 6.0, 6.0, -1.0, -0.8), obj(102, 9.0, -7.0, -1.0, -0.8), obj(103, 12.0, 3.0, -1.0, -0.8)]
    assert forecast([refs] * HITS).ego_velocity.tolist() == pytest.approx([1.0, 0.0])
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS, KinematicEventConfig(holonomic=True))
    for _ in range(HITS):
        k = f.update(refs)
    assert k.ego_velocity.tolist() == pytest.approx([1.0, 0.8])  # a mecanum robot may


def test_impact_is_forecast_for_what_stands_still_not_for_a_mover_on_a_collision_course():
    # the robot drives at 1 m/s; 1.2 m ahead: a crate (its relative velocity is the robot's own, reversed), and a
    # cyclist riding at us at 2 m/s. Both close in within the impact horizon; only the crate cannot steer clear
    crate = forecast([static_world(1.0) + [obj(7, 1.2, 0.0, -1.0, 0.0)]] * HITS)
    rider = forecast([static_world(1.0) + [obj(8, 1.2, 0.0, -3.0, 0.0, size=(1.7, 0.5, 1.1))]] * HITS)
    assert crate.probs[E["robot_impact"]][1] > 0.8  # contact in 0.55 s: within the 1 s horizon
    assert rider.probs[E["robot_impact"]].max() == 0.0
    assert rider.probs[E["collision_imminent"]][0] > 0.8  # the mover still warns of the collision


def test_a_track_of_a_persons_shape_counts_as_one_at_the_shape_weight_the_camera_need_not_name_it():
    ego = 1.0
    cfg = KinematicEventConfig()
    # 0.6 m x 0.3 m, 1.7 m tall, walking at us; the camera called its crop a car (distant crops are unreliable)
    shaped = obj(9, 6.0, 0.5, -ego - 1.0, 0.0, label="car", camera=True, size=(0.6, 0.3, 1.7))
    p = forecast([static_world(ego) + [shaped]] * HITS, person_prob=0.1).probs[E["person_approaching"]]
    assert abs(p[0] - cfg.max_probability * cfg.person_shape_prob) < 1e-6
    # the scene's person probability wins when it is the higher one
    p = forecast([static_world(ego) + [shaped]] * HITS, person_prob=0.95).probs[E["person_approaching"]]
    assert abs(p[0] - cfg.max_probability * 0.95) < 1e-6
    # a wall's thin edge (0.08 m) and a 2.4 m pole are not a person's shape, nor is a dog (0.6 m tall)
    for size in [(0.08, 0.05, 1.8), (0.3, 0.3, 2.4), (0.9, 0.3, 0.6)]:
        other = obj(9, 6.0, 0.5, -ego - 1.0, 0.0, label="box", size=size)
        assert forecast([static_world(ego) + [other]] * HITS).probs[E["person_approaching"]].max() == 0.0, size
    # the weight is the config's (a bundle's fitted value goes there through PipelineConfig.kinematic_config)
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS, KinematicEventConfig(person_shape_prob=0.5))
    for _ in range(HITS):
        k = f.update(static_world(ego) + [shaped])
    assert abs(k.probs[E["person_approaching"]][0] - cfg.max_probability * 0.5) < 1e-6


def test_the_bundles_fitted_person_shape_weight_reaches_the_forecaster():
    from mmfusion_ros.core.calibration import Calibration

    cal = Calibration({"track_person_shape_prob": 0.6}, EVENT_TYPES, EVENT_HORIZONS)
    assert PipelineConfig().kinematic_config(cal).person_shape_prob == 0.6
    assert PipelineConfig().kinematic_config().person_shape_prob == KinematicEventConfig().person_shape_prob
    with pytest.raises(ValueError, match="track_person_shape_prob"):
        Calibration({"track_person_shape_prob": 1.5}, EVENT_TYPES, EVENT_HORIZONS)


def test_without_reference_tracks_the_robot_is_taken_to_stand_still():
    k = forecast([[obj(9, 6.0, 0.5, -1.0, 0.0, label="person", camera=True)]] * HITS)
    assert k.ego_velocity.tolist() == [0.0, 0.0]
    assert k.probs[E["person_approaching"]][0] > 0.8  # closing at 1 m/s, all of it the person's own


def test_non_finite_tracks_are_ignored():
    bad = obj(7, float("nan"), 0.0, -2.0, 0.0)
    k = forecast([static_world(2.0) + [bad]] * HITS)
    assert np.all(np.nan_to_num(k.probs, nan=0.0) == 0.0)


@pytest.mark.parametrize("field,value", [("robot_width", 0.0), ("time_sigma", float("nan")), ("min_hits", 0),
                                         ("max_probability", 1.5), ("cross_speed", -1.0),
                                         ("min_on_threshold", 0.0), ("person_shape_prob", 1.2),
                                         ("person_heights", (2.0, 1.0)), ("person_footprints", (0.3,)), ("impact_max_own_speed", -0.1)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        KinematicEventConfig(**{field: value}).validate()
    with pytest.raises(ValueError):
        PipelineConfig(**{"robot_width" if field == "robot_width" else "robot_length": -1.0}).validate()


# ---- through the pipeline ------------------------------------------------------------------------------
class CrateAhead:
    """Perception stand-in: a crate the robot closes in on at 2 m/s, plus two static references."""

    def __init__(self):
        self.x = 3.5

    def process(self, points, stamp, **kw):
        self.x -= 0.2
        return static_world(2.0) + [obj(7, self.x, 0.0, -2.0, 0.0)]


def _pipeline(calibration=None, **cfg):
    from test_pipeline import FakeBackend, frame

    b = FakeBackend()
    b.manifest["event_types"] = list(EVENT_TYPES)
    b.manifest["event_thresholds"] = {e: 0.5 for e in EVENT_TYPES}
    b.event_probs = np.zeros((len(EVENT_TYPES), len(EVENT_HORIZONS)))
    b.events = lambda history: np.asarray(b.event_probs, np.float32)[None]
    emb = np.stack([b.base["camera"], b.base["imu"]])
    return Pipeline(b, PipelineConfig(event_alpha=1.0, **cfg), ["a crate", "a person"], emb,
                    perception=CrateAhead(), calibration=calibration), frame


def test_the_pipeline_raises_the_track_forecast_with_its_track_id():
    p, frame = _pipeline()
    results = [p.process(frame(0.1 * k)) for k in range(HITS + 1)]
    started = [(e.type, e.track_id) for r in results for e in r.events if e.state == STATE_START]
    assert ("collision_imminent", 7) in started and ("robot_impact", 7) in started
    assert results[-1].event_probs[E["collision_imminent"]].max() > 0.8
    # without the LiDAR the geometric events are unobservable from the remaining sensors' head outputs
    r = p.process(frame(0.1 * (HITS + 2), lidar=False, camera=False))
    assert "collision_imminent" in r.unobservable and not any(e.type == "collision_imminent" for e in r.events)


def test_the_pipeline_flags_track_forecasts_at_the_calibrated_track_thresholds():
    from mmfusion_ros.core.calibration import Calibration

    p, frame = _pipeline()
    floor = KinematicEventConfig().min_on_threshold
    on = dict(zip(p.event_tracker.event_types, p.event_tracker.on))
    assert on["collision_imminent"] == floor and on["alarm_sounding"] == 0.5
    # a calibration fitted on the head + tracks merge (what the node thresholds): its thresholds replace the
    # floor for the forecast types, higher or lower, and leave the head's own types alone
    cal = Calibration({"track_event_thresholds": {"collision_imminent": 0.95, "robot_impact": 0.2}}, EVENT_TYPES,
                      EVENT_HORIZONS)
    assert cal.track_thresholds == {"collision_imminent": 0.95, "robot_impact": 0.2}
    p, frame = _pipeline(calibration=cal)
    on = dict(zip(p.event_tracker.event_types, p.event_tracker.on))
    assert on["collision_imminent"] == 0.95 and abs(on["robot_impact"] - 0.2) < 1e-6
    assert on["crossing_path"] == floor and on["alarm_sounding"] == 0.5
    results = [p.process(frame(0.1 * k)) for k in range(HITS + 1)]
    started = {e.type for r in results for e in r.events if e.state == STATE_START}
    assert "robot_impact" in started and "collision_imminent" not in started  # 0.9 forecast < 0.95


def test_the_pipeline_without_kinematic_events_leaves_the_head_alone():
    p, frame = _pipeline(kinematic_events=False)
    results = [p.process(frame(0.1 * k)) for k in range(HITS + 1)]
    assert not any(r.events for r in results)
    assert results[-1].event_probs[E["collision_imminent"]].max() == 0.0


def test_a_turning_robot_does_not_see_static_objects_cross_its_path():
    # turning left at 0.6 rad/s on the spot: a static cone 4 m ahead moves right at 2.4 m/s in the robot frame
    w = 0.6
    def static(tid, x, y):
        return obj(tid, x, y, w * y, -w * x)  # v_rel = -(w x p) = (w y, -w x)
    cones = [static(1, 4.0, 0.2), static(2, 6.0, -3.0), static(3, 8.0, 4.0), static(4, -3.0, 5.0)]
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    for _ in range(HITS):
        k = f.update(cones, yaw_rate=w)  # the IMU's gyro
    assert k.probs[E["crossing_path"]].max() == 0.0 and k.yaw_rate == pytest.approx(w)
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    for _ in range(HITS):
        k = f.update(cones)  # no IMU: the turn is fitted to the tracks
    assert k.yaw_rate == pytest.approx(w, abs=1e-3) and k.probs[E["crossing_path"]].max() == 0.0
    # a person really crossing while the robot turns is still seen crossing
    walker = obj(9, 5.0, 3.0, w * 3.0, -w * 5.0 - 1.5, label="a person", camera=True)
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    for _ in range(HITS):
        k = f.update(cones + [walker], yaw_rate=w)
    assert k.probs[E["crossing_path"]][2] > 0.8 and k.track_ids[E["crossing_path"]] == 9


def test_a_long_wall_beside_the_path_is_not_in_it_a_wall_across_it_is():
    # a 12 m wall 3 m to the left, along the path, as the robot drives at 1 m/s: nothing will hit it
    along = obj(30, 6.0, 3.0, -1.0, 0.0, label="wall/structure", size=(12.0, 0.2, 2.0))
    k = forecast([static_world(1.0) + [along]] * HITS)
    assert k.probs[E["collision_imminent"]].max() == 0.0 and k.probs[E["robot_impact"]].max() == 0.0
    across = obj(30, 1.3, 0.0, -1.0, 0.0, label="wall/structure", size=(12.0, 0.2, 2.0))
    across.yaw = float(np.pi / 2)
    k = forecast([static_world(1.0) + [across]] * HITS)
    assert k.probs[E["collision_imminent"]][0] > 0.8 and k.probs[E["robot_impact"]][2] > 0.8


def test_a_track_lost_close_in_front_is_coasted_into_the_impact():
    # the crate comes inside the LiDAR's minimum range 0.9 m before contact and is no longer detected
    f = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    t, x = 0.0, 1.8
    for _ in range(HITS):
        k = f.update(static_world(1.0) + [obj(7, x, 0.0, -1.0, 0.0)], stamp=t)
        t, x = t + 0.1, x - 0.1
    for _ in range(3):  # detected no more: still forecast, at its extrapolated position
        k = f.update(static_world(1.0), stamp=t)
        t += 0.1
        assert k.probs[E["robot_impact"]][2] > 0.8 and k.track_ids[E["robot_impact"]] == 7
    t += f.cfg.coast_s  # long gone: forgotten
    assert f.update(static_world(1.0), stamp=t).probs[E["robot_impact"]].max() == 0.0
    # without stamps nothing is coasted
    g = KinematicEventForecaster(EVENT_TYPES, EVENT_HORIZONS)
    for _ in range(HITS):
        g.update(static_world(1.0) + [obj(7, 2.0, 0.0, -1.0, 0.0)])
    assert g.update(static_world(1.0)).probs[E["robot_impact"]].max() == 0.0


def test_walls_and_poles_do_not_move_whatever_their_tracked_velocity():
    # the visible part of a long wall, or a wall edge, slides as the robot passes: a tracked "velocity"
    wall = obj(40, 6.0, 3.0, -1.0, -1.5, label="wall/structure", size=(11.0, 0.2, 3.0))
    edge = obj(41, 0.5, 9.5, -0.2, -5.5, label="person-sized object", size=(0.06, 0.05, 3.6))
    k = forecast([static_world(1.0) + [wall, edge]] * HITS)
    assert all(k.probs[E[t]].max() == 0.0 for t in ("crossing_path", "collision_imminent", "robot_impact"))
