"""Backbones, all called as model(x, t, d, y)."""

from __future__ import annotations

import math

from torch import nn

from bench.config import ModelConfig
from bench.errors import BenchError
from bench.models.dit import DiT, PRESETS
from bench.models.mlp import MLP


def build_model(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The backbone for data of `shape` (without batch) with `num_classes` labels (0 = unconditional)."""
    if cfg.arch == "mlp":
        return MLP(shape, num_classes, hidden=cfg.hidden, depth=cfg.depth, d_scale=cfg.d_scale)
    if len(shape) != 3:
        raise BenchError(f"model.arch = dit needs image-shaped data (C, H, W), got shape {shape}; use model.arch = mlp.")
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise BenchError(f"Unknown DiT preset {cfg.preset!r}; known: {', '.join(PRESETS)}.")
        hidden, depth, heads, patch = PRESETS[cfg.preset]
    else:
        hidden, depth, heads, patch = cfg.hidden, cfg.depth, cfg.heads, cfg.patch
    try:
        return DiT(shape, num_classes, hidden=hidden, depth=depth, heads=heads, patch=patch, d_scale=cfg.d_scale)
    except ValueError as e:
        raise BenchError(str(e)) from None


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
