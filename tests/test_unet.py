"""The DDPM++ U-Net (bench/models/unet.py): EDM's layout for CIFAR-10, the model(x, t, d, y) interface,
zero output at initialisation, its FLOP formula against torch's FlopCounterMode, and its config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config import ModelConfig
from bench.errors import BenchError
from bench.models import build_model, count_parameters
from bench.models import unet as U
from bench.models.unet import PRESETS, UNet


def small(**kw):
    args = dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), heads=2)
    args.update(kw)
    return UNet((3, 16, 16), 10, **args)


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return net


def test_the_cifar_preset_has_edms_layout_and_size():
    """EDM's SongUNet with model_channels 128, channel_mult [2, 2, 2], 4 blocks, attention at 16 (train.py --arch=ddpmpp):
    encoder 3 x 4 blocks + 2 downsampling blocks, decoder 2 bottleneck + 3 x 5 blocks + 2 upsampling blocks; attention
    in the 4 encoder blocks at 16x16, the first bottleneck block and the last decoder block at 16x16: 6; 55.7M
    parameters in EDM (the extra step-size embedder here: 0.4M)."""
    net = build_model(ModelConfig(arch="unet", preset="UNet-cifar"), (3, 32, 32), 0)
    assert len(net.enc) == 14 and len(net.dec) == 19
    assert sum(b.heads > 0 for b in [*net.enc, *net.dec]) == 6
    assert [b.cout for b in net.dec][-1] == 256 and net.conv_in.out_channels == 128
    assert sum(b.down for b in net.enc) == 2 and sum(b.up for b in net.dec) == 2
    assert 55.5e6 < count_parameters(net) < 56.5e6
    emb = 512  # channel_mult_emb 4 x 128
    assert net.enc[0].affine.in_features == emb and net.enc[0].affine.out_features == 256  # additive (DDPM++)


def test_output_shape_zero_at_init_and_dependence_on_every_input():
    torch.manual_seed(0)
    net = small().eval()
    x, t, d, y = torch.randn(4, 3, 16, 16), torch.rand(4), torch.rand(4), torch.tensor([0, 3, 9, 10])
    out = net(x, t, d, y)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # the output conv starts at zero
    randomise(net)
    base = net(x, t, d, y)
    for changed in ((x + 0.5, t, d, y), (x, t * 0.3, d, y), (x, t, d * 0.3 + 0.5, y), (x, t, d, (y + 1) % 11)):
        assert (net(*changed) - base).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every row moves
    one = net(x[:1], t[:1], d[:1], y[:1])
    torch.testing.assert_close(one, base[:1], rtol=1e-4, atol=1e-5)  # rows independent (GroupNorm, not BatchNorm)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_flops_formula_agrees_with_torch_flop_counter(scale_shift, monkeypatch):
    """Counted on the explicit attention product (FlopCounterMode counts it fully; CPU SDPA kernels it undercounts)."""
    monkeypatch.setattr(U, "SHORT_CPU_SEQUENCE", 10**9)
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = small(scale_shift=scale_shift, attn_resolutions=(16, 8), num_res_blocks=2)
    rows = 3
    x, t = torch.randn(rows, 3, 16, 16), torch.rand(rows)
    with FlopCounterMode(display=False) as counter:
        net(x, t, t, torch.zeros(rows, dtype=torch.long))
    assert net.flops_per_forward() == pytest.approx(counter.get_total_flops() / rows, rel=1e-9)


def test_flops_of_the_cifar_preset_against_the_counter():
    """The full-size preset on the meta device (no memory, no time): every op FlopCounterMode sees, SDPA included."""
    from bench.speed import counted_forward_flops

    with torch.device("meta"):
        net = UNet((3, 32, 32), 0, 128, (2, 2, 2), 4, (16,), 1)
    assert net.flops_per_forward() == pytest.approx(counted_forward_flops(net, (3, 32, 32), 0, "meta"), rel=1e-9)
    assert 40e9 < net.flops_per_forward() < 45e9  # ~21 G multiply-adds, of the order of EDM's DDPM++


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = randomise(small(dropout=0.5))
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.zeros(2, dtype=torch.long)
    net.train()
    assert not torch.equal(net(x, t, t, y), net(x, t, t, y))
    net.eval()
    assert torch.equal(net(x, t, t, y), net(x, t, t, y))


@pytest.mark.parametrize("cfg, phrase", [
    (dict(preset="UNet-huge"), "Unknown U-Net preset"),
    (dict(channel_mult="1,2,2,2"), "divides by 2^3"),
    (dict(channel_mult="1,x"), "comma list of integers"),
    (dict(attn_resolutions="3"), "not among its resolutions"),
])
def test_bad_unet_configs_are_one_sentence(cfg, phrase):
    shape = (1, 6, 6) if "divides" in phrase else (1, 8, 8)
    with pytest.raises(BenchError) as e:
        build_model(ModelConfig(arch="unet", hidden=16, depth=1, **cfg), shape, 10)
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_config_validation_names_the_preset():
    from bench.config import resolve

    with pytest.raises(BenchError, match="not a unet preset; known: UNet-cifar, UNet-tiny"):
        resolve("flow_matching", "digits", ["model.arch=unet", "model.preset=DiT-B/2"])
    with pytest.raises(BenchError, match="model.arch must be mlp, dit or unet"):
        resolve("flow_matching", "digits", ["model.arch=cnn"])
    with pytest.raises(BenchError, match=r"model.dropout must be in \[0, 1\)"):
        resolve("flow_matching", "digits", ["model.arch=unet", "model.dropout=1.5"])


def test_the_cli_refuses_a_bad_preset_with_exit_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--method", "shortcut", "--set", "model.arch=unet",
                        "--set", "model.preset=UNet-giant", "--quiet"], capture_output=True, text=True, cwd=root,
                       env=dict(os.environ, PYTHONPATH=str(root), BENCH_STORE=str(tmp_path / "store")), timeout=120)
    assert r.returncode == 2 and "UNet-giant" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_presets_build():
    for name in PRESETS:
        with torch.device("meta"):
            build_model(ModelConfig(arch="unet", preset=name), (3, 32, 32), 10)
    with torch.device("meta"):
        build_model(ModelConfig(arch="unet", preset="UNet-tiny"), (1, 8, 8), 10)  # the digits
