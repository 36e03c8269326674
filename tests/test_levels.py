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
from bench.evaluation.levels import FailureRule, LevelWindows
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


# -- the failure rule ----------------------------------------------------------------------------
LADDER = LossLadder(("sc_level_0", "sc_level_1", "flow"), ("d = 1", "d = 1/2", "flow"), "flow")


def _feed(rule, loss0, t2_0, loss1, t2_1):
    """The rule fed log points every 50 steps; returns (group, step) when it fires."""
    for i, (a, b, c, d) in enumerate(zip(loss0, t2_0, loss1, t2_1)):
        g = rule.update({"train/loss_sc_level_0": a, "train/target2_sc_level_0": b, "train/loss_sc_level_1": c,
                         "train/target2_sc_level_1": d, "train/loss_flow": 0.3, "train/target2_flow": 2.0}, 50 * (i + 1))
        if g:
            return g, 50 * (i + 1)
    return None


def _settling(n, rng, scale=1.2, start=8):
    """A target scale that sits near zero for `start` points (smoke's does), then grows tenfold, then settles."""
    grow = np.concatenate([np.full(start, 0.005), np.geomspace(0.005, scale, 12)])
    return np.concatenate([grow, scale * (1 + 0.03 * rng.normal(size=n - len(grow)))])


def test_the_failure_rule_passes_a_healthy_run_and_names_a_diverging_level_at_the_right_step():
    rng = np.random.default_rng(0)
    n = 80
    t2 = _settling(n, rng)
    # healthy: the loss is 0.7 % of the target's energy with 30 % log-point noise, and it rises legitimately
    # while the targets grow (the raw-loss warning this replaces fired on that)
    healthy = 0.007 * t2 * (1 + 0.3 * np.abs(rng.normal(size=n)))
    assert _feed(FailureRule(LADDER, 5), healthy, t2, healthy, t2) is None
    # level d = 1/2 diverges from point 50 on: its loss climbs 15 % per log point against a settled target
    diverging = healthy.copy()
    diverging[50:] = healthy[49] * 1.15 ** np.arange(1, n - 49)
    rule = FailureRule(LADDER, 5)
    fired = _feed(rule, healthy, t2, diverging, t2)
    # the step, retyped: the first point after arming where the 5-point windowed ratio reaches 4x its low
    armed, low, expect = None, None, None
    for i in range(n):
        w = [t2[max(0, i - 5 * (k + 1) + 1): i - 5 * k + 1].sum() for k in (2, 1, 0)]
        if armed is None:
            if i + 1 >= 15 and all(abs(b / a - 1) <= 0.1 for a, b in zip(w, w[1:])):
                armed = i
            continue
        r = diverging[i - 4: i + 1].sum() / t2[i - 4: i + 1].sum()
        low = r if low is None else min(low, r)
        if r >= 4 * low:
            expect = 50 * (i + 1)
            break
    assert armed is not None and fired == ("sc_level_1", expect) and expect > 50 * 50
    assert "level d = 1/2 failing at step" in rule.message() and "x its lowest" in rule.message()
    assert _feed(FailureRule(LADDER, 0), healthy, t2, diverging, t2) is None  # divergence_points = 0: off


def test_the_ceiling_reads_the_top_level_only_and_only_once_its_targets_settled():
    rng = np.random.default_rng(1)
    n = 60
    t2 = _settling(n, rng)
    fits, misfits = 0.007 * t2, 0.015 * t2
    assert _feed(FailureRule(LADDER, 5, ceiling=0.0105), fits, t2, misfits, t2) is None  # d = 1/2 above it: not read
    rule = FailureRule(LADDER, 5, ceiling=0.0105)
    g, step = _feed(rule, misfits, t2, fits, t2)
    assert g == "sc_level_0" and step == 50 * (rule_armed_index(t2) + 2) and "above the ceiling 0.0105" in rule.message()
    # while the targets still grow the ratio is not read at all: no ceiling, no growth
    growing = np.geomspace(0.005, 50.0, n)
    assert _feed(FailureRule(LADDER, 5, ceiling=0.0105), 0.5 * growing, growing, fits, t2) is None


def test_level_ratio_is_the_mean_over_levels_of_each_windowed_share():
    rng = np.random.default_rng(2)
    n = 12
    loss0, t2_0 = rng.uniform(0.01, 0.02, n), rng.uniform(1.0, 2.0, n)
    loss1, t2_1 = rng.uniform(0.03, 0.05, n), rng.uniform(0.5, 1.0, n)
    w = LevelWindows(LADDER, 5)
    for i in range(n):
        point = {"train/loss_sc_level_0": loss0[i], "train/target2_sc_level_0": t2_0[i], "train/loss_flow": 9.0,
                 "train/target2_flow": 1.0}
        if i % 3 != 2:  # d = 1/2 has no rows at every third point: its window pauses, the flow rows never count
            point.update({"train/loss_sc_level_1": loss1[i], "train/target2_sc_level_1": t2_1[i]})
        assert w.add(point) == (["sc_level_0", "sc_level_1"] if i % 3 != 2 else ["sc_level_0"])
    # retyped: level 0 over its last 5 points; level 1 over its last 5 points that had rows
    kept = [i for i in range(n) if i % 3 != 2][-5:]
    r0 = loss0[-5:].sum() / t2_0[-5:].sum()
    r1 = loss1[kept].sum() / t2_1[kept].sum()
    assert w.mean_ratio() == pytest.approx((r0 + r1) / 2, rel=1e-12)
    assert math.isnan(LevelWindows(LADDER, 5).mean_ratio())  # nothing logged yet: no signal


