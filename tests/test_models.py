"""The DiT's CPU training path for short sequences computes the same attention as scaled-dot-product attention."""

import torch
import torch.nn.functional as F

from bench.models import dit
from bench.models.dit import DiT


def test_short_cpu_attention_matches_sdpa(monkeypatch):
    torch.manual_seed(0)
    net = DiT((1, 8, 8), 10, hidden=64, depth=2, heads=4, patch=2)
    for p in net.parameters():  # adaLN-zero starts at zero output: randomise so attention shapes the output
        p.data.normal_(0, 0.1)
    x, t, d, y = torch.randn(32, 1, 8, 8), torch.rand(32), torch.rand(32), torch.randint(0, 11, (32,))
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(dit.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    short = net(x, t, d, y)
    assert not calls  # 16 tokens on the CPU with grad: the plain product
    with torch.no_grad():
        sampled = net(x, t, d, y)
    assert calls  # sampling keeps SDPA
    calls.clear()
    monkeypatch.setattr(dit, "SHORT_CPU_SEQUENCE", 0)
    full = net(x, t, d, y)
    assert calls  # now through SDPA
    assert short.abs().mean() > 0.1
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sampled, full.detach(), rtol=1e-5, atol=1e-5)
