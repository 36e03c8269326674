"""Backbones, all called as model(x, t, d, y)."""

from __future__ import annotations

import math

from torch import nn

from bench.config import ModelConfig
from bench.errors import BenchError
from bench.models.dit import DiT, PRESETS
from bench.models.mlp import MLP
from bench.models.unet import PRESETS as UNET_PRESETS, UNet, parse_ints


def build_model(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The backbone for data of `shape` (without batch) with `num_classes` labels (0 = unconditional)."""
    if cfg.arch == "mlp":
        return MLP(shape, num_classes, hidden=cfg.hidden, depth=cfg.depth, d_scale=cfg.d_scale)
    if len(shape) != 3:
        raise BenchError(f"model.arch = {cfg.arch} needs image-shaped data (C, H, W), got shape {shape}; use model.arch = mlp.")
    if cfg.arch == "unet":
        return build_unet(cfg, shape, num_classes)
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


def build_unet(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The U-Net of model.preset (bench.models.unet.PRESETS), or of hidden (channels), channel_mult,
    depth (residual blocks per resolution), attn_resolutions and heads; dropout and scale_shift either way."""
    try:
        if cfg.preset:
            if cfg.preset not in UNET_PRESETS:
                raise BenchError(f"Unknown U-Net preset {cfg.preset!r}; known: {', '.join(UNET_PRESETS)}.")
            channels, mult, blocks, attn, heads = UNET_PRESETS[cfg.preset]
        else:
            channels, blocks, heads = cfg.hidden, cfg.depth, cfg.heads
            mult = parse_ints(cfg.channel_mult, "model.channel_mult")
            attn = parse_ints(cfg.attn_resolutions, "model.attn_resolutions")
        return UNet(shape, num_classes, channels, mult, blocks, attn, heads, dropout=cfg.dropout,
                    scale_shift=cfg.scale_shift, d_scale=cfg.d_scale)
    except ValueError as e:
        raise BenchError(str(e)) from None


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
