"""The diffusion baseline (methods/diffusion.py) against answers worked out by hand.

Gaussian data x1 ~ N(mu, sd^2 I), noise x0 ~ N(0, I), x_t = a x1 + b x0 (v: a = sin(pi t / 2),
b = cos(pi t / 2); eps: a = sqrt(abar_k), b = sqrt(1 - abar_k)). Then x_t ~ N(a mu, s^2), s^2 = a^2 sd^2 + b^2,
and the exact (regression-optimal) predictions are linear in x:
  E[x0 | x] = b (x - a mu) / s^2,   E[x1 | x] = mu + a sd^2 (x - a mu) / s^2,   w = b E[x1|x] - a E[x0|x].
DDIM moves x = a mu + r z to x' = a' E[x1|x] + b' E[x0|x] = a' mu + r (a a' sd^2 + b b') / s^2 z: the mean
stays on the path at every n, and the spread shrinks by that factor per step (Cauchy-Schwarz: the
factor is at most s' / s, equal only as the step goes to 0). So with the exact model every n yields
a Gaussian with mean exactly mu; one step from t = 0 (a = 0) returns mu itself; and the spread
tends to sd as n grows (DDIM is a first-order solver of the probability-flow ODE).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.evaluation.sampling import count_nfe, sample
from methods.base import Batch
from methods.diffusion import Diffusion, DiffusionOptions

MU, SD = 1.5, 0.5
T = 1024


def abar_by_hand(T=T, start=1e-4, end=0.02):
    """abar_0 = 1, abar_k = prod_{i <= k} (1 - beta_i) with beta linear from start to end (numpy, float64)."""
    return np.concatenate([[1.0], np.cumprod(1.0 - np.linspace(start, end, T))])


def coeffs(param, t):
    """(a, b) of x_t = a x1 + b x0 at sampler time t (t = 1 - k / T for eps), float64."""
    if param == "v":
        return math.sin(math.pi * t / 2), math.cos(math.pi * t / 2)
    k = round(T * (1 - t))
    ab = abar_by_hand()[k]
    return math.sqrt(ab), math.sqrt(1 - ab)


class ExactModel(nn.Module):
    """The exact prediction of the method's target for Gaussian data (float64 inputs)."""

    def __init__(self, param, mu=MU, sd=SD):
        super().__init__()
        self.param, self.mu, self.sd = param, mu, sd

    def forward(self, x, t, d, y):
        t = t.double()
        if self.param == "v":
            a, b = torch.sin(math.pi * t / 2), torch.cos(math.pi * t / 2)
        else:
            ab = torch.from_numpy(abar_by_hand())[(T * (1 - t)).round().long()]
            a, b = ab.sqrt(), (1 - ab).sqrt()
        a, b = a[:, None], b[:, None]
        s2 = a * a * self.sd**2 + b * b
        eps = b * (x - a * self.mu) / s2
        x1 = self.mu + a * self.sd**2 * (x - a * self.mu) / s2
        return eps if self.param == "eps" else b * x1 - a * eps


def method(param, M=1024, **kw):
    return Diffusion(DiffusionOptions(M=M, parameterization=param, **kw), num_classes=0)


def run_sampler(m, model, x0, n):
    return sample(m, model, x0, torch.zeros(len(x0), dtype=torch.long), n, torch.Generator().manual_seed(0))


def law_by_hand(param, n, mean0=0.0, spread0=1.0):
    """(mean, spread) of DDIM's output with the exact model from x ~ N(mean0, spread0^2) at t = 0."""
    m, r = mean0, spread0
    for i in range(n):
        (a, b), (a2, b2) = coeffs(param, i / n), coeffs(param, (i + 1) / n)
        s2 = a * a * SD**2 + b * b
        factor = (a * a2 * SD**2 + b * b2) / s2
        m, r = a2 * MU + factor * (m - a * MU), factor * r
    return m, r


def test_v_targets_by_hand():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    tg = method("v", M=8).targets(None, None, Batch(x1=x1, x0=x0, y=torch.zeros(64, dtype=torch.long), null_class=0), 0, g)
    assert torch.all(tg.d == 0)
    assert torch.allclose(tg.t * 8, (tg.t * 8).round()) and tg.t.min() >= 0 and tg.t.max() <= 7 / 8
    assert len(set(tg.t.tolist())) > 4
    for i in range(64):
        a, b = coeffs("v", float(tg.t[i]))
        # t is float32 (the shared grid draw): its angle is exact to about 1e-7
        torch.testing.assert_close(tg.x_t[i], a * x1[i] + b * x0[i], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tg.target[i], b * x1[i] - a * x0[i], rtol=1e-6, atol=1e-6)


def test_eps_targets_by_hand():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(256, 2, dtype=torch.float64), torch.randn(256, 2, dtype=torch.float64)
    tg = method("eps", M=128).targets(None, None, Batch(x1=x1, x0=x0, y=torch.zeros(256, dtype=torch.long), null_class=0), 0, g)
    k = ((1 - tg.t) * T).round().long()
    torch.testing.assert_close(k.double(), (1 - tg.t) * T)  # t = 1 - k / T exactly
    assert k.min() >= 1 and k.max() <= T and len(set(k.tolist())) > 100
    ab = torch.from_numpy(abar_by_hand())[k]
    torch.testing.assert_close(tg.x_t, ab.sqrt()[:, None] * x1 + (1 - ab).sqrt()[:, None] * x0)
    torch.testing.assert_close(tg.target, x0)
    assert abar_by_hand()[T] < 1e-4  # the schedule ends close to pure noise (about 4e-5)


