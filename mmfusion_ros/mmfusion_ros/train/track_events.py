"""The node's geometric event forecasts (core/kinematic_events.py) replayed over a dataset split's LiDAR sweeps.

Why: the node merges the event head with forecasts from its LiDAR tracks, so an evaluation of the head
alone does not score what the node publishes. The simulator's datasets keep each frame's LiDAR boxes
(before tracking) and gyro yaw rate; this module runs the node's tracker and forecaster over them, scene by
scene; core/kinematic_events.merge_forecast merges them with the head as the pipeline does.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmfusion_ros.core.kinematic_events import KinematicEventConfig, KinematicEventForecaster, person_shaped
from mmfusion_ros.core.perception import PerceptionConfig
from mmfusion_ros.core.tracking import Tracker
from mmfusion_ros.core.types import DetectedObject


def sweep_objects(boxes: Sequence[list]) -> List[DetectedObject]:
    """A dataset sweep's boxes (sim/dataset.py SWEEP_BOX_FIELDS) -> untracked DetectedObjects."""
    out = []
    for x, y, z, length, width, height, yaw, label, score, points in boxes:
        out.append(DetectedObject(center=np.array([x, y, z], np.float32),
                                  size=np.array([length, width, height], np.float32), yaw=float(yaw),
                                  label=str(label), score=float(score), label_from_camera=False,
                                  point_count=int(points)))
    return out


def track_forecasts(sweeps: Sequence[list], scene_id: np.ndarray, event_types: Sequence[str],
                    horizons: Sequence[float], person_prob: np.ndarray,
                    cfg: Optional[KinematicEventConfig] = None,
                    perception: Optional[PerceptionConfig] = None) -> np.ndarray:
    """Per sample, the forecast of its last sweep: (N, E, H), NaN for the types tracks do not forecast.

    sweeps: per sample, the sweeps since the previous sample ([t, yaw rate or None, boxes]); scene_id (N,):
    tracks start afresh with each scene. person_prob (N,): the frame's published person probability
    (the camera's crop labels need full-resolution images, which datasets do not keep)."""
    perception = perception or PerceptionConfig()
    E, H = len(event_types), len(horizons)
    out = np.full((len(sweeps), E, H), np.nan, np.float64)
    tracker = Tracker(perception.tracking)
    kin = KinematicEventForecaster(event_types, horizons, cfg)
    for i, frame_sweeps in enumerate(sweeps):
        if i == 0 or scene_id[i] != scene_id[i - 1]:
            tracker.reset()
            kin.reset()
        for t, yaw_rate, boxes in frame_sweeps:
            objects = sweep_objects(boxes)
            tracker.update(objects, float(t))
            out[i] = kin.update(objects, person_prob=float(person_prob[i]),
                                yaw_rate=None if yaw_rate is None else float(yaw_rate), stamp=float(t)).probs
    return out



def person_shape_share(sweeps: Sequence[list], scene_id: np.ndarray, objects: Sequence[Sequence[Mapping]],
                       cfg: Optional[KinematicEventConfig] = None, perception: Optional[PerceptionConfig] = None,
                       match_m: float = 1.0) -> Tuple[int, int]:
    """How often a person-shaped track moving at the robot is a person -> (people, tracks).

    Counted at each sample's own sweep over the tracks the approach forecast weighs: confirmed, in front within
    approach_range, own speed at the robot above approach_speed + speed_margin, of a standing person's shape
    (core/kinematic_events.py person_shaped, largest box seen). A track is a person when the sample's
    ground-truth object nearest its centre (robot frame) is one and within `match_m` m; a track with no object
    that near (a wall's edge, a ghost) counts against. Its ratio is the forecaster's person_shape_prob."""
    cfg = (cfg or KinematicEventConfig()).validate()
    perception = perception or PerceptionConfig()
    tracker = Tracker(perception.tracking)
    kin = KinematicEventForecaster(["person_approaching"], [1.0], cfg)
    people = tracks = 0
    for i, frame_sweeps in enumerate(sweeps):
        if i == 0 or scene_id[i] != scene_id[i - 1]:
            tracker.reset()
            kin.reset()
        fc = None
        for t, yaw_rate, boxes in frame_sweeps:
            objs = sweep_objects(boxes)
            tracker.update(objs, float(t))
            fc = kin.update(objs, yaw_rate=None if yaw_rate is None else float(yaw_rate), stamp=float(t))
        if fc is None:
            continue
        gt = [(np.asarray(g["center"][:2], np.float64), str(g["class"])) for g in (objects[i] or [])]
        for o, own in fc.movers:
            p = o.center[:2].astype(np.float64)
            r = float(np.hypot(*p))
            toward = -float(np.dot(own, p)) / max(r, 1e-6)
            if not (p[0] > 0 and r < cfg.approach_range and toward > cfg.approach_speed + cfg.speed_margin
                    and person_shaped(o.size, cfg)):
                continue
            tracks += 1
            if gt:
                d, cls = min(((float(np.hypot(*(c - p))), k) for c, k in gt), key=lambda x: x[0])
                people += int(cls == "person" and d <= match_m)
    return people, tracks
