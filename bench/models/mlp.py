"""MLP backbone for vectors and 2-D points: model(x, t, d, y) with x of shape (B, *shape)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.models.embed import sinusoidal


class MLP(nn.Module):
    """Input = [x, sin/cos features of t, of d, label embedding] -> `depth` SiLU layers of width
    `hidden` -> output. d is a continuous input (0 = the flow-matching query), embedded at d_scale."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, hidden: int = 512, depth: int = 3, emb_dim: int = 64,
                 d_scale: float = 1.0):
        super().__init__()
        self.shape = tuple(shape)
        self.emb_dim, self.d_scale = emb_dim, d_scale
        dim = math.prod(self.shape)
        self.label = nn.Embedding(num_classes + 1, emb_dim)  # index num_classes = null (CFG)
        layers: list[nn.Module] = [nn.Linear(dim + 3 * emb_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor, d: Tensor, y: Tensor) -> Tensor:
        """x: (B, *shape); t, d: (B,) float; y: (B,) long -> (B, *shape)."""
        B = x.shape[0]
        h = torch.cat([x.reshape(B, -1), sinusoidal(t, self.emb_dim).to(x.dtype),
                       sinusoidal(d, self.emb_dim, self.d_scale).to(x.dtype), self.label(y).to(x.dtype)], dim=1)
        return self.net(h).reshape(B, *self.shape)