def test_v_one_step_from_noise_returns_the_mean():
    x0 = torch.randn(500, 2, dtype=torch.float64)
    out = run_sampler(method("v"), ExactModel("v"), x0, 1)
    torch.testing.assert_close(out, torch.full_like(out, MU))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 1024])
def test_v_exact_model_gives_a_gaussian_with_the_exact_mean_and_the_spread_by_hand(n):
    m = method("v")
    x0 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    out = run_sampler(m, ExactModel("v"), x0, n)
    mean, spread = law_by_hand("v", n)
    torch.testing.assert_close(out, mean + spread * x0)  # affine in x0: the law is N(mean, spread^2)
    assert abs(mean - MU) < 1e-12
    assert spread <= SD + 1e-12


def test_v_spread_tends_to_the_data_spread():
    spreads = [law_by_hand("v", n)[1] for n in (1, 2, 4, 8, 128, 1024)]
    assert spreads[0] < 1e-12 and all(a < b for a, b in zip(spreads, spreads[1:]))
    assert abs(spreads[-1] - SD) < 1e-3 * 2  # O(1/n): 0.49925 at n = 1024
    x0 = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = run_sampler(method("v", M=128), ExactModel("v"), x0, 128)
    assert abs(out.mean().item() - MU) < 0.01 and abs(out.std().item() - SD) < 0.015


def test_eps_trailing_ddim_with_the_exact_model():
    """Trailing spacing: n steps visit k = T, T - T/n, ..., T/n and land on abar_0 = 1. The sampler starts
    from N(0, I) while the true x_T is N(sqrt(abar_T) mu, ...): the law by hand starts there too."""
    x0 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    for n in (1, 2, 8, 128):
        out = run_sampler(method("eps"), ExactModel("eps"), x0, n)
        mean, spread = law_by_hand("eps", n)
        torch.testing.assert_close(out, mean + spread * x0)
    one = run_sampler(method("eps"), ExactModel("eps"), x0, 1)
    assert (one - MU).abs().max() < 0.01 * 3  # one step from k = T: the mean, up to sqrt(abar_T) ~ 0.006
    mean, spread = law_by_hand("eps", 1024)
    assert abs(mean - MU) < 0.01 and abs(spread - SD) < 2e-3  # the start's offset sqrt(abar_T) mu ~ 0.009 stays


def test_eps_sampler_queries_the_trailing_timesteps():
    seen = []

    class Spy(nn.Module):
        def forward(self, x, t, d, y):
            seen.append(round(T * (1 - float(t[0]))))
            assert torch.all(d == 0)
            return torch.zeros_like(x)

    run_sampler(method("eps", M=8), Spy(), torch.randn(3, 2, dtype=torch.float64), 4)
    assert seen == [1024, 768, 512, 256]
    # with a zero eps-prediction one step is x / sqrt(abar_T) (x1_hat, then abar_0 = 1)
    x = torch.randn(3, 2, dtype=torch.float64)
    out = run_sampler(method("eps", M=8), Spy(), x, 1)
    torch.testing.assert_close(out, x / math.sqrt(abar_by_hand()[T]))


def test_cfg_doubles_network_evaluations_and_options_are_checked():
    from tests.test_baselines import TinyNet

    m = Diffusion(DiffusionOptions(M=8, cfg_scale=2.0), num_classes=3)
    assert count_nfe(m, TinyNet(num_classes=3), torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 4) == 8
    for bad in (dict(parameterization="x0"), dict(time_sampling="log"),
                dict(parameterization="eps", num_timesteps=1020), dict(parameterization="eps", beta_end=1.5)):
        with pytest.raises(BenchError):
            DiffusionOptions(M=8, **bad).validate()


@pytest.mark.slow
def test_diffusion_trains_and_collapses_at_one_step_on_smoke():
    """End to end on the toy: at 1 step the samples pile up near the data mean (the origin for eight
    Gaussians on a circle), at M steps they reach every mode."""
    from bench.config import resolve
    from bench.train.run import execute

    cfg = resolve("diffusion", "smoke", ["train.steps=1500", "method.M=16", "eval.steps=1,16", "eval.num_samples=500",
                                         "eval.batch_size=500", "train.checkpoint_every=1500"])
    out = execute(cfg, "t", progress=False, echo=lambda *a: None)
    one, many = out.results[1], out.results[16]
    assert one["modes_hit"] == 0 and many["modes_hit"] == 8  # 1 step: all samples near the mean, off every mode
    assert one["fid"] > 10 * many["fid"]


def test_eps_evaluates_in_fp32_whatever_eval_precision_says():
    """eps divides by sqrt(abar_T) ~ 0.006 at the first trailing step: bf16 (or TF32) rounding of the
    output would be amplified ~178x at n = 1, so eps asks for fp32; v keeps what eval.precision resolved to."""
    from bench.config import resolve
    from bench.train.run import prepare, run_params

    for param, want in (("eps", "fp32"), ("v", "bf16")):
        p = prepare(resolve("diffusion", "smoke", [f"parameterization={param}", "eval.precision=bf16"]), progress=False)
        assert p.evaluator.precision == want and run_params(p)["eval.sampling_precision"] == want
