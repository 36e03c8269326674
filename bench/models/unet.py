"""U-Net in the DDPM++ layout of EDM's `SongUNet` (Song et al. 2021; Karras et al. 2022, NVlabs/edm
training/networks.py), the ~56M-parameter CIFAR-10 backbone of the consistency-model, ECT and MeanFlow
papers: residual blocks (GroupNorm, SiLU, 3x3 convolutions, dropout) conditioned on an embedding vector,
self-attention at the chosen resolutions and in the bottleneck, average-pool down / nearest up with 1x1
projections on the residual path, skip connections from every encoder block, residuals scaled by sqrt(1/2).

model(x, t, d, y) as the DiT: the embedding is bench.models.embed.Conditioning (t, d and the label with
its null class for CFG), where EDM embeds the noise level and a one-hot label. The output convolution
starts at exactly zero (EDM: 1e-5 x xavier), so every method starts from a zero prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.embed import Conditioning

# name -> (channels, channel_mult, res blocks per resolution, attention resolutions, attention heads)
PRESETS: dict[str, tuple[int, tuple[int, ...], int, tuple[int, ...], int]] = {
    # EDM's --arch=ddpmpp on CIFAR-10 (train.py: model_channels 128, channel_mult [2,2,2]; SongUNet's
    # num_blocks 4, attn_resolutions [16], num_heads 1; train.py's dropout 0.13 is model.dropout): 55.7M parameters in EDM, 56.2M here (the d embedder)
    "UNet-cifar": (128, (2, 2, 2), 4, (16,), 1),
    # for CPU tests and the digits (8x8: resolutions 8 and 4); attention only in the bottleneck, so any even side works
    "UNet-tiny": (32, (1, 2), 1, (), 1),
}

# EDM's SongUNet: residuals (and attention outputs) scaled by this to keep the variance
SKIP_SCALE = math.sqrt(0.5)
# Training on the CPU, attention over up to this many positions takes the plain product (as the DiT)
SHORT_CPU_SEQUENCE = 64


def group_norm(channels: int) -> nn.GroupNorm:
    """EDM's GroupNorm: 32 groups, at least 4 channels per group, eps 1e-6."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """"2,2,2" -> (2, 2, 2); "" -> ()."""
    try:
        out = tuple(int(s) for s in str(text).replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"{what} must be a comma list of integers, got {text!r}.") from None
    if any(v < 1 for v in out):
        raise ValueError(f"{what} must hold positive integers, got {text!r}.")
    return out


