"""The methods' math against answers worked out by hand (tests/analytic.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from methods.base import Batch
from methods.flow_matching import FlowMatching, FlowMatchingOptions
from methods.shortcut import Shortcut, ShortcutOptions
from tests.analytic import GaussianShortcut, GaussianVelocity, flow_map

MU, SIGMA = 1.5, 0.5


def sample_with(method, model, x0, n):
    from bench.evaluation.sampling import sample

    y = torch.zeros(len(x0), dtype=torch.long)
    return sample(method, model, x0, y, n, torch.Generator().manual_seed(0))


def test_analytic_reference_is_consistent():
    # the closed-form flow map moves N(0,1) to N(mu, sigma^2): x0 -> mu + sigma x0
    x0 = torch.randn(5, 3, dtype=torch.float64)
    out = flow_map(x0, torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64), MU, SIGMA)
    torch.testing.assert_close(out, MU + SIGMA * x0)


def test_flow_matching_one_step_lands_on_the_mean():
    fm = FlowMatching(FlowMatchingOptions(M=128), num_classes=0)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    out = sample_with(fm, GaussianVelocity(MU, SIGMA), x0, 1)
    torch.testing.assert_close(out, torch.full_like(x0, MU))  # every sample collapses onto E[x1]


def test_flow_matching_many_steps_approach_the_exact_map():
    fm = FlowMatching(FlowMatchingOptions(M=1024), num_classes=0)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    out = sample_with(fm, GaussianVelocity(MU, SIGMA), x0, 1024)
    assert (out - (MU + SIGMA * x0)).abs().max() < 5e-3


@pytest.mark.parametrize("n", [1, 2, 4])
def test_shortcut_sampler_queries_d_equal_one_over_n(n):
    sc = Shortcut(ShortcutOptions(M=128), num_classes=0)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    out = sample_with(sc, GaussianShortcut(MU, SIGMA), x0, n)
    torch.testing.assert_close(out, MU + SIGMA * x0)  # exact shortcut model -> exact map at any n


def test_shortcut_at_M_uses_the_flow_query():
    seen = []

    class Spy(nn.Module):
        def forward(self, x, t, d, y):
            seen.append(float(d[0]))
            return torch.zeros_like(x)

    for flow_d, expect in (("zero", 0.0), ("min", 1 / 8), ("apart", -1.0)):
        seen.clear()
        sc = Shortcut(ShortcutOptions(M=8, flow_d=flow_d), num_classes=0)
        sample_with(sc, Spy(), torch.zeros(2, 2), 8)
        assert seen == [expect] * 8
    seen.clear()
    sample_with(Shortcut(ShortcutOptions(M=8), num_classes=0), Spy(), torch.zeros(2, 2), 4)
    assert seen == [0.25] * 4


def test_shortcut_flow_d_apart_gives_every_flow_query_its_own_code():
    """flow_d = apart: the flow rows and the half steps of size 1/M (flow queries) are asked at d = -1,
    away from every step size, so nothing is asked at 0 or 1/M; larger half steps keep their d."""
    M, queried = 8, []

    class Spy(nn.Module):
        def forward(self, x, t, d, y):
            queried.append(d.clone())
            return torch.zeros_like(x)

    sc = Shortcut(ShortcutOptions(M=M, k=0.5, flow_d="apart"), num_classes=0)
    tg = sc.targets(Spy(), Spy(), make_batch(B=256), 0, torch.Generator().manual_seed(0))
    assert (tg.d[tg.info["row_group/flow"]] == -1).all()
    half = set(torch.cat(queried).tolist())
    assert half == {-1.0, 1 / 4, 1 / 2}  # d_big = 2/M -> flow query; d_big = 1/2, 1 -> d = 1/4, 1/2


class Affine(nn.Module):
    """f(x, t, d, y) = a x + b t + c: simple enough to build the self-consistency target by hand."""

    def __init__(self, a=0.7, b=0.3, c=-0.2):
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x, t, d, y):
        return self.a * x + self.b * t.reshape(-1, 1) + self.c


def make_batch(B=512, dim=2, seed=0, y=None):
    g = torch.Generator().manual_seed(seed)
    x1 = MU + SIGMA * torch.randn(B, dim, generator=g, dtype=torch.float64)
    x0 = torch.randn(B, dim, generator=g, dtype=torch.float64)
    yy = torch.zeros(B, dtype=torch.long) if y is None else y
    return Batch(x1=x1, x0=x0, y=yy, null_class=1)


def test_shortcut_targets_by_hand():
    M, k = 16, 0.25
    sc = Shortcut(ShortcutOptions(M=M, k=k, clip=0.0), num_classes=0)
    batch = make_batch()
    f = Affine()
    tg = sc.targets(f, f, batch, 0, torch.Generator().manual_seed(1))
    nb = int(round(512 * k))
    boot, flow = tg.info["row_group/bootstrap"], tg.info["row_group/flow"]
    assert boot.sum() == nb and flow.sum() == 512 - nb
    # flow rows: v = x1 - x0 at t on the 1/M grid, d = 0
    x0, x1 = batch.x0[nb:], batch.x1[nb:]
    t = tg.t[flow]
    assert torch.allclose(t * M, torch.round(t * M)) and (t >= 0).all() and (t < 1).all()
    torch.testing.assert_close(tg.target[flow], x1 - x0)
    torch.testing.assert_close(tg.x_t[flow], (1 - t[:, None]) * x0 + t[:, None] * x1)
    assert (tg.d[flow] == 0).all()
    # bootstrap rows: d_big in {1, 1/2, ..., 2/M}, t a multiple of d_big
    d_big, tb = tg.d[boot], tg.t[boot]
    levels = torch.log2(1 / d_big)
    assert torch.allclose(levels, torch.round(levels)) and levels.min() >= 0 and levels.max() <= math.log2(M) - 1
    assert len(levels.unique()) > 1
    assert torch.allclose(tb / d_big, torch.round(tb / d_big)) and (tb < 1).all()
    # the target by hand: two half steps of the affine field, the second at time t + d
    x, d = tg.x_t[boot], (d_big / 2)[:, None]
    tt = tb[:, None]
    s1 = 0.7 * x + 0.3 * tt - 0.2
    small = (d_big / 2 <= 1 / M + 1e-12)[:, None]
    # rows whose half step is 1/M are flow queries: same affine field (it ignores d)
    s2 = 0.7 * (x + d * s1) + 0.3 * (tt + d) - 0.2
    torch.testing.assert_close(tg.target[boot], (s1 + s2) / 2)
    assert small.any()


@pytest.mark.parametrize("levels", ["uniform", "quarter_large"])
def test_shortcut_level_shares(levels):
    """levels = uniform: each d_big in {1, ..., 2/M} gets 1/log2(M) of the self-consistency rows (paper);
    levels = quarter_large: 1/4 at d_big = 1, 1/4 at 1/2, the other 1/2 spread
    over the log2(M) - 2 smaller levels. Shares counted over 40,000 rows (standard error <= 0.0022)."""
    M, B = 128, 160_000
    sc = Shortcut(ShortcutOptions(M=M, k=0.25, levels=levels), num_classes=0)
    batch = make_batch(B=B)
    tg = sc.targets(_Zero(), _Zero(), batch, 0, torch.Generator().manual_seed(5))
    d_big = tg.d[tg.info["row_group/bootstrap"]]
    counts = torch.stack([(d_big == 2.0**-j).sum() for j in range(7)])
    assert counts.sum() == len(d_big) == 40_000  # every row on one of the 7 levels
    share = counts.double() / len(d_big)
    want = [1 / 7] * 7 if levels == "uniform" else [1 / 4, 1 / 4] + [1 / 10] * 5
    torch.testing.assert_close(share, torch.tensor(want, dtype=torch.float64), atol=0.01, rtol=0)
    tb = tg.t[tg.info["row_group/bootstrap"]]
    assert torch.allclose(tb / d_big, torch.round(tb / d_big)) and (tb < 1).all()  # t on the level's grid


def test_shortcut_quarter_large_levels_with_few_levels():
    """M = 4 has two levels (d_big = 1 and 1/2): quarter_large and uniform coincide; M = 2 has only d_big = 1;
    M = 1 has no self-consistency rows: every row is a flow-matching row."""
    for M, want in ((4, [0.5, 0.5]), (2, [1.0])):
        sc = Shortcut(ShortcutOptions(M=M, levels="quarter_large"), num_classes=0)
        torch.testing.assert_close(sc.level_probs(), torch.tensor(want))
    assert ShortcutOptions(levels="large").levels == "quarter_large"  # the old name, in stored configs
    for levels in ("uniform", "quarter_large", "authors"):
        sc = Shortcut(ShortcutOptions(M=1, levels=levels), num_classes=0)
        batch = make_batch(B=64)
        tg = sc.targets(_Zero(), _Zero(), batch, 0, torch.Generator().manual_seed(0))
        assert (tg.d == 0).all() and not tg.info["row_group/bootstrap"].any()
        torch.testing.assert_close(tg.target, batch.x1 - batch.x0)


def test_shortcut_target_of_the_exact_model_is_the_exact_shortcut():
    M = 32
    sc = Shortcut(ShortcutOptions(M=M, k=0.5, clip=0.0), num_classes=0)
    exact = GaussianShortcut(MU, SIGMA)
    batch = make_batch()
    tg = sc.targets(exact, exact, batch, 0, torch.Generator().manual_seed(3))
    boot = tg.info["row_group/bootstrap"]
    want = exact(tg.x_t[boot], tg.t[boot], tg.d[boot], tg.y[boot])
    coarse = tg.d[boot] > 2 / M + 1e-9
    assert coarse.any() and (~coarse).any()
    # two exact half steps are one exact full step
    torch.testing.assert_close(tg.target[boot][coarse], want[coarse])
    # d_big = 2/M: the half steps are flow queries (d = 0), i.e. two Euler steps of the velocity
    v = GaussianVelocity(MU, SIGMA)
    x, t = tg.x_t[boot][~coarse], tg.t[boot][~coarse]
    d = torch.full_like(t, 1 / M)
    s1 = v(x, t, d, None)
    s2 = v(x + s1 / M, t + 1 / M, d, None)
    torch.testing.assert_close(tg.target[boot][~coarse], (s1 + s2) / 2)


def test_shortcut_uses_ema_for_bootstrap_and_clips():
    sc = Shortcut(ShortcutOptions(M=8, k=0.5, clip=0.1), num_classes=0)
    batch = make_batch(B=64)
    big = Affine(a=0.0, b=0.0, c=50.0)
    zero = Affine(a=0.0, b=0.0, c=0.0)
    tg = sc.targets(zero, big, batch, 0, torch.Generator().manual_seed(0))
    boot = tg.info["row_group/bootstrap"]
    assert torch.allclose(tg.target[boot], torch.full_like(tg.target[boot], 0.1))  # EMA's 50, clipped
    sc2 = Shortcut(ShortcutOptions(M=8, k=0.5, clip=0.1, bootstrap_ema=False), num_classes=0)
    tg2 = sc2.targets(zero, big, batch, 0, torch.Generator().manual_seed(0))
    assert (tg2.target[tg2.info["row_group/bootstrap"]] == 0).all()


class LabelField(nn.Module):
    """v = 1 for class 0, 3 for the null class (1): guided v_u + w (v_c - v_u) = 3 - 2w."""

    def forward(self, x, t, d, y):
        return torch.where(y[:, None] == 0, 1.0, 3.0).to(x.dtype).expand_as(x)


def test_shortcut_bootstrap_cfg_only_on_flow_queries():
    M, w = 8, 1.5
    sc = Shortcut(ShortcutOptions(M=M, k=1 / 2, clip=0.0, cfg_scale=w), num_classes=1)
    batch = make_batch(B=256)
    tg = sc.targets(LabelField(), LabelField(), batch, 0, torch.Generator().manual_seed(0))
    boot = tg.info["row_group/bootstrap"]
    finest = boot & (tg.d <= 2 / M + 1e-12)
    coarser = boot & (tg.d > 2 / M + 1e-12)
    assert finest.any() and coarser.any()
    torch.testing.assert_close(tg.target[finest], torch.full_like(tg.target[finest], 3 - 2 * w))
    torch.testing.assert_close(tg.target[coarser], torch.full_like(tg.target[coarser], 1.0))


def test_cfg_doubles_network_evaluations():
    from bench.evaluation.sampling import count_nfe

    x0, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    for w, factor in ((1.0, 1), (2.0, 2)):
        fm = FlowMatching(FlowMatchingOptions(M=8, cfg_scale=w), num_classes=1)
        assert count_nfe(fm, LabelField(), x0, y, 4) == 4 * factor
    sc = Shortcut(ShortcutOptions(M=8, cfg_scale=2.0), num_classes=1)
    assert count_nfe(sc, LabelField(), x0, y, 4) == 4  # no CFG below M
    assert count_nfe(sc, LabelField(), x0, y, 8) == 16  # CFG at M


def test_flow_matching_target_and_grid():
    fm = FlowMatching(FlowMatchingOptions(M=8), num_classes=0)
    batch = make_batch(B=256)
    tg = fm.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(tg.target, batch.x1 - batch.x0)
    assert set((tg.t * 8).round().long().tolist()) == set(range(8))
    assert (tg.d == 0).all()


@pytest.mark.parametrize("arch", ["mlp", "dit"])
def test_d_scale_sets_the_step_size_embedding(arch):
    """model.d_scale reaches the backbone: the sinusoid of d (not of t) changes with it, and d = 0
    (the flow query) embeds the same at every scale."""
    from bench.config import ModelConfig
    from bench.models import build_model
    from bench.models.embed import sinusoidal

    shape = (2,) if arch == "mlp" else (1, 4, 4)
    nets = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        nets.append(build_model(ModelConfig(arch=arch, hidden=32, depth=2, heads=2, patch=2, d_scale=scale), shape, 3))
    if arch == "dit":  # adaLN-zero starts at zero output: perturb so the conditioning shows
        for net in nets:
            torch.manual_seed(1)
            for p in net.parameters():
                p.data += 0.1 * torch.randn_like(p)
    x, t, y = torch.randn(5, *shape), torch.rand(5), torch.tensor([0, 1, 2, 3, 0])
    d = torch.full((5,), 0.25)
    with torch.no_grad():
        assert not torch.allclose(nets[0](x, t, d, y), nets[1](x, t, d, y), atol=1e-4)
        zero = torch.zeros(5)
        torch.testing.assert_close(nets[0](x, t, zero, y), nets[1](x, t, zero, y))
    v = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(sinusoidal(v, 8, scale=2.0), sinusoidal(2 * v, 8, scale=1.0))


def test_shortcut_bootstrap_weight_weighs_the_self_consistency_rows():
    """bootstrap_weight = 1 (the paper) is the plain mean; w != 1 puts w on the k B bootstrap rows,
    and the trainer's loss is the weighted mean of the per-row errors."""
    from bench.config import resolve
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    batch = make_batch(B=16)
    plain = Shortcut(ShortcutOptions(M=8, k=0.25), num_classes=0)
    assert plain.targets(_Zero(), _Zero(), batch, 0, torch.Generator().manual_seed(0)).weight is None
    weighted = Shortcut(ShortcutOptions(M=8, k=0.25, bootstrap_weight=4.0), num_classes=0)
    tg = weighted.targets(_Zero(), _Zero(), batch, 0, torch.Generator().manual_seed(0))
    boot = tg.info["row_group/bootstrap"]
    assert int(boot.sum()) == 4 and torch.equal(tg.weight, torch.where(boot, 4.0, 1.0).double())

    cfg = resolve("shortcut", "smoke", ["train.steps=1", "bootstrap_weight=4", "train.batch_size=32", "model.hidden=16"])
    p = prepare(cfg, progress=False)
    loss, parts = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False).train_step()
    nb = p.method.num_bootstrap_rows(32)
    expected = (4.0 * nb * parts["loss_bootstrap"] + (32 - nb) * parts["loss_flow"]) / 32
    torch.testing.assert_close(loss, expected)


class _Zero(nn.Module):
    def forward(self, x, t, d, y):
        return torch.zeros_like(x)