def rule_armed_index(t2) -> int:
    """The index of the log point the rule arms at (three 5-point windows within 10 % of each other)."""
    for i in range(14, len(t2)):
        w = [t2[i - 14:i - 9].sum(), t2[i - 9:i - 4].sum(), t2[i - 4:i + 1].sum()]
        if all(abs(b / a - 1) <= 0.1 for a, b in zip(w, w[1:])):
            return i
    raise AssertionError("never settles")


class _DivergingStub(Method):
    """Half the rows 'level' (d = 1), half 'flow' (d = 0). The level's target keeps one scale all along,
    A (c x_t + sqrt(1 - c^2) noise): c = 1 (learnable from the input) until step 300, then falls to 0 by
    step 500 (fresh noise the network cannot fit), so the share of the target it leaves unexplained grows
    twentyfold against a settled scale: a divergence the rule must name."""

    name = "diverging_stub"

    def targets(self, model, ema, batch, step, generator):
        B = batch.x1.shape[0]
        t = torch.rand(B, generator=generator)
        x_t = interpolate(batch.x0, batch.x1, t)
        noise = torch.randn(batch.x1.shape, generator=generator)
        c = min(1.0, max(0.0, 1 - (step - 300) / 200))
        lvl = torch.arange(B) < B // 2
        level_target = c * x_t + (1 - c * c) ** 0.5 * noise
        target = torch.where(lvl.reshape(-1, 1), level_target, batch.x1 - batch.x0)
        return Targets(x_t=x_t, t=t, d=lvl.float(), y=batch.y, target=target,
                       info={"row_group/level": lvl, "row_group/flow": ~lvl})

    def loss_ladder(self):
        return LossLadder(("level", "flow"), ("d = 1", "flow"), "flow", "stub")

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        return x + model(x, torch.full((len(x),), t), torch.zeros(len(x)), y) / num_sampling_steps


def _stub_cfg(*extra):
    return resolve(_DivergingStub.name, "smoke", ["train.steps=700", "train.log_every=10", "train.checkpoint_every=100",
                                                  "model.hidden=32", "M=2", "eval.num_samples=200", "eval.batch_size=200", *extra])


def test_a_diverging_method_stub_warns_once_tags_the_run_and_keeps_training(monkeypatch):
    from bench.train import run as bench_run
    from bench.store.tracking import client
    from methods import METHODS

    monkeypatch.setitem(METHODS, _DivergingStub.name, _DivergingStub)
    lines = []
    out = bench_run.execute(_stub_cfg(), "stub", progress=False, echo=lines.append)
    warnings = [s for s in lines if s.startswith("warning: level")]
    assert len(warnings) == 1 and "level d = 1 failing at step" in warnings[0] and "\n" not in warnings[0]
    step = int(warnings[0].split("failing at step ")[1].split(":")[0])
    assert 300 < step <= 500  # after the targets stop being learnable, before they are pure noise
    run = client().get_run(out.run_id)
    assert run.data.tags["train.failing_level"].startswith("level d = 1 failing at step ")
    assert run.info.status == "FINISHED"
    assert max(m.step for m in client().get_metric_history(out.run_id, "train/loss")) == 700
    # the early signal beside the rule: the stub's one level, loss / target second moment over the last 5 points
    ratio = {m.step: m.value for m in client().get_metric_history(out.run_id, "train/level_ratio")}
    lo = {m.step: m.value for m in client().get_metric_history(out.run_id, "train/loss_level")}
    t2 = {m.step: m.value for m in client().get_metric_history(out.run_id, "train/target2_level")}
    last5 = sorted(lo)[-5:]
    assert sorted(ratio) == sorted(lo) and ratio[700] == pytest.approx(sum(lo[s] for s in last5) / sum(t2[s] for s in last5))
    assert ratio[700] > 5 * ratio[300]  # the divergence shows in it too
    arts = [a.path for a in client().list_artifacts(out.run_id, "plots")]
    assert "plots/loss_levels.png" in arts
    assert out.results[1]["paired_to_M"] > 0 and out.results[2]["paired_to_M"] == 0.0
    for key in ("fid", "paired_to_M"):  # logged n = M first: every n reaches the store all the same
        assert sorted(m.step for m in client().get_metric_history(out.run_id, key)) == [1, 2], key


def test_failure_rule_stop_ends_the_run_failed_with_its_step_and_reason(monkeypatch):
    from bench.errors import TrainingFailed
    from bench.train import run as bench_run
    from bench.store.tracking import client
    from methods import METHODS

    monkeypatch.setitem(METHODS, _DivergingStub.name, _DivergingStub)
    with pytest.raises(TrainingFailed) as e:
        bench_run.execute(_stub_cfg("train.failure_rule=stop"), "stub-stop", progress=False, echo=lambda *_: None)
    assert e.value.reason == "failure_rule" and 300 < e.value.step <= 500 and "level d = 1 failing" in str(e.value)
    c = client()
    (run,) = c.search_runs([c.get_experiment_by_name("stub-stop").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure.reason"] == "failure_rule"
    assert run.data.tags["failure.step"] == str(e.value.step)
    assert max(m.step for m in c.get_metric_history(run.info.run_id, "train/loss")) == e.value.step  # stopped there


def test_the_harness_outside_methods_never_names_a_level():
    """No module of the harness (trainer, evaluation, levels pictures, report, ...) names a method or its levels: they read row groups and the ladder."""
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert {"trainer.py", "levels.py", "evaluate.py", "run.py", "sampling.py"} <= {f.name for f in files}
    for path in files:
        name, text = str(path.relative_to(ROOT)), path.read_text()
        for word in ("sc_level", "mean_level", "loss_flow", "loss_bootstrap", "row_group/flow", '"shortcut"',
                     '"meanflow"', '"live_reflow"', "method_name =="):
            assert word not in text, (name, word)
