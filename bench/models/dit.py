"""DiT (Peebles & Xie, 2023): patchify, transformer blocks with adaLN-zero, unpatchify.

model(x, t, d, y) with x: (B, C, H, W). Attention goes through F.scaled_dot_product_attention
(flash / memory-efficient kernels on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.embed import Conditioning

# name -> (hidden, depth, heads, patch); S/B/L/XL as in the DiT paper, tiny for CPU tests
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "DiT-tiny/2": (128, 4, 4, 2),
    "DiT-S/2": (384, 12, 6, 2),
    "DiT-S/4": (384, 12, 6, 4),
    "DiT-B/2": (768, 12, 12, 2),
    "DiT-B/4": (768, 12, 12, 4),
    "DiT-L/2": (1024, 24, 16, 2),
    "DiT-XL/2": (1152, 28, 16, 2),
}


# Training on the CPU, sequences up to this length take the plain attention product (digits at patch 2:
# 16 tokens). Hidden 96, batch 128, 2 threads, interleaved A/B: the training step 0.896x SDPA's; sampling
# (no grad, batch 2,000) 1.063x, so sampling keeps SDPA.
SHORT_CPU_SEQUENCE = 64


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_2d(dim: int, grid: int) -> Tensor:
    """(grid*grid, dim) fixed 2-D sin-cos position embedding."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = []
    for pos in (yy.flatten(), xx.flatten()):
        out = pos[:, None] * omega[None]
        parts += [torch.sin(out), torch.cos(out)]
    return torch.cat(parts, dim=1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if x.device.type != "cpu" or N > SHORT_CPU_SEQUENCE or not torch.is_grad_enabled():
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # training on the CPU with a few tokens: SDPA's flash backward is the slow part (issue 12)
            out = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class DiT(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, hidden: int = 128, depth: int = 4,
                 heads: int = 4, patch: int = 2, d_scale: float = 1.0):
        super().__init__()
        C, H, W = shape
        if H != W or H % patch:
            raise ValueError(f"DiT needs square inputs divisible by the patch size, got {shape} and patch {patch}.")
        if hidden % heads or hidden % 4:
            raise ValueError(f"DiT hidden size {hidden} must be divisible by heads ({heads}) and by 4.")
        self.shape, self.patch, self.grid = tuple(shape), patch, H // patch
        self.hidden, self.depth = hidden, depth
        self.embed = nn.Conv2d(C, hidden, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_2d(hidden, self.grid)[None], persistent=False)
        self.cond = Conditioning(num_classes, hidden, d_scale)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch * patch * C)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cond.y.table.weight, std=0.02)
        for emb in (self.cond.t, self.cond.d):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-zero: every block starts as the identity, the output as zero
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for m in (self.final_ada[-1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, d: Tensor, y: Tensor) -> Tensor:
        """x: (B, C, H, W); t, d: (B,) float; y: (B,) long -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        c = self.cond(t, d, y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        p, g = self.patch, self.grid
        h = h.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(B, C, H, W)

    def flops_per_forward(self) -> float:
        """Approximate multiply-adds x 2 of one forward pass on one sample (matmuls only)."""
        n, h = self.grid * self.grid, self.hidden
        per_block = 2 * n * (3 * h * h + h * h + 8 * h * h) + 2 * 2 * n * n * h + 2 * 6 * h * h
        return float(self.depth * per_block + 2 * n * h * (self.patch**2 * self.shape[0]) * 2)
