"""Caption decoder: a small causal transformer that reads the embedding as a learned prefix.

Blocks are written out (nanoGPT-style) rather than nn.TransformerDecoder so the exported graph is
plain MatMul/Softmax and the causal mask is a sliced constant, both friendly to TensorRT.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfusion_ros.model.config import CaptionConfig


class _CausalBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # each (B, S, D)
        q = q.reshape(b, s, self.heads, hd).transpose(1, 2)  # (B, h, S, hd)
        k = k.reshape(b, s, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, s, self.heads, hd).transpose(1, 2)
        att = q @ k.transpose(-2, -1) * (hd ** -0.5) + mask  # (B, h, S, S)
        y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(b, s, d)  # (B, S, D)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, S, D)


class CaptionDecoder(nn.Module):
    """embedding (B,E) + tokens (B,L) starting with BOS -> next-token logits (B,L,V)."""

    def __init__(self, cfg: CaptionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.prefix = nn.Linear(embed_dim, cfg.prefix_len * d)
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(cfg.prefix_len + cfg.max_len, d) * 0.02)
        self.blocks = nn.ModuleList([_CausalBlock(d, cfg.heads, cfg.dropout, cfg.mlp_ratio) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size)
        n = cfg.prefix_len + cfg.max_len
        causal = torch.full((n, n), -1e4).triu(1)  # (S, S) additive mask, 0 on and below the diagonal
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, length = tokens.shape
        p = self.cfg.prefix_len
        prefix = self.prefix(embedding).reshape(b, p, -1)  # (B, P, d)
        x = torch.cat([prefix, self.tok(tokens)], dim=1)  # (B, P+L, d)
        s = x.shape[1]
        x = x + self.pos[:s].unsqueeze(0)
        mask = self.causal[:s, :s]  # (S, S)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.head(self.norm(x[:, p:]))  # (B, L, V)

    @torch.no_grad()
    def greedy(self, embedding: torch.Tensor, bos: int = 1, eos: int = 2) -> torch.Tensor:
        """(B,E) -> (B,<=max_len) token ids after BOS, PAD(0)-filled after EOS."""
        b = embedding.shape[0]
        tokens = torch.full((b, 1), bos, dtype=torch.long, device=embedding.device)
        done = torch.zeros(b, dtype=torch.bool, device=embedding.device)
        for _ in range(self.cfg.max_len - 1):
            nxt = self(embedding, tokens)[:, -1].argmax(-1)  # (B,)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return tokens[:, 1:]
