"""eval.forward_rows: the evaluation calls the network on a few rows at a time (auto: 256 on a CPU),
which changes how fast it samples and nothing it samples: the same noise, the same batches, and on a
CPU bitwise the same output for every backbone, with and without CFG's doubled rows."""

from __future__ import annotations

import torch

from bench.config import ModelConfig, resolve
from bench.evaluation.sampling import CPU_FORWARD_ROWS, EvalModel, generate, resolve_forward_rows
from bench.models import build_model
from methods import get_method


def test_auto_splits_on_a_cpu_only():
    assert resolve_forward_rows(0, torch.device("cpu")) == CPU_FORWARD_ROWS
    assert resolve_forward_rows(0, torch.device("cuda")) == 0
    assert resolve_forward_rows(100, torch.device("cuda")) == 100


def test_calls_hold_at_most_forward_rows_rows():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, d, y):
            seen.append((len(x), len(t), float(d)))
            return x * 2

    m = EvalModel(Spy(), "fp32", torch.device("cpu"), forward_rows=64)
    x, t = torch.randn(150, 3), torch.rand(150)
    out = m(x, t, torch.tensor(0.5), torch.zeros(150, dtype=torch.long))  # d one value for all rows: kept whole
    assert [s[0] for s in seen] == [64, 64, 22] and [s[1] for s in seen] == [64, 64, 22]
    assert torch.equal(out, x * 2)


def _samples(method_name: str, arch: str, forward_rows: int, cfg_scale: float | None = None):
    sets = [f"model.arch={arch}", "model.hidden=32", "model.depth=2"] + ([f"method.cfg_scale={cfg_scale}"] if cfg_scale else [])
    if arch == "unet":
        sets = ["model.arch=unet", "model.hidden=16"]
    cfg = resolve(method_name, "digits", sets)
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8), 10).eval()
    method = get_method(method_name)(cfg.method, 10, None, train_steps=10)
    em = EvalModel(model, "fp32", torch.device("cpu"), forward_rows=forward_rows)
    probs = torch.full((10,), 0.1)
    return torch.cat([x for x, _ in generate(method, em, (1, 8, 8), 10, probs, 600, 600, 4, 7, torch.device("cpu"))])


def test_split_calls_sample_bitwise_the_same():
    for method_name, arch, w in (("shortcut", "dit", None), ("flow_matching", "dit", 1.5), ("flow_matching", "unet", None)):
        whole, split = _samples(method_name, arch, 0, w), _samples(method_name, arch, 128, w)
        assert torch.equal(whole, split), (method_name, arch, w)
