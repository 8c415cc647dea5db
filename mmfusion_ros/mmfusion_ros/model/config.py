"""Model configuration: dataclasses with a comment per field, one per network part (open_clip style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Tuple

from mmfusion_ros.core.types import EMBED_DIM, EVENT_HORIZONS, EVENT_TYPES


@dataclass
class EncoderConfig:
    """One sensor encoder (trunk + head). ``kind`` picks the trunk family."""

    kind: str = "cnn2d"  # "cnn2d" (images, BEV grids, spectrograms), "cnn1d" (IMU sequences) or "tower" (a frozen
    #                      pretrained image tower run outside torch: the input is its (B, embed_dim) embedding)
    in_channels: int = 3  # input channels of the model input (camera 3, lidar 4, audio 1, imu 6)
    stem_channels: int = 32  # channels after the patchify stem convolution
    stem_stride: int = 4  # stem kernel = stride (4: a 128x128 input becomes 32x32)
    widths: Tuple[int, ...] = (48, 96, 192)  # output channels of each stride-2 stage
    blocks_per_stage: int = 1  # residual 3x3 convs after each stage's downsampling conv
    dropout: float = 0.0  # dropout before the head


@dataclass
class FusionConfig:
    """Attention fusion over the four sensor tokens."""

    hidden: int = 128  # attention width (queries/keys/values are projected to this size)
    heads: int = 4  # attention heads
    layers: int = 1  # self-attention layers over the tokens before pooling
    residual: bool = True  # fused = L2norm(gain-weighted mean of present tokens + attention output); False: attention pooling only (checkpoints before this field)
    prior: Optional[List[float]] = None  # residual only: fixed weights of the mean, one per sensor (camera, lidar, audio, imu), e.g. each sensor's zero-shot skill; None = learned gains
    attention_gain: float = 1.0  # residual only: the attention output's gain at initialisation (learned from there)
    label_orthogonal: int = 0  # residual + prior only: rows of the label basis (the class prompts' span) the attention output is made orthogonal to; 0 = off


@dataclass
class EventHeadConfig:
    """Event predictor over a history of fused embeddings."""

    history_len: int = 10  # T, fused embeddings per history, oldest first
    history_step: float = 0.2  # seconds between consecutive history entries
    hidden: int = 128  # GRU width
    event_types: Tuple[str, ...] = tuple(EVENT_TYPES)  # E, output order
    horizons: Tuple[float, ...] = tuple(EVENT_HORIZONS)  # H seconds, output order


@dataclass
class CaptionConfig:
    """Prefix-conditioned transformer caption decoder."""

    d_model: int = 256  # decoder width
    layers: int = 2  # decoder blocks
    heads: int = 4  # attention heads
    mlp_ratio: int = 2  # MLP hidden width / d_model
    prefix_len: int = 2  # learned prefix tokens projected from the 384-d embedding
    max_len: int = 24  # max caption tokens including BOS/EOS
    vocab_size: int = 4  # set from the vocabulary built from training captions (>= 4 specials)
    dropout: float = 0.1  # dropout in training


def _default_encoders() -> Dict[str, EncoderConfig]:
    return {
        "camera": EncoderConfig(kind="cnn2d", in_channels=3),
        "lidar": EncoderConfig(kind="cnn2d", in_channels=4),
        "audio": EncoderConfig(kind="cnn2d", in_channels=1, stem_channels=32, stem_stride=2, widths=(48, 96, 192)),
        "imu": EncoderConfig(kind="cnn1d", in_channels=6, stem_channels=32, stem_stride=4, widths=(48, 96, 128)),
    }


@dataclass
class ModelConfig:
    """The whole model; ``build_model(cfg)`` is the one factory."""

    name: str = "mmfusion_small"  # bundle / model name
    embed_dim: int = EMBED_DIM  # shared space (all-MiniLM-L6-v2's 384)
    encoders: Dict[str, EncoderConfig] = field(default_factory=_default_encoders)  # per sensor modality
    fusion: FusionConfig = field(default_factory=FusionConfig)  # fusion module
    events: EventHeadConfig = field(default_factory=EventHeadConfig)  # event head
    caption: CaptionConfig = field(default_factory=CaptionConfig)  # caption decoder
    init_logit_scale: float = 2.659  # log(1/0.07), CLIP's initial temperature
    max_logit_scale: float = 4.6052  # log(100), clamp so training cannot blow up the temperature

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of to_dict; unknown keys are an error so a typo in a config file is not ignored."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        if "encoders" in d:
            d["encoders"] = {k: _sub(EncoderConfig, v) for k, v in d["encoders"].items()}
        if "fusion" in d:
            fd = d["fusion"]
            if isinstance(fd, dict) and "residual" not in fd:
                fd = dict(fd, residual=False)  # saved before the residual fusion existed: keep its behaviour
            d["fusion"] = _sub(FusionConfig, fd)
        if "events" in d:
            d["events"] = _sub(EventHeadConfig, d["events"])
        if "caption" in d:
            d["caption"] = _sub(CaptionConfig, d["caption"])
        return cls(**d)


def _sub(klass, v):
    if isinstance(v, klass):
        return v
    known = {f.name for f in fields(klass)}
    unknown = set(v) - known
    if unknown:
        raise ValueError(f"unknown {klass.__name__} keys: {sorted(unknown)}")
    v = dict(v)
    for k in ("widths", "event_types", "horizons"):
        if k in v and isinstance(v[k], list):
            v[k] = tuple(v[k])
    return klass(**v)


def tiny_config(vocab_size: int = 4) -> ModelConfig:
    """A very small model for tests and smoke runs (same interfaces, a fraction of the compute)."""
    enc = {
        "camera": EncoderConfig(kind="cnn2d", in_channels=3, stem_channels=8, widths=(16, 32, 32)),
        "lidar": EncoderConfig(kind="cnn2d", in_channels=4, stem_channels=8, widths=(16, 32, 32)),
        "audio": EncoderConfig(kind="cnn2d", in_channels=1, stem_channels=8, stem_stride=2, widths=(16, 32, 32)),
        "imu": EncoderConfig(kind="cnn1d", in_channels=6, stem_channels=8, widths=(16, 32, 32)),
    }
    return ModelConfig(
        name="mmfusion_tiny",
        encoders=enc,
        fusion=FusionConfig(hidden=32, heads=2, layers=1),
        events=EventHeadConfig(hidden=32),
        caption=CaptionConfig(d_model=64, layers=2, heads=2, max_len=24, vocab_size=vocab_size),
    )