class ResBlock(nn.Module):
    """EDM's UNetBlock: GroupNorm-SiLU-(resample)-conv3x3, the embedding added (or as scale and shift)
    before the second GroupNorm-SiLU, dropout, conv3x3; residual through a 1x1 conv when the channels
    or the resolution change; optional self-attention after it (residual, scaled alike)."""

    def __init__(self, cin: int, cout: int, emb: int, up: bool = False, down: bool = False, attention: bool = False,
                 heads: int = 1, dropout: float = 0.0, scale_shift: bool = False):
        super().__init__()
        self.cin, self.cout, self.up, self.down = cin, cout, up, down
        self.dropout, self.scale_shift, self.heads = dropout, scale_shift, heads if attention else 0
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout * (2 if scale_shift else 1))
        self.norm1 = group_norm(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None
        if self.heads:
            if cout % self.heads:
                raise ValueError(f"U-Net attention: {cout} channels do not split into {self.heads} heads.")
            self.norm2 = group_norm(cout)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = nn.Conv2d(cout, cout, 1)

    def resample(self, x: Tensor) -> Tensor:
        # EDM's resample_filter [1, 1]: 2x2 average pooling down, nearest-neighbour up
        if self.down:
            return F.avg_pool2d(x, 2)
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def attention(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        n, h = H * W, self.heads
        q, k, v = self.qkv(self.norm2(x)).reshape(B, 3, h, C // h, n).permute(1, 0, 2, 4, 3)  # (B, h, n, C/h) each
        if x.device.type != "cpu" or n > SHORT_CPU_SEQUENCE or not torch.is_grad_enabled():
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # training on the CPU at a few positions: the plain product is faster (bench/models/dit.py)
            out = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v
        return self.proj(out.transpose(-2, -1).reshape(B, C, H, W))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:  # DDPM++ (EDM's adaptive_scale=False): the embedding is a per-channel bias
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (self.skip(self.resample(x)) if self.skip is not None else x)) * SKIP_SCALE
        if self.heads:
            x = (self.attention(x) + x) * SKIP_SCALE
        return x

    def flops(self, res_in: int, emb: int) -> float:
        """Forward FLOPs (2 x multiply-adds) of convolutions, the affine map and attention, one sample."""
        res = res_in // 2 if self.down else res_in * 2 if self.up else res_in
        p = res * res
        f = 2 * p * 9 * self.cin * self.cout + 2 * p * 9 * self.cout * self.cout + 2 * emb * self.affine.out_features
        if self.skip is not None:
            f += 2 * p * self.cin * self.cout
        if self.heads:
            f += 2 * p * self.cout * 3 * self.cout + 2 * p * self.cout * self.cout  # qkv and proj (1x1)
            f += 2 * 2 * p * p * self.cout  # q k^T and (.) v over all heads
        return float(f)


class UNet(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, channels: int = 128,
                 channel_mult: tuple[int, ...] = (2, 2, 2), num_res_blocks: int = 4, attn_resolutions: tuple[int, ...] = (16,),
                 heads: int = 1, dropout: float = 0.0, scale_shift: bool = False, emb_mult: int = 4, d_scale: float = 1.0):
        super().__init__()
        C, H, W = shape
        levels = len(channel_mult)
        if not levels or num_res_blocks < 1 or channels < 4:
            raise ValueError(f"U-Net needs at least one resolution, one residual block and 4 channels, got "
                             f"channel_mult {channel_mult}, {num_res_blocks} blocks, {channels} channels.")
        if H != W or H % (1 << (levels - 1)):
            raise ValueError(f"U-Net needs square inputs whose side divides by 2^{levels - 1} ({levels} resolutions), got {shape}.")
        resolutions = [H >> i for i in range(levels)]
        if any(r not in resolutions for r in attn_resolutions):
            raise ValueError(f"U-Net attention resolutions {attn_resolutions} are not among its resolutions {resolutions}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"U-Net dropout must be in [0, 1), got {dropout}.")
        self.shape, self.emb = tuple(shape), channels * emb_mult
        self.cond = Conditioning(num_classes, self.emb, d_scale)
        kw = dict(emb=self.emb, heads=heads, dropout=dropout, scale_shift=scale_shift)

        # encoder: conv in, then per resolution a downsampling block (below the first) and num_res_blocks blocks
        self.conv_in = nn.Conv2d(C, channels, 3, padding=1)
        self.enc = nn.ModuleList()
        self._enc_res: list[int] = []
        skips, cout = [channels], channels
        for level, mult in enumerate(channel_mult):
            res = resolutions[level]
            if level:
                self.enc.append(ResBlock(cout, cout, down=True, **kw))
                self._enc_res.append(resolutions[level - 1])
                skips.append(cout)
            for _ in range(num_res_blocks):
                self.enc.append(ResBlock(cout, channels * mult, attention=res in attn_resolutions, **kw))
                self._enc_res.append(res)
                cout = channels * mult
                skips.append(cout)
        # decoder: the bottleneck pair (attention in the first), then per resolution an upsampling block
        # (above the lowest) and num_res_blocks + 1 blocks that take the skips, attention in the last one
        self.dec = nn.ModuleList()
        self._dec_res: list[int] = []
        self._takes_skip: list[bool] = []
        for level in reversed(range(levels)):
            res, mult = resolutions[level], channel_mult[level]
            if level == levels - 1:
                for attention in (True, False):
                    self.dec.append(ResBlock(cout, cout, attention=attention, **kw))
                    self._dec_res.append(res)
                    self._takes_skip.append(False)
            else:
                self.dec.append(ResBlock(cout, cout, up=True, **kw))
                self._dec_res.append(resolutions[level + 1])
                self._takes_skip.append(False)
            for i in range(num_res_blocks + 1):
                cin = cout + skips.pop()
                cout = channels * mult
                self.dec.append(ResBlock(cin, cout, attention=(i == num_res_blocks and res in attn_resolutions), **kw))
                self._dec_res.append(res)
                self._takes_skip.append(True)
        self.norm_out = group_norm(cout)
        self.conv_out = nn.Conv2d(cout, C, 3, padding=1)
        self._init()

    def _init(self) -> None:
        # EDM's SongUNet: xavier_uniform weights, zero biases; the residual branch's last conv and the
        # attention projection at 1e-5 of it, qkv at sqrt(0.2); the output conv here exactly zero
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in [*self.enc, *self.dec]:
            blk.conv1.weight.data.mul_(1e-5)
            if blk.heads:
                blk.qkv.weight.data.mul_(math.sqrt(0.2))
                blk.proj.weight.data.mul_(1e-5)
        nn.init.normal_(self.cond.y.table.weight, std=0.02)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, d: Tensor, y: Tensor) -> Tensor:
        """x: (B, C, H, W); t, d: (B,) float; y: (B,) long (num_classes = null) -> (B, C, H, W)."""
        emb = F.silu(self.cond(t, d, y))
        h = self.conv_in(x)
        skips = [h]
        for blk in self.enc:
            h = blk(h, emb)
            skips.append(h)
        for blk, takes in zip(self.dec, self._takes_skip):
            if takes:
                h = torch.cat([h, skips.pop()], dim=1)
            h = blk(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def flops_per_forward(self) -> float:
        """FLOPs (2 x multiply-adds) of one forward pass of one sample: every convolution, linear layer
        (embedders, per-block affine maps) and attention product; norms and activations left out."""
        C, H, _ = self.shape
        emb = self.emb
        f = 2 * H * H * 9 * C * self.conv_in.out_channels + 2 * H * H * 9 * self.conv_out.in_channels * C
        for e in (self.cond.t, self.cond.d):
            f += 2 * (e.freq_dim * emb + emb * emb)
        for blk, res in zip([*self.enc, *self.dec], [*self._enc_res, *self._dec_res]):
            f += blk.flops(res, emb)
        return float(f)
