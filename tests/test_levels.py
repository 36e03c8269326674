"""Issue 24: per-level losses of a method's loss ladder, the paired distance to the M-step samples,
the divergence warning and the level pictures. References are computed here, independently."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import resolve
from bench.evaluation.levels import DivergenceWatch
from methods.base import Batch, LossLadder, Method, Targets, interpolate
from methods.shortcut import Shortcut, ShortcutOptions

ROOT = Path(__file__).resolve().parent.parent


class _Lin(nn.Module):
    """A fixed, nonzero network: the self-consistency targets are not all zero."""

    def forward(self, x, t, d, y):
        return 0.5 * x + (t + 2 * d).reshape(-1, *([1] * (x.dim() - 1)))


def _batch(B: int, shape=(2,), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x1, x0 = torch.randn(B, *shape, generator=g), torch.randn(B, *shape, generator=g)
    y = torch.full((B,), 0, dtype=torch.long)
    return Batch(x1=x1, x0=x0, y=y, null_class=0)


@pytest.mark.parametrize("M", [8, 32])
@pytest.mark.parametrize("levels", ["uniform", "authors", "quarter_large"])
@pytest.mark.parametrize("flow_d", ["zero", "min"])
def test_shortcut_level_groups_hold_the_rows_of_their_d(M, levels, flow_d):
    """sc_level_j holds exactly the self-consistency rows queried at d = 2^-j (read off d here, not
    off the method's draw); they and the flow rows partition the batch; bootstrap is their union."""
    m = Shortcut(ShortcutOptions(M=M, k=0.5, levels=levels, flow_d=flow_d), num_classes=0)
    tg = m.targets(_Lin(), _Lin(), _batch(256), 0, torch.Generator().manual_seed(1))
    L = int(math.log2(M))
    flow = tg.info["row_group/flow"]
    flow_value = 0.0 if flow_d == "zero" else 1.0 / M
    assert torch.all(tg.d[flow] == flow_value)
    cover = flow.int().clone()
    for j in range(L):
        g = tg.info[f"row_group/sc_level_{j}"]
        expected = ~flow & torch.isclose(tg.d, torch.full_like(tg.d, 2.0**-j))
        assert torch.equal(g, expected), j
        assert torch.all(tg.t[g] * 2**j == torch.round(tg.t[g] * 2**j))  # t on multiples of d
        cover += g.int()
    assert torch.all(cover == 1)
    union = torch.stack([tg.info[f"row_group/sc_level_{j}"] for j in range(L)]).any(0)
    assert torch.equal(union, tg.info["row_group/bootstrap"])
    if levels == "authors":  # the fixed allocation: 128 rows over L levels, the leftover at d = 1
        counts = [int(tg.info[f"row_group/sc_level_{j}"].sum()) for j in range(L)]
        assert counts == [128 // L + 128 % L] + [128 // L] * (L - 1)
    ladder = m.loss_ladder()
    assert ladder.groups == tuple(f"sc_level_{j}" for j in range(L)) + ("flow",) and ladder.base == "flow"
    assert ladder.labels[0] == "d = 1" and ladder.labels[L - 1] == f"d = 1/{M // 2}"


def test_per_level_losses_sum_back_to_the_trainers_loss():
    """One training step: the loss, each level's loss and the flow loss recomputed from the targets with
    a copy of the weights before the step; the row-weighted sum of the parts (weight 4 on the
    self-consistency rows) is the loss."""
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    B, M, w = 64, 8, 4.0
    cfg = resolve("shortcut", "smoke", ["train.steps=1", f"bootstrap_weight={w:g}", f"train.batch_size={B}",
                                        "model.hidden=16", f"M={M}", "levels=authors", "k=0.5"])
    p = prepare(cfg, progress=False)
    trainer = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
    with torch.no_grad():  # the output layer starts at zero: give the network something to get wrong
        for prm in trainer.model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
        trainer.ema.load_state_dict(trainer.model.state_dict())
    before = copy.deepcopy(trainer.model)
    seen = {}
    targets = p.method.targets

    def spy(*a, **k):
        seen["tg"] = targets(*a, **k)
        return seen["tg"]

    p.method.targets = spy
    loss, parts = trainer.train_step()
    tg = seen["tg"]
    with torch.no_grad():
        err = (before(tg.x_t, tg.t, tg.d, tg.y).double() - tg.target.double()) ** 2
    per_row = err.reshape(B, -1).mean(1)
    sc = tg.d > 0  # flow_d zero: the flow rows are the d = 0 ones
    weights = torch.where(sc, w, 1.0).double()
    torch.testing.assert_close(loss.double(), (weights * per_row).mean(), rtol=1e-5, atol=1e-7)
    total = (~sc).sum() * parts["loss_flow"].double()
    for j in range(3):
        rows = sc & torch.isclose(tg.d, torch.full_like(tg.d, 2.0**-j))
        torch.testing.assert_close(parts[f"loss_sc_level_{j}"].double(), per_row[rows].mean(), rtol=1e-5, atol=1e-7)
        total = total + w * rows.sum() * parts[f"loss_sc_level_{j}"].double()
    torch.testing.assert_close(total / B, loss.double(), rtol=1e-5, atol=1e-7)


def test_a_group_without_rows_is_skipped_in_the_logged_mean():
    """Steps where a group had no rows do not pull its logged mean towards 0."""
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    cfg = resolve("shortcut", "smoke", ["train.steps=4", "train.log_every=4", "train.batch_size=8", "model.hidden=16", "M=8"])
    p = prepare(cfg, progress=False)
    logged = []
    trainer = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False, log=lambda m, s: logged.append(m))
    values = iter([torch.tensor(2.0), torch.tensor(float("nan")), torch.tensor(4.0), torch.tensor(float("nan"))])
    step = trainer.train_step

    def fake():
        loss, parts = step()
        parts["loss_sc_level_0"] = next(values)
        return loss, parts

    trainer.train_step = fake
    trainer.fit()
    assert logged[-1]["train/loss_sc_level_0"] == pytest.approx(3.0)


# -- the paired distance -------------------------------------------------------------------------
def test_paired_to_M_against_numpy_on_a_tiny_run():
    """Flow matching trained 300 steps on the eight Gaussians, evaluated at n = 1, 2, 4 = M: paired_to_M
    is 0 at M, positive below, and equals the mean squared gap per dimension of an Euler integration
    written here from the same noise (the evaluation's seed, one batch), and paired_to_2n the gap to 2n
    steps; sampling at M again gives
    the same samples (the sampler is deterministic: the same noise at every n)."""
    from bench.evaluation.evaluate import paired_distances
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    N, M = 300, 4
    cfg = resolve("flow_matching", "smoke", ["train.steps=300", "model.hidden=32", f"M={M}", f"eval.num_samples={N}",
                                             f"eval.batch_size={N}"])
    p = prepare(cfg, progress=False)
    trainer = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
    trainer.fit()
    ema = trainer.model.eval()  # the live weights: 300 steps leave the EMA near its initial straight field
    results = {r.num_sampling_steps: r for r in p.evaluator.evaluate_steps(p.method, ema, [1, 2, 4], M)}
    assert list(results) == [4, 2, 1]  # M first: its samples are the anchor

    g = torch.Generator().manual_seed(p.evaluator.seed)  # one batch: the evaluation's own seed
    x0 = torch.randn(N, 2, generator=g).numpy().astype(np.float64)

    def euler(n):
        x = x0.copy()
        for i in range(n):
            xt = torch.from_numpy(x).float()
            with torch.no_grad():
                v = ema(xt, torch.full((N,), i / n), torch.zeros(N), torch.zeros(N, dtype=torch.long)).double().numpy()
            x = x + v / n
        return x

    ref = {n: euler(n) for n in (1, 2, 4)}
    assert results[4].metrics["paired_to_M"] == 0.0
    for n in (1, 2):
        expected = float(np.mean((ref[n] - ref[4]) ** 2))
        assert expected > 1e-4
        assert results[n].metrics["paired_to_M"] == pytest.approx(expected, rel=1e-4)
        assert results[n].metrics["paired_to_2n"] == pytest.approx(float(np.mean((ref[n] - ref[2 * n]) ** 2)), rel=1e-4)
    assert "paired_to_2n" not in results[4].metrics
    again = p.evaluator.evaluate(p.method, ema, M)
    assert paired_distances(again.samples, results[4].samples)["paired_to_M"] == 0.0


def test_paired_distances_in_feature_space():
    from bench.evaluation.evaluate import paired_distances

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 1, 8, 8)), rng.normal(size=(40, 1, 8, 8))
    fa, fb = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))
    out = paired_distances(a, b, torch.from_numpy(fa), torch.from_numpy(fb))
    assert out["paired_to_M"] == pytest.approx(np.mean((a[:40] - b) ** 2))
    assert out["paired_to_M_features"] == pytest.approx(np.mean((fa - fb) ** 2))


