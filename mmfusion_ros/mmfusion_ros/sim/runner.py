"""Everything one scene yields per instant: sensor data, ground truth, captions, events.

The audio and IMU tracks, the event timeline and the static geometry are computed once per scene;
per-frame work is only the ray casting. Both the bag writer and the dataset writer use this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..core.types import EVENT_TYPES, OBJECT_CLASSES
from . import audio as audio_mod
from . import captions as captions_mod
from . import events as events_mod
from . import imu as imu_mod
from .render import CameraImage, Renderer
from .world import CLOCK_HZ, Scene

AUDIBLE_LEVEL = 0.05  # loudness / distance above which a sounding object counts as heard (20 m at 1.0)
VISIBLE_FRACTION = 0.0008  # share of image pixels an object needs to count as seen (13 px at 128x128)


@dataclass
class GroundTruthObject:
    cls: str
    track_id: int
    center: np.ndarray  # (3,) box centre in base_link (the LiDAR frame), metres
    size: np.ndarray  # (3,) length, width, height
    yaw: float  # radians in base_link
    velocity: np.ndarray  # (3,) velocity relative to the robot, in base_link, m/s
    sounding: bool

    def to_dict(self) -> dict:
        return {"class": self.cls, "track_id": self.track_id, "center": [round(float(v), 3) for v in self.center],
                "size": [round(float(v), 3) for v in self.size], "yaw": round(self.yaw, 4),
                "velocity": [round(float(v), 3) for v in self.velocity], "sounding": self.sounding}


class SceneRunner:
    """Precomputes a scene's tracks; renders and describes any instant."""

    def __init__(self, scene: Scene, seed: int, cam_width: Optional[int] = None, cam_height: Optional[int] = None,
                 nthreads: int = 0):
        self.scene = scene
        rng = np.random.default_rng([seed, 101])
        self.audio, self.audio_t0 = audio_mod.mix(scene, rng)  # (S,) float32 from audio_t0
        self.imu = imu_mod.synthesize(scene.ego, scene.config.imu, rng)  # (N, 6) on the 200 Hz clock
        self.events = events_mod.compute(scene)
        self.loudest = audio_mod.sound_clock(scene)  # (N,) object index or -1
        self.renderer = Renderer(scene, cam_width, cam_height, nthreads=nthreads)

    # --- sensors ---------------------------------------------------------------------------------
    def render(self, t: float, rng: np.random.Generator, camera: bool = True, lidar: bool = True) -> Dict:
        return self.renderer.render(t, rng, camera=camera, lidar=lidar)

    def audio_window(self, t_end: float, seconds: float) -> np.ndarray:
        return audio_mod.window(self.audio, self.audio_t0, t_end, seconds, self.scene.config.audio.rate)

    def imu_window(self, t_end: float, seconds: float) -> np.ndarray:
        """(T, 6) samples with stamps in (t_end - seconds, t_end]."""
        i = int(self.scene.ego.index([t_end])[0]) + 1
        n = int(round(seconds * CLOCK_HZ))
        return self.imu[max(0, i - n):i]

    # --- ground truth ----------------------------------------------------------------------------
    def objects(self, t: float) -> List[GroundTruthObject]:
        h = self.scene.config.lidar_height
        out = []
        for o in self.scene.objects:
            rel = self.scene.relative(o, [t])
            x, y = rel["xy"][0]
            yaw = float(rel["yaw"][0])
            # the shape's local box centre may be off its origin (e.g. the bicycle); rotate it along
            lo, hi = o.shape.vertices.min(0), o.shape.vertices.max(0)
            c_local = 0.5 * (lo + hi)
            c, s = np.cos(yaw), np.sin(yaw)
            cx = x + c * c_local[0] - s * c_local[1]
            cy = y + s * c_local[0] + c * c_local[1]
            vr = rel["v_rel"][0]
            out.append(GroundTruthObject(o.cls, o.track_id, np.array([cx, cy, c_local[2] - h]), o.shape.size.copy(),
                                         yaw, np.array([vr[0], vr[1], 0.0]), bool(o.sounding([t])[0])))
        return out

    def heard(self, t: float) -> List[int]:
        """Track ids of audible sounding objects at t, loudest first."""
        lv = []
        for o in self.scene.objects:
            if o.sounding([t])[0]:
                r = float(self.scene.relative(o, [t])["range"][0])
                level = audio_mod.LOUDNESS[o.cls] * o.loudness / max(r, 1.0)
                if level >= AUDIBLE_LEVEL:
                    lv.append((-level, o.track_id))
        return [k for _, k in sorted(lv)]

    def seen(self, cam: CameraImage) -> List[int]:
        """Track ids visible in the rendered image, focus first, then by pixel count."""
        ids, counts = np.unique(cam.object_ids[cam.object_ids > 0], return_counts=True)
        need = VISIBLE_FRACTION * cam.object_ids.size
        vis = [int(k) for c, k in sorted(zip(-counts, ids)) if -c >= need]
        f = self.scene.focus
        if f in vis:
            vis.remove(f)
            vis.insert(0, f)
        return vis

    def sound_class(self, t: float) -> int:
        k = int(self.loudest[int(self.scene.ego.index([t])[0])])
        return -1 if k < 0 else OBJECT_CLASSES.index(self.scene.objects[k].cls)

    def captions(self, t: float, seen: List[int], rng: np.random.Generator, n: int = 3) -> List[str]:
        e = EVENT_TYPES.index("collision_imminent")
        i = self.events._idx(t)
        hit = int(self.events.track[i, e]) if self.events.active[i, e] else None
        return captions_mod.captions(self.scene, t, seen, self.heard(t), rng, n, collision_with=hit)

    def classes_present(self, seen: List[int], t: float) -> np.ndarray:
        """(C,) uint8 multi-hot of classes seen or heard at t."""
        out = np.zeros(len(OBJECT_CLASSES), np.uint8)
        cls = {o.track_id: o.cls for o in self.scene.objects}
        for k in list(seen) + self.heard(t):
            out[OBJECT_CLASSES.index(cls[k])] = 1
        return out
