"""The node's geometric event forecasts (core/kinematic_events.py) replayed over a dataset split's LiDAR sweeps.

Why: the node merges the event head with forecasts from its LiDAR tracks, so an evaluation of the head
alone does not score what the node publishes. The simulator's datasets keep each frame's LiDAR boxes
(before tracking) and gyro yaw rate; this module runs the node's tracker and forecaster over them, scene by
scene; core/kinematic_events.merge_forecast merges them with the head as the pipeline does.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.kinematic_events import KinematicEventConfig, KinematicEventForecaster
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

