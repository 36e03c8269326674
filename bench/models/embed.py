"""Embeddings shared by the backbones: sinusoidal features for t and d, a label table with a null class."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal(v: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """(B,) in [0, 1] -> (B, dim) sin/cos features of scale * v (scale 1000 separates d = 1/128 from 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=v.device, dtype=torch.float32) / half)
    args = scale * v.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """t or d -> (B, hidden): sinusoidal features through a 2-layer MLP. d is embedded as a
    continuous value (d = 0 is the flow-matching query), so MeanFlow's continuous d works too."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, v: Tensor) -> Tensor:
        return self.mlp(sinusoidal(v, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y in {0, ..., num_classes} -> (B, hidden); index num_classes is the null (CFG) token."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: Tensor) -> Tensor:
        return self.table(y)


class Conditioning(nn.Module):
    """c = emb_t(t) + emb_d(d) + emb_y(y), the vector every backbone conditions on."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.t = ScalarEmbedder(hidden)
        self.d = ScalarEmbedder(hidden)
        self.y = LabelEmbedder(num_classes, hidden)

    def forward(self, t: Tensor, d: Tensor, y: Tensor) -> Tensor:
        return self.t(t) + self.d(d) + self.y(y)
