"""Contrastive and sequence losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor = None) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised a (B,D) and b (B,D).

    ``pos`` (B,B) bool marks every pair that counts as a match (the diagonal plus, e.g., frames of
    the same scene or samples with the same caption); each row's target spreads evenly over its
    matches, so duplicates in a batch are not pushed apart as false negatives.
    """
    logits = scale * a @ b.t()  # (B, B)
    n = a.shape[0]
    if pos is None:
        target = torch.arange(n, device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = pos.float() + torch.eye(n, device=a.device)
    pos = (pos > 0).float()  # (B, B)
    row = pos / pos.sum(1, keepdim=True)
    col = pos.t() / pos.t().sum(1, keepdim=True)
    la = -(row * F.log_softmax(logits, 1)).sum(1).mean()
    lb = -(col * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (la + lb)


def same(ids: torch.Tensor) -> torch.Tensor:
    """(B,) ids -> (B,B) bool, True where two samples share an id."""
    return ids[:, None] == ids[None, :]