# -- the warning ---------------------------------------------------------------------------------
LADDER = LossLadder(("sc_level_0", "sc_level_1", "flow"), ("d = 1", "d = 1/2", "flow"), "flow")


def _feed(watch, level0, level1, flow):
    fired = []
    for i, (a, b, f) in enumerate(zip(level0, level1, flow)):
        for g in watch.update({"train/loss_sc_level_0": a, "train/loss_sc_level_1": b, "train/loss_flow": f}, 50 * (i + 1)):
            fired.append((g, 50 * (i + 1)))
    return fired


def test_the_warning_fires_on_a_diverging_level_and_not_on_a_healthy_run():
    rng = np.random.default_rng(0)
    n = 60
    flow = list(2.0 * np.exp(-np.arange(n) / 30) + 1.0 + 0.01 * rng.normal(size=n))  # falls throughout
    # healthy: every level rises at first (the targets grow from the initial EMA), then settles with noise
    rise = [0.02 * 1.6**i for i in range(8)]  # 8 rising points: more than `points`, before the level is armed
    healthy = rise + list(0.3 * np.exp(-np.arange(n - 8) / 20) + 0.1 + 0.01 * rng.normal(size=n - 8))
    assert _feed(DivergenceWatch(LADDER, 5), healthy, healthy, flow) == []
    # diverging: level 1 settles, then climbs 8 % per log point from point 30 while the flow still falls
    diverging = list(healthy[:30]) + [healthy[29] * 1.08**i for i in range(1, n - 29)]
    fired = _feed(DivergenceWatch(LADDER, 5), healthy, diverging, flow)
    assert fired == [("sc_level_1", 50 * 35)]  # named once, at the fifth rise
    # the same climb while the flow loss rises too is no divergence of the chain
    rising_flow = flow[:30] + [flow[29] * 1.01**i for i in range(1, n - 29)]
    assert _feed(DivergenceWatch(LADDER, 5), healthy, diverging, rising_flow) == []
    assert _feed(DivergenceWatch(LADDER, 0), healthy, diverging, flow) == []  # train.divergence_points = 0: off
    # noisy small rises (under DIVERGENCE_MIN_RISE in all) are log-point noise
    wobble = list(healthy[:30]) + [healthy[29] * 1.01**i for i in range(1, n - 29)]
    assert _feed(DivergenceWatch(LADDER, 5), healthy, wobble, flow) == []


