"""One SensorFrame -> one FusionResult: the pure pipeline shared by the node, offline processing,
benchmarks and tests.

It knows nothing of ROS or of how the model runs: it calls a backend that obeys the runtime API
(docs/architecture.md) and keeps the little state that spans frames (caption reuse, the history of
fused embeddings the event head looks at, the event tracker).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mmfusion_ros.core.calibration import Calibration
from mmfusion_ros.core.events import EventTracker, EventTrackerConfig
from mmfusion_ros.core.kinematic_events import (KinematicEventConfig, KinematicEventForecaster, forecast_on_threshold,
                                                 merge_forecast)
from mmfusion_ros.core.familiarity import Familiarity
from mmfusion_ros.core.observability import (LABEL_FUSIONS, event_mask, grounded_caption, label_embedding,
                                             observable_kinds)
from mmfusion_ros.core.preprocess import PreprocessConfig, model_inputs, preprocess_image
from mmfusion_ros.core.types import (EMBED_DIM, EVENT_TYPES, SENSOR_MODALITIES, DetectedObject, FusionResult,
                                     SensorFrame)


@dataclass
class PipelineConfig:
    """What the pipeline computes per frame; model geometry comes from the backend's manifest."""

    top_k: int = 5  # open-vocabulary labels reported per frame
    label_temperature: float = 1.0  # label softmax over logit_scale * cosine / temperature
    caption_every_n: int = 5  # decode a caption every n-th frame (reused in between); 0 = no captions
    enable_events: bool = True  # run the event head and the event tracker
    event_history_len: Optional[int] = None  # fused embeddings the event head sees; None = manifest's
    event_history_step: Optional[float] = None  # seconds between them; None = manifest's
    event_alpha: float = 0.5  # EMA weight of the newest event probabilities
    event_off_ratio: float = 0.7  # event off-threshold as a fraction of its on-threshold
    enable_perception: bool = True  # run the perception hook (3D objects) when one is given and LiDAR is present
    label_fusion: str = "mean"  # scene labels from the "mean" of the used label sensors' embeddings, or the attention-"fused" one
    kinematic_events: bool = True  # also forecast approach, crossing, collision and impact from LiDAR tracks (core/kinematic_events.py)
    robot_length: float = 0.8  # robot footprint along x, m (kinematic events: the front is half of it ahead of base_link)
    robot_width: float = 0.6  # robot footprint across, m (kinematic events: the swept corridor)
    holonomic: bool = False  # the robot can move sideways (mecanum wheels, legs); kinematic events then estimate its sideways speed too

    def validate(self) -> "PipelineConfig":
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"pipeline.top_k: must be an integer >= 0, got {self.top_k!r}")
        if not isinstance(self.caption_every_n, int) or self.caption_every_n < 0:
            raise ValueError(f"pipeline.caption_every_n: must be an integer >= 0, got {self.caption_every_n!r}")
        t = self.label_temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"pipeline.label_temperature: must be a finite number > 0, got {t!r}")
        if self.event_history_len is not None and (not isinstance(self.event_history_len, int)
                                                   or self.event_history_len < 1):
            raise ValueError(f"pipeline.event_history_len: must be an integer >= 1, got {self.event_history_len!r}")
        s = self.event_history_step
        if s is not None and (not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0):
            raise ValueError(f"pipeline.event_history_step: must be a finite number > 0, got {s!r}")
        EventTrackerConfig(alpha=self.event_alpha, off_ratio=self.event_off_ratio).validate()
        if self.label_fusion not in LABEL_FUSIONS:
            raise ValueError(f"pipeline.label_fusion: must be one of {LABEL_FUSIONS}, got {self.label_fusion!r}")
        self.kinematic_config().validate()
        return self

    def kinematic_config(self, calibration: Optional[Calibration] = None) -> KinematicEventConfig:
        """The track forecasts' config: this robot's footprint, and the bundle's fitted person-shape weight."""
        cfg = KinematicEventConfig(robot_length=self.robot_length, robot_width=self.robot_width, holonomic=self.holonomic)
        shape = getattr(calibration, "track_person_shape_prob", None)
        return dataclasses.replace(cfg, person_shape_prob=float(shape)) if shape is not None else cfg


def preprocess_config_from_manifest(manifest: Dict[str, Any]) -> PreprocessConfig:
    """The bundle's PreprocessConfig (unknown keys are an error: they would mean a newer model format)."""
    given = dict(manifest.get("preprocess") or {})
    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    unknown = set(given) - known
    if unknown:
        raise ValueError(f"manifest.preprocess: unknown fields {sorted(unknown)}")
    for k in ("image_mean", "image_std"):
        if k in given:
            given[k] = tuple(float(v) for v in given[k])
    return PreprocessConfig(**given).validate()


