"""Sensor encoder trunks: small depthwise-separable CNNs sized for a Jetson.

Written here rather than taken from timm: the trunks are a few hundred thousand parameters with
custom input channel counts (BEV 4, spectrogram 1, IMU 6 as a 1D sequence), and only Conv/BN/ReLU
ops so TensorRT and ONNX Runtime run them without plugins.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfusion_ros.model.config import EncoderConfig


class _DSBlock2d(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet-style), residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.dw(x)))  # (B, Cin, H', W')
        y = self.bn2(self.pw(y))  # (B, Cout, H', W')
        return self.act(y + x if self.residual else y)


class _DSBlock1d(nn.Module):
    """1D version of _DSBlock2d for time series (kernel 5: IMU patterns span tens of samples)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = nn.Conv1d(cin, cin, 5, stride, 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm1d(cin)
        self.pw = nn.Conv1d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.act = nn.ReLU(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.dw(x)))  # (B, Cin, T')
        y = self.bn2(self.pw(y))  # (B, Cout, T')
        return self.act(y + x if self.residual else y)


class ConvTrunk(nn.Module):
    """Stem + stride-2 stages + global average pool -> (B, widths[-1]) features."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.kind == "cnn2d":
            conv, bn, block, pool = nn.Conv2d, nn.BatchNorm2d, _DSBlock2d, nn.AdaptiveAvgPool2d(1)
            k = 3
        elif cfg.kind == "cnn1d":
            conv, bn, block, pool = nn.Conv1d, nn.BatchNorm1d, _DSBlock1d, nn.AdaptiveAvgPool1d(1)
            k = 7
        else:
            raise ValueError(f"unknown encoder kind {cfg.kind!r} (expected 'cnn2d' or 'cnn1d')")
        layers = [conv(cfg.in_channels, cfg.stem_channels, k, 2, k // 2, bias=False), bn(cfg.stem_channels), nn.ReLU(inplace=True)]
        cin = cfg.stem_channels
        for w in cfg.widths:
            layers.append(block(cin, w, 2))
            for _ in range(cfg.blocks_per_stage):
                layers.append(block(w, w, 1))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)  # (B, C, H', W') or (B, C, T')
        return self.dropout(self.pool(y).flatten(1))  # (B, C)


class InputNorm(nn.Module):
    """Light torch-side preprocessor: replaces non-finite values and clamps to a sane range.

    The real preprocessing is numpy (core/preprocess.py); this only guards the network against a
    NaN/Inf that slipped through, so one bad cell cannot poison the whole embedding.
    """

    def __init__(self, limit: float = 50.0):
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
        return x.clamp(-self.limit, self.limit)


class Normalize(nn.Module):
    """L2-normalise the last dimension (the postprocessor of every encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
