"""Training configuration (config/train_*.yaml): a dataclass with a comment per field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List

import yaml

STAGES = ["camera", "bind", "fusion", "caption", "events", "joint"]  # "joint" (optional, epochs 0 by default): OGM-GE fine-tuning


@dataclass
class TrainConfig:
    data: str = ""  # dataset folder written by `mmfusion sim dataset` (relative to the working directory)
    out: str = "runs/mmfusion"  # run folder: checkpoints, logs, caches
    model: str = "small"  # "small" (shipped) or "tiny" (tests, smoke runs)
    model_name: str = ""  # name written into the checkpoint/manifest (default: the model config's)
    seed: int = 0  # seeds torch, numpy and the data order
    threads: int = 1  # torch CPU threads per process (more only on an otherwise idle machine: shared cores spin-wait)
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    max_samples: int = 0  # > 0: use only the first shards of the train split up to this many samples
    batch_size: int = 64  # per process
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay, linear warmup)
    weight_decay: float = 0.05  # AdamW weight decay
    warmup_frac: float = 0.05  # fraction of each stage's steps spent warming up
    stages: List[str] = field(default_factory=lambda: list(STAGES))  # stages to run, in order
    epochs: Dict[str, int] = field(default_factory=lambda: {"camera": 6, "bind": 6, "fusion": 8, "caption": 10, "events": 10})  # per stage
    head_holdout: float = 0.2  # share of train scenes kept out of the encoder stages to train the fusion on (0 = none)
    modality_dropout: float = 0.3  # fusion/events: chance each modality is dropped (one always kept)
    fusion_residual: bool = True  # fusion = L2norm(gain-weighted mean of present embeddings + attention output) (new or restarted fusion only)
    fusion_prior: str = ""  # residual fusion, new or restarted: "skill" fixes the mean's weights at each label sensor's
    #                   zero-shot skill on the val split (the published labels' weights; the IMU gets 0 and reaches
    #                   the fused embedding through the attention only); "" = learned gains
    fusion_attention_gain: float = 1.0  # residual fusion, new or restarted: the attention output's starting gain
    event_threshold_floor: float = 0.3  # lowest event threshold calibration may pick (lower ones flag rare events almost constantly)
    caption_noise: float = 0.6  # caption decoder: max norm of the noise added to text embeddings
    caption_fused_frac: float = 0.3  # caption decoder: share of steps conditioned on real fused embeddings
    caption_max_len: int = 24  # caption decoder: max tokens incl. BOS/EOS
    supervised_upper_bound: bool = False  # bind LiDAR/audio/IMU to caption TEXT (the upper-bound baseline), not the camera
    bind_modalities: List[str] = field(default_factory=lambda: ["lidar", "audio", "imu"])  # bind stage: the encoders
    #                   it trains (the others keep their weights: re-bind one sensor of a trained model)
    bind_targets: Dict[str, str] = field(default_factory=dict)  # bind stage, per sensor: "camera" (default: the frozen
    #                   camera embedding of the frame, emergent binding) or "ego" (the text of the caption's robot-motion
    #                   fact: for the IMU, whose one observable, the robot's motion, no single camera frame shows)
    fact_phrasings: float = 0.0  # camera/fusion stages: share of steps whose text is one fact of the caption ("a dog", "a dog sits ahead"; sim/captions.caption_facts) instead of a whole phrasing (0 = whole captions only)
    camera_focus_fact: float = 0.0  # camera stage: share of steps whose text is the fact of the object ahead, the one captions name first ("a box sits ahead"): a whole caption's text embedding names the object ahead on only about 83 % of frames (MODEL_CARD.md), so whole captions alone cap the camera's zero-shot class
    grounded_captions: bool = True  # caption/events stages: learn only what each dropout subset can observe (core/observability.py): captions cut to those clauses, event losses masked to observable types
    camera_jitter: float = 0.1  # camera stage: brightness/contrast jitter amplitude
    camera_shift: int = 6  # camera stage: random translation, pixels (0 = off)
    camera_roll: float = 0.0  # camera stage: random roll about the optical axis, degrees either way (0 = off)
    camera_zoom: float = 0.0  # camera stage: random scale in [1/(1+zoom), 1+zoom] (0 = off)
    camera_encoder: Dict[str, object] = field(default_factory=dict)  # camera trunk overrides (model.config.EncoderConfig
    #                   fields, e.g. {stem_stride: 2}) for a new model, or with --init when the camera stage is retrained:
    #                   the checkpoint's camera is then replaced by a fresh one of this shape ({} = the model's own)
    joint_camera_augment: bool = False  # joint stage: augment the camera's input as the camera stage does
    encoder_dropout: float = 0.1  # dropout before each encoder head (new models only)
    log_every: int = 20  # steps between log lines in log.jsonl
    text_cache: str = ""  # folder of the text-embedding cache (default: <out>/text_cache)
    joint_modalities: List[str] = field(default_factory=lambda: ["camera", "lidar", "audio"])  # joint stage: encoders
    #                   it fine-tunes (default: the ones that can observe labels, core/observability.py; a tuned IMU
    #                   learns the class from the robot's motion, a shortcut it cannot observe)
    joint_ogm_alpha: float = 0.5  # joint stage: OGM-GE modulation strength (0 = plain joint fine-tuning, no modulation)
    joint_ge: bool = True  # joint stage: OGM-GE's Gaussian noise on the modulated modality's gradient
    joint_lr_scale: float = 0.1  # joint stage: learning rate = lr x this (it fine-tunes trained encoders)
    towers: str = ""  # a tower bundle (`mmfusion towers import`): bind LiDAR/audio/IMU to its frozen image tower,
    #                   text targets from its text tower, no camera stage ("" = the package's own camera and MiniLM)

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        d = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; stages are {STAGES}")
        if self.model not in ("small", "tiny"):
            raise ValueError(f"model must be 'small' or 'tiny', got {self.model!r}")
        for k, v in self.epochs.items():
            if k not in STAGES or not isinstance(v, int) or v < 0:
                raise ValueError(f"epochs.{k}={v!r}: expected a stage name and a non-negative int")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive losses need negatives)")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if not 0.0 <= self.head_holdout <= 0.5:
            raise ValueError(f"head_holdout must be in [0, 0.5], got {self.head_holdout}")
        if not 0.0 <= self.event_threshold_floor < 1.0:
            raise ValueError(f"event_threshold_floor must be in [0, 1), got {self.event_threshold_floor}")
        if self.fusion_prior not in ("", "skill"):
            raise ValueError(f"fusion_prior must be '' or 'skill', got {self.fusion_prior!r}")
        if self.fusion_prior and not self.fusion_residual:
            raise ValueError("fusion_prior needs fusion_residual: true (the prior weights the residual fusion's mean)")
        if not self.fusion_attention_gain > 0:
            raise ValueError(f"fusion_attention_gain must be > 0, got {self.fusion_attention_gain}")
        if not 0.0 <= self.camera_focus_fact <= 1.0:
            raise ValueError(f"camera_focus_fact must be in [0, 1], got {self.camera_focus_fact}")
        if not 0.0 <= self.fact_phrasings <= 1.0:
            raise ValueError(f"fact_phrasings must be in [0, 1], got {self.fact_phrasings}")
        if not set(self.joint_modalities) <= {"camera", "lidar", "audio", "imu"}:
            raise ValueError(f"joint_modalities {self.joint_modalities}: not sensor modalities")
        if self.joint_ogm_alpha < 0 or self.joint_lr_scale <= 0:
            raise ValueError(f"joint_ogm_alpha must be >= 0 and joint_lr_scale > 0, got {self.joint_ogm_alpha}, "
                             f"{self.joint_lr_scale}")
        if not self.bind_modalities or not set(self.bind_modalities) <= {"lidar", "audio", "imu"}:
            raise ValueError(f"bind_modalities {self.bind_modalities}: one or more of lidar, audio, imu")
        for k, v in self.bind_targets.items():
            if k not in ("lidar", "audio", "imu") or v not in ("camera", "ego"):
                raise ValueError(f"bind_targets.{k}={v!r}: keys are lidar, audio, imu; values camera or ego")
        self.camera_augment().validate()
        if self.camera_encoder:
            from mmfusion_ros.model.config import EncoderConfig

            known = {f.name for f in fields(EncoderConfig)} - {"kind", "in_channels", "dropout"}
            bad = sorted(set(self.camera_encoder) - known)
            if bad:
                raise ValueError(f"camera_encoder keys {bad}: expected some of {sorted(known)}")
            self.camera_encoder_config()  # raises on a bad value
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def uses_facts(self) -> bool:
        """Some steps learn single facts of a caption: the caption table needs them, and InfoNCE counts every
        text true of a sample as its match."""
        return self.fact_phrasings > 0 or self.camera_focus_fact > 0

    def camera_encoder_config(self, base=None):
        """The camera's EncoderConfig: `base` (default: the small model's) with camera_encoder's fields over it."""
        from dataclasses import replace

        from mmfusion_ros.model.config import EncoderConfig, ModelConfig

        base = base or ModelConfig().encoders["camera"]
        d = dict(self.camera_encoder)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        c = replace(base, **d)
        for k in ("stem_channels", "stem_stride", "blocks_per_stage"):
            v = getattr(c, k)
            if not isinstance(v, int) or v < (0 if k == "blocks_per_stage" else 1):
                raise ValueError(f"camera_encoder.{k}={v!r}: expected a positive int")
        if not c.widths or any(w < 1 for w in c.widths):
            raise ValueError(f"camera_encoder.widths={list(c.widths)}: expected positive channel counts")
        return c

    def camera_augment(self) -> "CameraAugment":
        from mmfusion_ros.train.augment import CameraAugment
        return CameraAugment(self.camera_shift, float(self.camera_roll), float(self.camera_zoom),
                             float(self.camera_jitter))

    def to_dict(self) -> dict:
        return asdict(self)
