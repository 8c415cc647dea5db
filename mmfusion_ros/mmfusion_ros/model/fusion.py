"""Attention fusion of the four sensor embeddings into one embedding in the same 384-d space.

Attention is written with plain Linear/matmul/softmax instead of nn.MultiheadAttention so the ONNX
graph has no fused-kernel fast paths and TensorRT parses it directly.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from mmfusion_ros.model.config import FusionConfig


class _TokenAttention(nn.Module):
    """One pre-norm self-attention + MLP block over the N modality tokens."""

    def __init__(self, dim: int, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * hidden)
        self.out = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # each (B, N, Hd)
        hd = q.shape[-1] // self.heads
        q = q.reshape(b, n, self.heads, hd).transpose(1, 2)  # (B, h, N, hd)
        k = k.reshape(b, n, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, n, self.heads, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) * (hd ** -0.5), dim=-1)  # (B, h, N, N)
        y = (att @ v).transpose(1, 2).reshape(b, n, self.heads * hd)  # (B, N, Hd)
        x = x + self.out(y)  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


class AttentionFusion(nn.Module):
    """tokens (B,4,D) + present (B,4) -> fused (B,D) L2-normalised, weights (B,4) summing to 1.

    Absent tokens are replaced by a learned per-modality token so the attention layers always see
    four inputs; the pooling weights are masked to the present modalities (over the four learned
    absent tokens when nothing is present, so the output stays finite). The attention output is a
    weighted sum of the (refined) modality embeddings, which keeps it in the shared space.

    With ``cfg.residual`` the fused vector is L2norm(gain-weighted mean of the present embeddings +
    gain * attention output): the plain mean of the present embeddings already beats learned pooling
    alone (a caption-matching objective teaches the pooling to trust the camera, which describes the
    layout, over audio, which names the object), so attention only corrects it. ``weights`` is then
    each modality's share of that linear mix: mean coefficients plus attention gain x pooling weights.

    With ``cfg.prior`` (residual only) the mean's weights are fixed, not learned: the mean is
    sum_m prior_m e_m / sum_m prior_m over the present sensors, the skill-weighted mean the published labels
    read (train/calibrate.label_skill_weights). A caption objective otherwise moves the gains and the pooling
    towards the camera, which is what fails on scenes training never showed; the attention output, with
    the IMU's motion, is added to that fixed mean at unit length times its gain (else the caption objective
    grows the refinement until attention outweighs the mean whatever the gain). A frame whose present
    sensors all have prior 0 (IMU only) is the attention output alone.
    """

    def __init__(self, cfg: FusionConfig, dim: int, n_modalities: int = 4):
        super().__init__()
        self.absent = nn.Parameter(torch.randn(n_modalities, dim) * 0.02)  # (4, D)
        self.pos = nn.Parameter(torch.zeros(n_modalities, dim))  # (4, D) modality identity
        self.blocks = nn.ModuleList([_TokenAttention(dim, cfg.hidden, cfg.heads) for _ in range(cfg.layers)])
        self.score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))
        self.delta = nn.Linear(dim, dim)
        nn.init.zeros_(self.delta.weight)  # starts as a pure weighted average of the input embeddings
        nn.init.zeros_(self.delta.bias)
        self.residual = bool(getattr(cfg, "residual", False))
        prior = getattr(cfg, "prior", None)
        self.fixed_prior = self.residual and prior is not None
        if self.residual:
            if self.fixed_prior:
                if len(prior) != n_modalities or min(prior) < 0:
                    raise ValueError(f"fusion prior needs {n_modalities} weights >= 0, got {prior}")
                # derived from the config, so not in the state dict
                self.register_buffer("prior", torch.tensor([float(w) for w in prior]), persistent=False)  # (4,)
            else:
                self.log_gain = nn.Parameter(torch.zeros(n_modalities))  # (4,) exp() = per-modality gain of the mean, 1 at start
            gain = float(getattr(cfg, "attention_gain", 1.0))
            if not gain > 0:
                raise ValueError(f"fusion attention_gain must be > 0, got {gain}")
            self.log_att = nn.Parameter(torch.full((), math.log(gain)))  # exp() = gain of the attention output
        k = int(getattr(cfg, "label_orthogonal", 0) or 0)
        if k and not self.fixed_prior:
            raise ValueError("fusion label_orthogonal needs residual fusion with a fixed prior")
        if k < 0 or k >= dim:
            raise ValueError(f"fusion label_orthogonal must be in [0, {dim}), got {k}")
        # (k, D) orthonormal rows spanning the class prompts (set_label_basis); in the state dict, so a
        # checkpoint carries the span its labels were protected in
        if k:
            self.register_buffer("label_basis", torch.zeros(k, dim))  # (k, D)

    @torch.no_grad()
    def set_label_basis(self, prompts: torch.Tensor) -> None:
        """prompts (C,D), C = cfg.label_orthogonal: store an orthonormal basis of their span."""
        if not hasattr(self, "label_basis"):
            raise ValueError("this fusion was built without label_orthogonal")
        if prompts.shape != self.label_basis.shape:
            raise ValueError(f"label basis needs {tuple(self.label_basis.shape)} prompt embeddings, got {tuple(prompts.shape)}")
        q, r = torch.linalg.qr(prompts.T.to(torch.float64))  # q (D, C)
        if torch.abs(torch.diagonal(r)).min() < 1e-6:
            raise ValueError("label basis: the prompt embeddings are linearly dependent")
        self.label_basis.copy_(q.T.to(self.label_basis.dtype))

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        p = present.unsqueeze(-1)  # (B, 4, 1)
        x = p * tokens + (1.0 - p) * self.absent.unsqueeze(0)  # (B, 4, D)
        h = x + self.pos.unsqueeze(0)  # (B, 4, D)
        for blk in self.blocks:
            h = blk(h)  # (B, 4, D)
        any_present = (present.sum(-1, keepdim=True) > 0).to(present.dtype)  # (B, 1)
        mask = present * any_present + (1.0 - any_present)  # (B, 4) all ones when nothing is present
        logits = self.score(h).squeeze(-1) + (mask - 1.0) * 1e4  # (B, 4)
        weights = torch.softmax(logits, dim=-1)  # (B, 4)
        refined = x + self.delta(h)  # (B, 4, D)
        fused = (weights.unsqueeze(-1) * refined).sum(1)  # (B, D) attention output
        if self.residual:
            if self.fixed_prior:
                wp = self.prior.unsqueeze(0) * present  # (B, 4) prior weights of the present sensors
                coef = wp / wp.sum(-1, keepdim=True).clamp_min(1e-6)  # (B, 4) weighted mean, all 0 when no prior is present
                # unit length: the gain then bounds how far attention can turn the fixed mean
                fused = fused / fused.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (B, D)
                if hasattr(self, "label_basis"):
                    # drop its part in the prompts' span: every prompt's cosine to the sum then scales alike,
                    # so the zero-shot labels are the mean's, and attention still adds motion and layout
                    fused = fused - (fused @ self.label_basis.T) @ self.label_basis  # (B, D)
            else:
                n = present.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1) present modalities
                coef = self.log_gain.exp().unsqueeze(0) * present / n  # (B, 4) gain-weighted mean, 0 for absent
            att_gain = self.log_att.exp()  # ()
            fused = (coef.unsqueeze(-1) * x).sum(1) + att_gain * fused  # (B, D)
            share = coef + att_gain * weights  # (B, 4) positive
            weights = share / share.sum(-1, keepdim=True)  # (B, 4) sums to 1
        fused = fused / fused.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return fused, weights