class _DivergingStub(Method):
    """Half the rows 'level' (d = 1), half 'flow' (d = 0), targets v plus fresh noise whose size the
    step sets: the flow loss falls all along; the level's rises, falls (arming the watch), then climbs."""

    name = "diverging_stub"

    def targets(self, model, ema, batch, step, generator):
        B = batch.x1.shape[0]
        t = torch.rand(B, generator=generator)
        x_t = interpolate(batch.x0, batch.x1, t)
        noise = torch.randn(batch.x1.shape, generator=generator)
        flow_size = 2.0 * (1 - step / self.train_steps)
        level_size = 3.0 if step < 100 else 0.3 if step < 200 else 0.3 + 0.01 * (step - 200)
        lvl = torch.arange(B) < B // 2
        size = torch.where(lvl, level_size, flow_size).reshape(-1, 1)
        return Targets(x_t=x_t, t=t, d=lvl.float(), y=batch.y, target=batch.x1 - batch.x0 + size * noise,
                       info={"row_group/level": lvl, "row_group/flow": ~lvl})

    def loss_ladder(self):
        return LossLadder(("level", "flow"), ("level d = 1", "flow"), "flow", "stub")

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        return x + model(x, torch.full((len(x),), t), torch.zeros(len(x)), y) / num_sampling_steps


def test_a_diverging_method_stub_warns_once_tags_the_run_and_keeps_training(monkeypatch):
    from bench.train import run as bench_run
    from bench.store.tracking import client
    from methods import METHODS

    monkeypatch.setitem(METHODS, _DivergingStub.name, _DivergingStub)
    cfg = resolve(_DivergingStub.name, "smoke", ["train.steps=600", "train.log_every=20", "train.checkpoint_every=600",
                                                 "model.hidden=16", "M=2", "eval.num_samples=200", "eval.batch_size=200"])
    lines = []
    out = bench_run.execute(cfg, "stub", progress=False, echo=lines.append)
    warnings = [s for s in lines if s.startswith("warning: level")]
    assert len(warnings) == 1 and "level d = 1" in warnings[0] and "\n" not in warnings[0]
    run = client().get_run(out.run_id)
    assert run.data.tags["train.diverging_levels"].startswith("level d = 1 @ ")
    assert run.info.status == "FINISHED"
    assert max(m.step for m in client().get_metric_history(out.run_id, "train/loss")) == 600
    arts = [a.path for a in client().list_artifacts(out.run_id, "plots")]
    assert "plots/loss_levels.png" in arts
    assert out.results[1]["paired_to_M"] > 0 and out.results[2]["paired_to_M"] == 0.0
    for key in ("fid", "paired_to_M"):  # logged n = M first: every n reaches the store all the same
        assert sorted(m.step for m in client().get_metric_history(out.run_id, key)) == [1, 2], key


def test_the_harness_outside_methods_never_names_a_level():
    """No module of the harness (trainer, evaluation, levels pictures, report, ...) names a method or its levels: they read row groups and the ladder."""
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert {"trainer.py", "levels.py", "evaluate.py", "run.py", "sampling.py"} <= {f.name for f in files}
    for path in files:
        name, text = str(path.relative_to(ROOT)), path.read_text()
        for word in ("sc_level", "mean_level", "loss_flow", "loss_bootstrap", "row_group/flow", '"shortcut"',
                     '"meanflow"', '"live_reflow"', "method_name =="):
            assert word not in text, (name, word)