class _Timer:
    """Accumulates per-stage wall time in milliseconds."""

    def __init__(self):
        self.ms: Dict[str, float] = {}

    def add(self, key: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.ms[key] = self.ms.get(key, 0.0) + (t1 - t0) * 1e3
        return t1


class Pipeline:
    """Preprocess -> encode per present modality -> fuse -> labels, caption, events, objects.

    `prompt_embeddings` are computed once by the caller (TextEncoder or the bundle's prompts.json),
    never per frame. `perception` is any object with the core/perception.py `process` signature.
    `familiarity` and `calibration` default to the bundle's own (manifest "familiarity", "calibration").
    """

    def __init__(self, backend, cfg: Optional[PipelineConfig] = None, prompts: Sequence[str] = (),
                 prompt_embeddings: Optional[np.ndarray] = None, perception=None,
                 T_cam_lidar: Optional[np.ndarray] = None, familiarity: Optional[Familiarity] = None,
                 calibration: Optional[Calibration] = None):
        self.backend = backend
        self.cfg = (cfg or PipelineConfig()).validate()
        man = backend.manifest
        self.embed_dim = int(man.get("embed_dim", EMBED_DIM))
        self.modalities = [str(m) for m in man.get("modalities", [m.value for m in SENSOR_MODALITIES])]
        every = [m.value for m in SENSOR_MODALITIES]
        towers = man.get("towers")  # a frozen pretrained image-text model: it may bind only some sensors
        if (self.modalities != every) if not towers else not set(self.modalities) <= set(every):
            raise ValueError(f"manifest.modalities: expected {every}, got {self.modalities}")
        # an unbound tower bundle has no heads: the fused embedding is then the mean, and no caption or event is made
        # (every other bundle has all parts: runtime/manifest.py checks that)
        heads = set(man.get("parts", {})) if towers else {"fusion", "event_head", "caption_decoder"}
        self.has_fusion, self.has_events, self.has_caption = ("fusion" in heads, "event_head" in heads,
                                                              "caption_decoder" in heads)
        self.preprocess = preprocess_config_from_manifest(man)
        self.logit_scale = float(man.get("logit_scale", 1.0))
        if not math.isfinite(self.logit_scale) or self.logit_scale <= 0:
            raise ValueError(f"manifest.logit_scale: must be a finite number > 0, got {self.logit_scale}")
        self.history_len = int(self.cfg.event_history_len or man.get("event_history_len", 1))
        self.history_step = float(self.cfg.event_history_step or man.get("event_history_step", 0.1))
        self.calibration = calibration if calibration is not None else Calibration.from_manifest(man)
        self.familiarity = familiarity if familiarity is not None else Familiarity.from_manifest(man)
        self.event_tracker: Optional[EventTracker] = None
        if self.cfg.enable_events and self.has_events:
            thresholds = dict(man.get("event_thresholds") or {})
            thresholds.update(getattr(self.calibration, "thresholds", None) or {})
            self.event_tracker = EventTracker(
                man["event_types"], man["horizons"], thresholds,
                EventTrackerConfig(alpha=self.cfg.event_alpha, off_ratio=self.cfg.event_off_ratio))
        # geometric events forecast from LiDAR tracks, merged with the head's (needs the perception hook)
        self.kinematics: Optional[KinematicEventForecaster] = None
        if self.event_tracker is not None and self.cfg.kinematic_events:
            self.kinematics = KinematicEventForecaster(man["event_types"], man["horizons"],
                                                       self.cfg.kinematic_config(self.calibration))
            fitted = getattr(self.calibration, "track_thresholds", None) or {}  # fitted on the merge, in budget
            for name in self.kinematics.forecast_types:
                head = float(self.event_tracker.on[self.event_tracker.event_types.index(name)])
                self.event_tracker.set_threshold(name, forecast_on_threshold(
                    head, fitted.get(name), self.kinematics.cfg.min_on_threshold))
        self.perception = perception
        self.T_cam_lidar = T_cam_lidar
        self.set_prompts(list(prompts), prompt_embeddings)
        self.reset()

    # ---- state -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget cross-frame state (caption, embedding history, event states)."""
        self._frames = 0
        self._caption: Optional[tuple] = None
        self._hist_t: List[float] = []
        self._hist_e: List[np.ndarray] = []
        if self.event_tracker is not None:
            self.event_tracker.reset()
        if self.kinematics is not None:
            self.kinematics.reset()

    def set_prompts(self, prompts: Sequence[str], embeddings: Optional[np.ndarray]) -> None:
        """Replace the label vocabulary; embeddings (P,D) are row-normalised here (a copy)."""
        prompts = [str(p) for p in prompts]
        if embeddings is None:
            if prompts:
                raise ValueError("set_prompts: prompts given without their embeddings")
            emb = np.zeros((0, self.embed_dim), np.float32)
        else:
            emb = np.array(embeddings, np.float32)  # (P, D) copy
            if emb.ndim != 2 or emb.shape != (len(prompts), self.embed_dim):
                raise ValueError(f"set_prompts: embeddings must be ({len(prompts)}, {self.embed_dim}), "
                                 f"got {emb.shape}")
            if not np.all(np.isfinite(emb)):
                raise ValueError("set_prompts: embeddings contain NaN or inf")
            norm = np.linalg.norm(emb, axis=1, keepdims=True)  # (P, 1)
            if np.any(norm == 0):
                raise ValueError("set_prompts: an embedding is all zeros")
            emb /= norm
        self.prompts = prompts
        self.prompt_embeddings = emb  # (P, D)

    # ---- the frame ---------------------------------------------------------------------------------
    def process(self, frame: SensorFrame) -> FusionResult:
        """Fuse one frame. Raises ValueError for a frame with no modality present.

        A modality whose encoder fails (or returns non-finite values) is dropped from this frame and
        named in ``result.dropped``; the others carry on. Learned claims (labels, caption, events) rest
        only on ``result.used``: present, encoded and familiar modalities, judged by core/observability.py.
        """
        timer = _Timer()
        t_start = t = time.perf_counter()
        present_mask = frame.presence_mask()  # (4,)
        if not present_mask.any():
            raise ValueError("pipeline: frame has no modality present")
        dropped: Dict[str, str] = {}
        inputs = {}
        unbound = [m.value for m in SENSOR_MODALITIES if frame.present[m] and m.value not in self.modalities]
        for m in SENSOR_MODALITIES:  # one modality's bad data costs that modality, never the frame
            if frame.present[m] and m.value in self.modalities:
                try:
                    inputs.update(model_inputs(_only(frame, m), self.preprocess))
                except Exception as e:  # noqa: BLE001 - any preprocessing fault is that sensor's
                    dropped[m.value] = f"preprocess: {e}"
        t = timer.add("preprocess", t)

        tokens = np.zeros((1, len(SENSOR_MODALITIES), self.embed_dim), np.float32)  # (1, 4, D)
        encoded = np.zeros(len(SENSOR_MODALITIES), np.float32)  # (4,)
        familiarity: Dict[str, float] = {}
        used_mask = np.zeros(len(SENSOR_MODALITIES), np.float32)  # (4,)
        for k, m in enumerate(SENSOR_MODALITIES):
            if m.value not in inputs:
                continue
            t0 = time.perf_counter()
            try:
                emb = np.asarray(self.backend.encode(m.value, inputs[m.value][None]), np.float32)  # (1, D)
                if emb.shape != (1, self.embed_dim) or not np.all(np.isfinite(emb)):
                    raise ValueError(f"encoder returned {emb.shape} with non-finite values")
            except Exception as e:  # noqa: BLE001 - a failing encoder drops its modality, not the frame
                dropped[m.value] = f"encoder: {e}"
                continue
            finally:
                timer.add(f"encode_{m.value}", t0)
            tokens[0, k] = emb[0]
            encoded[k] = 1.0
            if self.familiarity.assessed(m.value):
                familiarity[m.value] = self.familiarity.score(m.value, inputs[m.value])
            if familiarity.get(m.value, 1.0) >= self.familiarity.threshold:
                used_mask[k] = 1.0
        t = timer.add("encode", t)
        used = [m.value for k, m in enumerate(SENSOR_MODALITIES) if used_mask[k]]

        # the published embedding fuses what the claims rest on; with nothing familiar, every encoded modality
        mask = used_mask if used_mask.any() else encoded
        if mask.any() and not self.has_fusion:  # embedding arithmetic over the encoded modalities (ImageBind)
            weights = mask / mask.sum()  # (4,)
            fused = (tokens[0] * weights[:, None]).sum(0)  # (D,)
            fused = (fused / max(float(np.linalg.norm(fused)), 1e-12)).astype(np.float32)
        elif mask.any():
            fused, weights = self.backend.fuse(tokens, mask[None])
            fused = np.asarray(fused, np.float32)[0]  # (D,)
            weights = np.asarray(weights, np.float32)[0] * mask  # (4,), 0 for absent (message contract)
        else:  # every present modality failed: nothing to fuse, nothing to claim
            fused = np.zeros(self.embed_dim, np.float32)
            weights = np.zeros(len(SENSOR_MODALITIES), np.float32)
        t = timer.add("fuse", t)

        labels = self._labels(label_embedding(tokens[0], used, fused, self.cfg.label_fusion,
                                              weights=self.calibration.label_weights), used)
        t = timer.add("labels", t)

        caption, conf, cap_mods = self._grounded_caption(fused, used, timer, tokens[0], used_mask)
        t = time.perf_counter()

        objects: List[DetectedObject] = []
        perceived = False  # perception ran on this frame's sweep: its tracks are current
        if self.perception is not None and self.cfg.enable_perception and frame.lidar is not None \
                and "lidar" not in dropped:
            camera_ok = "camera" in used  # crop labels are learned claims: only from a familiar camera
            try:
                objects = list(self.perception.process(
                    frame.lidar, frame.stamp, image=frame.image if camera_ok else None, camera=frame.camera,
                    T_cam_lidar=self.T_cam_lidar, embed_crops=self.embed_crops if camera_ok else None,
                    prompt_embeddings=self.prompt_embeddings, prompts=self.prompts))
                perceived = True
            except Exception as e:  # noqa: BLE001 - geometry on a bad cloud costs the objects, not the frame
                dropped["perception"] = f"perception: {e}"
            t = timer.add("perception", t)

        events: List = []
        probs = None
        # a bundle without an event head observes no event (said, not silently empty)
        unobservable: List[str] = [] if self.has_events or not self.cfg.enable_events else list(EVENT_TYPES)
        if self.event_tracker is not None:
            history = self._history(frame.stamp, fused)  # (1, T, D)
            raw = np.asarray(self.backend.events(history), np.float32)[0]  # (E, H)
            probs = self.calibration.events(raw) if self.calibration.available else raw  # (E, H)
            ok = np.array(event_mask(self.event_tracker.event_types, used), bool)  # (E,)
            probs = np.where(ok[:, None], probs, 0.0)  # (E, H)
            track_ids = None
            if self.kinematics is not None and perceived:
                # tracks are geometry, not learned claims: a LiDAR sweep observes what they forecast
                kin = self.kinematics.update(objects, person_prob=max(
                    [p for name, p in labels if "person" in name.lower()], default=0.0),
                    yaw_rate=None if "imu" in dropped else self._yaw_rate(frame), stamp=frame.stamp)
                have = np.isfinite(kin.probs[:, 0])  # (E,) types forecast from the tracks
                probs = merge_forecast(probs, kin.probs).astype(probs.dtype)  # (E, H)
                ok = ok | have
                track_ids = kin.track_ids
            unobservable = [e for e, o in zip(self.event_tracker.event_types, ok) if not o]
            events = self.event_tracker.update(probs, observed=ok, track_ids=track_ids)
            probs = probs.copy()
            probs[~ok] = np.nan  # not a probability: no present, familiar modality can observe it
            t = timer.add("events", t)

        ms = timer.ms
        ms["inference"] = sum(ms.get(k, 0.0) for k in ("encode", "fuse", "caption", "events"))
        ms["total"] = (time.perf_counter() - t_start) * 1e3
        self._frames += 1
        return FusionResult(
            stamp=frame.stamp,
            present=[m for m, ok in frame.present.items() if ok],
            embedding=fused,
            modality_weights=weights,
            labels=labels,
            objects=objects,
            caption=caption,
            caption_confidence=float(conf),
            events=events,
            event_probs=probs,
            timings_ms=ms,
            frame_id=frame.frame_id,
            familiarity=familiarity,
            used=used,
            caption_modalities=cap_mods,
            unobservable=unobservable,
            dropped=dropped,
            unbound=unbound,
        )

    def _grounded_caption(self, fused: np.ndarray, used: List[str], timer: "_Timer",
                          tokens: Optional[np.ndarray] = None, used_mask: Optional[np.ndarray] = None) -> tuple:
        """(caption or None, confidence, modalities its clauses rest on): the decoded caption keeps only
        the clauses `used` can observe; nothing observable gives an empty caption at confidence 0.
        tokens (4,D) and used_mask (4,) feed the bundle's caption presence probe, when it has one."""
        timer.ms["caption_reused"] = 0.0
        n = self.cfg.caption_every_n
        if n <= 0 or not self.has_caption:
            return None, 0.0, []
        key = tuple(used)
        if self._caption is None or self._frames % n == 0 or self._caption[0] != key:
            t0 = time.perf_counter()
            text, kinds, mods, conf = "", [], [], 0.0
            if used:
                raw, raw_conf = self.backend.caption(fused, kinds=observable_kinds(used), tokens=tokens, used=used_mask)
                text, kinds, mods = grounded_caption(str(raw), used)
                if text:
                    conf = float(raw_conf)
                    if self.calibration.available:
                        conf = float(self.calibration.caption(conf, used))
            self._caption = (key, text, conf, mods)
            timer.add("caption", t0)
        else:
            timer.ms["caption"] = 0.0
            timer.ms["caption_reused"] = 1.0
        _, text, conf, mods = self._caption
        return text, conf, list(mods)

    def embed_crops(self, crops) -> np.ndarray:
        """Camera-encoder embeddings of image crops: a list of (h,w,3) uint8 RGB crops or a preprocessed
        (B,3,S,S) float32 batch -> (B,D). The perception hook labels objects with these."""
        if isinstance(crops, np.ndarray) and crops.ndim == 4 and crops.dtype == np.float32:
            batch = crops  # (B, 3, S, S) already preprocessed
        else:
            crops = list(crops)
            if not crops:
                return np.zeros((0, self.embed_dim), np.float32)
            batch = np.stack([preprocess_image(np.asarray(c, np.uint8), self.preprocess) for c in crops])  # (B,3,S,S)
        if len(batch) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.asarray(self.backend.encode("camera", batch), np.float32)  # (B, D)

    # ---- helpers -----------------------------------------------------------------------------------
    def _labels(self, emb: Optional[np.ndarray], used: Sequence[str]) -> List[tuple]:
        """Top-k prompts for the label embedding (core/observability.label_embedding); none when no used
        modality can observe scene labels (emb None). Scores are calibrated probabilities for the frame's
        presence subset when the bundle has them."""
        if len(self.prompts) == 0 or self.cfg.top_k == 0 or emb is None:
            return []
        cos = self.prompt_embeddings @ emb  # (P,)
        z = self.logit_scale * cos / self.cfg.label_temperature
        p = np.exp(z - z.max())
        p /= p.sum()  # (P,) softmax
        if self.calibration.available:
            p = np.asarray(self.calibration.labels(p, used), np.float64)  # (P,)
        order = np.argsort(-p, kind="stable")[: self.cfg.top_k]
        return [(self.prompts[i], float(p[i])) for i in order]

    def _yaw_rate(self, frame: SensorFrame) -> Optional[float]:
        """Mean gyro z (rad/s) over the newest kinematic yaw_rate_window s of the frame's IMU; None without one."""
        imu = frame.imu
        if imu is None or imu.ndim != 2 or imu.shape[1] < 6 or not len(imu):
            return None
        n = max(1, int(round(self.kinematics.cfg.yaw_rate_window * float(frame.imu_rate))))
        gz = imu[-n:, 5]
        gz = gz[np.isfinite(gz)]
        return float(gz.mean()) if len(gz) else None

    def _history(self, stamp: float, fused: np.ndarray) -> np.ndarray:
        """(1,T,D) fused embeddings at stamp - (T-1-k)*step, oldest first: the newest embedding at or
        before each time, the oldest one we have where the history is shorter than T*step."""
        if self._hist_t and stamp < self._hist_t[-1]:  # time went backwards: a new recording
            self._hist_t.clear()
            self._hist_e.clear()
            if self.event_tracker is not None:
                self.event_tracker.reset()
            if self.kinematics is not None:
                self.kinematics.reset()
        self._hist_t.append(float(stamp))
        self._hist_e.append(fused)
        span = (self.history_len - 1) * self.history_step
        keep = bisect.bisect_right(self._hist_t, stamp - span - self.history_step) - 1  # one before the span
        if keep > 0:
            del self._hist_t[:keep]
            del self._hist_e[:keep]
        targets = stamp - np.arange(self.history_len)[::-1] * self.history_step  # (T,) oldest first
        idx = np.searchsorted(np.asarray(self._hist_t), targets + 1e-6, side="right") - 1  # (T,)
        idx = np.clip(idx, 0, None)
        return np.stack([self._hist_e[i] for i in idx])[None].astype(np.float32)  # (1, T, D)



def _only(frame: SensorFrame, m) -> SensorFrame:
    """A view of `frame` holding only modality m (so one modality is preprocessed at a time)."""
    keep = {"camera": ("image",), "lidar": ("lidar",), "audio": ("audio",), "imu": ("imu",)}[m.value]
    kw = {f: (getattr(frame, f) if f in keep else None) for f in ("image", "lidar", "audio", "imu")}
    return dataclasses.replace(frame, **kw)
