"""The ImageBind-style model: per-modality preprocessor -> trunk -> head -> postprocessor, plus
fusion, event head and caption decoder, all built by one factory ``build_model``."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from mmfusion_ros.core.types import SENSOR_MODALITIES, Modality
from mmfusion_ros.model.caption import CaptionDecoder
from mmfusion_ros.model.config import ModelConfig
from mmfusion_ros.model.encoders import ConvTrunk, InputNorm, Normalize
from mmfusion_ros.model.event_head import EventHead
from mmfusion_ros.model.fusion import AttentionFusion

SENSOR_KEYS = [m.value for m in SENSOR_MODALITIES]


def _key(m) -> str:
    return m.value if isinstance(m, Modality) else str(m)


class MMFusionModel(nn.Module):
    """Sensor encoders into the 384-d text space, plus the heads that read that space."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        missing = [k for k in SENSOR_KEYS if k not in cfg.encoders]
        if missing:
            raise ValueError(f"ModelConfig.encoders lacks {missing}")
        # kind "tower": the modality is a frozen pretrained tower (train/towers.py) whose embeddings are computed
        # outside torch by its ONNX graph; here its "input" is that embedding, passed through unchanged
        tower = {k for k in SENSOR_KEYS if cfg.encoders[k].kind == "tower"}
        self.tower_modalities = sorted(tower)
        self.modality_preprocessors = nn.ModuleDict({k: nn.Identity() if k in tower else InputNorm() for k in SENSOR_KEYS})
        self.modality_trunks = nn.ModuleDict({k: nn.Identity() if k in tower else ConvTrunk(cfg.encoders[k])
                                              for k in SENSOR_KEYS})
        self.modality_heads = nn.ModuleDict(
            {k: nn.Identity() if k in tower else nn.Linear(self.modality_trunks[k].out_dim, cfg.embed_dim)
             for k in SENSOR_KEYS}
        )
        self.modality_postprocessors = nn.ModuleDict({k: Normalize() for k in SENSOR_KEYS})
        # one learned temperature per modality pair trained (modality -> its anchor), CLIP-style
        self.logit_scales = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(float(cfg.init_logit_scale))) for k in SENSOR_KEYS + ["fused"]}
        )
        self.fusion = AttentionFusion(cfg.fusion, cfg.embed_dim, len(SENSOR_KEYS))
        self.event_head = EventHead(cfg.events, cfg.embed_dim)
        self.caption_decoder = CaptionDecoder(cfg.caption, cfg.embed_dim)

    def logit_scale(self, key: str = "camera") -> torch.Tensor:
        return self.logit_scales[key].clamp(max=self.cfg.max_logit_scale).exp()

    def encode(self, modality, x: torch.Tensor) -> torch.Tensor:
        """One modality's model input (B, ...) -> (B, 384) L2-normalised embedding."""
        k = _key(modality)
        x = self.modality_preprocessors[k](x)
        feat = self.modality_trunks[k](x)  # (B, C)
        return self.modality_postprocessors[k](self.modality_heads[k](feat))  # (B, 384)

    def tokens(self, inputs: Mapping) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode the present modalities -> tokens (B,4,384) zeros where absent, present (B,4)."""
        present = {_key(m): x for m, x in inputs.items() if x is not None and _key(m) in SENSOR_KEYS}
        if not present:
            raise ValueError("no sensor modality given")
        ref = next(iter(present.values()))
        b = ref.shape[0]
        toks = ref.new_zeros(b, len(SENSOR_KEYS), self.cfg.embed_dim)  # (B, 4, 384)
        mask = ref.new_zeros(b, len(SENSOR_KEYS))  # (B, 4)
        for i, k in enumerate(SENSOR_KEYS):
            if k in present:
                toks[:, i] = self.encode(k, present[k])
                mask[:, i] = 1.0
        return toks, mask

    def forward(self, inputs: Mapping, present: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """{modality: (B, ...)} for the present modalities only -> per-modality embeddings + fused.

        ``present`` (B,4) optionally masks further (modality dropout); it multiplies the mask of
        the modalities given.
        """
        toks, mask = self.tokens(inputs)
        if present is not None:
            mask = mask * present
            toks = toks * mask.unsqueeze(-1)
        fused, weights = self.fusion(toks, mask)
        out = {k: toks[:, i] for i, k in enumerate(SENSOR_KEYS) if _key(k) in {_key(m) for m in inputs if inputs[m] is not None}}
        out.update(fused=fused, weights=weights, tokens=toks, present=mask)
        return out


def build_model(cfg: Optional[ModelConfig] = None) -> MMFusionModel:
    """The one factory: config -> model (weights randomly initialised, seeded by the caller)."""
    return MMFusionModel(cfg or ModelConfig())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_macs(model: MMFusionModel, shapes: Mapping[str, tuple]) -> Dict[str, int]:
    """Multiply-accumulates of each sensor encoder for one sample, counted with forward hooks on
    Conv and Linear layers (the only layers with non-negligible MACs in these trunks)."""
    counts: Dict[str, int] = {}
    for k in SENSOR_KEYS:
        total = [0]

        def hook(mod, inp, out):
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                per_out = mod.weight.shape[1] * int(torch.tensor(mod.kernel_size).prod())
                total[0] += int(out.numel()) * per_out
            elif isinstance(mod, nn.Linear):
                total[0] += int(out.numel()) * mod.in_features

        if k in model.tower_modalities:  # counted from its ONNX graph (bench), not here
            counts[k] = 0
            continue
        hs = [m.register_forward_hook(hook) for m in list(model.modality_trunks[k].modules()) + [model.modality_heads[k]]]
        was = model.training
        model.eval()
        with torch.no_grad():
            model.encode(k, torch.zeros((1,) + tuple(shapes[k])))
        model.train(was)
        for h in hs:
            h.remove()
        counts[k] = total[0]
    return counts
