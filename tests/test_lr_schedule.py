"""train.lr_schedule / train.lr_warmup: the formula, the optimiser following it, progressive's one schedule (and its per-stage restart on request)."""

from __future__ import annotations

import math

import pytest

from bench.config import TrainConfig, resolve
from bench.train.run import prepare
from bench.train.trainer import Trainer, lr_at
from methods import get_method
from methods.progressive import stage_bounds, stage_of_step


def test_lr_at_formula():
    tc = TrainConfig(steps=10, lr=2.0, lr_schedule="cosine", lr_warmup=2)
    assert [lr_at(s, tc) for s in (0, 1)] == [1.0, 2.0]  # linear warm-up reaches lr at its last step
    for s in range(2, 10):
        assert lr_at(s, tc) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)))
    assert lr_at(9, tc) < lr_at(2, tc) / 10
    const = TrainConfig(steps=10, lr=2.0)
    assert {lr_at(s, const) for s in range(10)} == {2.0}
    # a stretch (first step, count) restarts warm-up and schedule
    assert lr_at(12, tc, (12, 5)) == 1.0 and lr_at(14, tc, (12, 5)) == 2.0
    assert lr_at(16, tc, (12, 5)) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def _lrs_seen(method: str, overrides: list[str]) -> list[list[float]]:
    p = prepare(resolve(method, "smoke", overrides), progress=False)
    tr = Trainer(p.cfg, p.method, p.model, p.data, p.device, progress=False)
    seen, step = [], tr.opt.step

    def record(*a, **k):
        seen.append([g["lr"] for g in tr.opt.param_groups])
        return step(*a, **k)

    tr.opt.step = record
    tr.fit()
    return seen


def test_the_optimiser_follows_the_schedule():
    seen = _lrs_seen("flow_matching", ["train.steps=6", "train.lr=0.01", "train.lr_schedule=cosine", "train.lr_warmup=1"])
    tc = TrainConfig(steps=6, lr=0.01, lr_schedule="cosine", lr_warmup=1)
    assert [g[0] for g in seen] == pytest.approx([lr_at(s, tc) for s in range(6)])
    assert seen[0][0] == pytest.approx(0.01) and seen[-1][0] < 0.01 * 0.1
    assert [g[0] for g in _lrs_seen("flow_matching", ["train.steps=3", "train.lr=0.01"])] == [0.01] * 3  # constant: untouched


def test_progressive_keeps_one_schedule_as_the_authors():
    """kvfrans/shortcut-models train.py: one optax chain for the run (lines 146-153) and the stage refresh copies
    only the teacher (lines 309-312), so no stage restarts the rate or its warm-up."""
    cfg = resolve("progressive", "smoke", ["M=8", "train.steps=10"])
    method = get_method("progressive")(cfg.method, 3)
    assert {method.lr_span(s, 10) for s in range(10)} == {(0, 10)}
    assert cfg.method.deviations() == {}
    assert resolve("progressive", "smoke", ["M=8", "lr_per_stage=true"]).method.deviations() == {"lr_per_stage": True}


def test_progressive_restarts_the_schedule_at_every_stage_when_asked():
    cfg = resolve("progressive", "smoke", ["M=8", "train.steps=10", "lr_per_stage=true"])
    method = get_method("progressive")(cfg.method, 3)
    spans = [method.lr_span(s, 10) for s in range(10)]
    for s, (first, count) in enumerate(spans):
        stage = stage_of_step(s, 10, 8)
        assert (first, first + count) == stage_bounds(stage, 10, 8)
        assert first <= s < first + count
    assert sorted(set(spans)) == [(0, 4), (4, 3), (7, 3)]  # 3 stages cover the 10 steps exactly
    tc = TrainConfig(steps=10, lr=1.0, lr_schedule="cosine")
    lrs = [lr_at(s, tc, spans[s]) for s in range(10)]
    assert lrs[0] == lrs[4] == lrs[7] == 1.0  # each stage starts at the peak
    assert lrs[3] < 0.2 and lrs[6] < 0.3 and lrs[9] < 0.3
    assert get_method("flow_matching")(resolve("flow_matching", "smoke", []).method, 3).lr_span(5, 10) == (0, 10)
