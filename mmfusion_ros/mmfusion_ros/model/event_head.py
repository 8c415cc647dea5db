"""Event head: a GRU over the recent fused embeddings predicts each event at each horizon."""

from __future__ import annotations

import torch
from torch import nn

from mmfusion_ros.model.config import EventHeadConfig


class EventHead(nn.Module):
    """history (B,T,D) oldest first -> probs (B,E,H) in [0,1].

    The input is each embedding plus its change from the previous step: approaching objects and
    starting sounds show up as motion in the embedding, which the GRU reads more easily as deltas.
    """

    def __init__(self, cfg: EventHeadConfig, dim: int):
        super().__init__()
        self.n_events = len(cfg.event_types)
        self.n_horizons = len(cfg.horizons)
        self.inp = nn.Sequential(nn.Linear(2 * dim, cfg.hidden), nn.GELU())
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, batch_first=True)
        self.out = nn.Sequential(nn.Linear(2 * cfg.hidden, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, self.n_events * self.n_horizons))

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([history[:, :1], history[:, :-1]], dim=1)  # (B, T, D)
        x = self.inp(torch.cat([history, history - prev], dim=-1))  # (B, T, Hd)
        y, _ = self.gru(x)  # (B, T, Hd)
        feat = torch.cat([y[:, -1], x.mean(1)], dim=-1)  # (B, 2Hd)
        return self.out(feat).reshape(-1, self.n_events, self.n_horizons)  # (B, E, H)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(history))  # (B, E, H)
