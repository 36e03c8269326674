"""The shortcut's recipe switch (paper | authors) and the knobs under it: the authors' deterministic
level allocation against an independent port of their dt_base construction, label dropout on the
flow rows only, the resolved values in the config and the logged params, and evaluation with the
live weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import resolve
from bench.errors import BenchError
from methods.base import Batch
from methods.shortcut import Shortcut, ShortcutOptions, authors_level_counts


def authors_dt_base(bootstrap_batchsize: int, denoise_timesteps: int, dt_bias: bool) -> np.ndarray:
    """The authors' targets_shortcut.py step 1, re-typed in numpy: dt_base per row (d_big = 2^-dt_base)."""
    log2_sections = int(np.log2(denoise_timesteps))
    if not dt_bias:
        dt_base = np.repeat(log2_sections - 1 - np.arange(log2_sections), bootstrap_batchsize // log2_sections)
    else:
        dt_base = np.repeat(log2_sections - 1 - np.arange(log2_sections - 2), (bootstrap_batchsize // 2) // log2_sections)
        dt_base = np.concatenate([dt_base, np.ones(bootstrap_batchsize // 4), np.zeros(bootstrap_batchsize // 4)])
    return np.concatenate([dt_base, np.zeros(bootstrap_batchsize - dt_base.shape[0])]).astype(int)


class _Zero(nn.Module):
    def forward(self, x, t, d, y):
        return torch.zeros_like(x)


def level_counts_in_batch(levels: str, B: int, k: float, M: int, seed: int = 0) -> list[int]:
    sc = Shortcut(ShortcutOptions(M=M, k=k, levels=levels), num_classes=0)
    g = torch.Generator().manual_seed(seed)
    batch = Batch(x1=torch.randn(B, 2, generator=g), x0=torch.randn(B, 2, generator=g), y=torch.zeros(B, dtype=torch.long),
                  null_class=1)
    tg = sc.targets(_Zero(), _Zero(), batch, 0, g)
    d_big = tg.d[tg.info["row_group/bootstrap"]]
    tb = tg.t[tg.info["row_group/bootstrap"]]
    assert torch.allclose(tb / d_big, torch.round(tb / d_big)) and (tb < 1).all()  # t on the level's grid
    return [int((d_big == 2.0**-j).sum()) for j in range(int(np.log2(M)))]


def test_authors_shares_at_batch_256_exactly():
    # B = 256, bootstrap_every = 8 (k = 1/8): 32 rows over 7 levels (M = 128); METHODS.md's shares
    with_bias = level_counts_in_batch("authors_bias", 256, 1 / 8, 128)
    assert [c / 32 for c in with_bias] == [7 / 16, 1 / 4] + [1 / 16] * 5
    without = level_counts_in_batch("authors", 256, 1 / 8, 128)
    assert [c / 32 for c in without] == [1 / 4] + [1 / 8] * 6
    # every batch alike: the allocation is deterministic, not drawn
    assert level_counts_in_batch("authors_bias", 256, 1 / 8, 128, seed=7) == with_bias


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows,M", [(32, 128), (64, 128), (17, 128), (5, 128), (48, 16), (9, 4), (3, 4), (64, 2)])
def test_authors_allocation_matches_their_construction(rows, M, bias):
    if bias and M == 2:
        return  # rejected by validate (tested below)
    ref = np.bincount(authors_dt_base(rows, M, bias), minlength=int(np.log2(M))).tolist()
    assert authors_level_counts(rows, int(np.log2(M)), bias) == ref
    assert sum(ref) == rows


def test_level_shares_are_logged_for_the_runs_batch():
    m = Shortcut(resolve("shortcut", "smoke", ["recipe=authors", "levels=authors_bias"]).method, num_classes=0)
    assert m.run_params(256)["method.level_shares"] == "1:0.4375,1/2:0.25,1/4:0.0625,1/8:0.0625,1/16:0.0625,1/32:0.0625,1/64:0.0625"
    uniform = Shortcut(resolve("shortcut", "smoke", []).method, num_classes=0).run_params(256)
    assert uniform["method.level_shares"].startswith("1:0.1429,1/2:0.1429")
    assert m.run_params(24)["method.level_shares"].startswith("1:1,1/2:0,")  # 3 rows: 3 // 4 = 0 at 1/2, the rest at 1


def test_recipe_sets_the_defaults_and_an_explicit_knob_wins():
    paper = resolve("shortcut", "smoke", []).method
    assert (paper.recipe, paper.k, paper.flow_d, paper.dropout_rows, paper.levels, paper.eval_weights) == (
        "paper", 0.25, "zero", "all", "uniform", "ema")
    authors = resolve("shortcut", "smoke", ["recipe=authors"]).method
    assert (authors.k, authors.flow_d, authors.dropout_rows, authors.levels, authors.eval_weights) == (
        0.125, "min", "flow", "authors", "live")
    mixed = resolve("shortcut", "smoke", ["recipe=authors", "k=1/4", "eval_weights=ema", "flow_d=apart"]).method
    assert (mixed.k, mixed.eval_weights, mixed.flow_d, mixed.levels) == (0.25, "ema", "apart", "authors")
    paper_min = resolve("shortcut", "smoke", ["flow_d=min", "dropout_rows=flow"]).method
    assert (paper_min.flow_d, paper_min.dropout_rows, paper_min.k) == ("min", "flow", 0.25)
    # the flat config (the logged params) holds the resolved values, never a placeholder
    flat = resolve("shortcut", "smoke", ["recipe=authors"]).flat()
    assert "recipe" not in {str(v) for k, v in flat.items() if k != "method.recipe"} and flat["method.k"] == 0.125
    with pytest.raises(BenchError, match="method.recipe must be paper or authors"):
        resolve("shortcut", "smoke", ["recipe=both"])
    with pytest.raises(BenchError, match="method.levels must be one of"):
        resolve("shortcut", "smoke", ["levels=big"])
    with pytest.raises(BenchError, match="needs M >= 4"):
        resolve("shortcut", "smoke", ["levels=authors_bias", "M=2"])


def test_deviations_from_the_recipe_are_named_and_the_digits_profile_has_two():
    from bench.run import deviation_tag

    digits = resolve("shortcut", "digits", [])
    assert digits.method.deviations() == {"levels": "quarter_large", "bootstrap_weight": 8.0}
    assert deviation_tag(digits) == {"method.deviations": "levels=quarter_large, bootstrap_weight=8"}
    # the recipes as published on that profile, as bench.toml tells
    assert resolve("shortcut", "digits", ["levels=uniform", "bootstrap_weight=1"]).method.deviations() == {}
    authors = resolve("shortcut", "digits", ["recipe=authors", "levels=authors", "bootstrap_weight=1"])
    assert authors.method.deviations() == {} and deviation_tag(authors) == {}
    assert resolve("shortcut", "smoke", ["recipe=authors", "k=1/4"]).method.deviations() == {"k": 0.25}
    assert resolve("flow_matching", "digits", []).method.deviations() == {}


def test_label_dropout_on_the_flow_rows_only():
    B, nb = 64, 16

    class LabelEcho(nn.Module):  # f = y: the bootstrap target then equals the label it was built with
        def forward(self, x, t, d, y):
            return y.to(x.dtype)[:, None].expand_as(x)

    y_kept = torch.arange(B) % 3
    y = torch.where(torch.arange(B) % 2 == 0, torch.full_like(y_kept, 3), y_kept)  # every other label dropped
    batch = Batch(x1=torch.randn(B, 2), x0=torch.randn(B, 2), y=y, null_class=3, y_kept=y_kept)
    for rows, want in (("flow", y_kept[:nb]), ("all", y[:nb])):
        sc = Shortcut(ShortcutOptions(M=8, k=0.25, dropout_rows=rows, clip=0.0), num_classes=3)
        tg = sc.targets(LabelEcho(), LabelEcho(), batch, 0, torch.Generator().manual_seed(0))
        assert torch.equal(tg.y[:nb], want) and torch.equal(tg.y[nb:], y[nb:])
        assert torch.allclose(tg.target[:nb, 0], want.float())


def test_trainer_batch_keeps_the_labels_before_dropout():
    from bench.data import TensorData
    from bench.models import build_model
    from bench.trainer import Trainer

    cfg = resolve("shortcut", "smoke", ["train.label_dropout=0.5", "model.hidden=16", "model.depth=1"])
    data = TensorData("ten", "points", torch.randn(100, 2), torch.arange(100) % 10, 10)
    model = build_model(cfg.model, data.shape, data.num_classes)
    tr = Trainer(cfg, Shortcut(cfg.method, data.num_classes), model, data, torch.device("cpu"), progress=False)
    batch = tr.prepare_batch()
    dropped = batch.y == 10
    assert 0.3 < dropped.float().mean() < 0.7 and torch.all(batch.y_kept < 10)
    assert torch.equal(batch.y[~dropped], batch.y_kept[~dropped])


@pytest.mark.slow
def test_authors_recipe_evaluates_the_live_weights():
    from bench import checkpoint as ckpt
    from bench.run import execute, prepare
    from bench.tracking import client, tracking_uri

    over = ["recipe=authors", "train.steps=20", "M=4", "model.hidden=32", "eval.num_samples=200", "eval.steps=1",
            "train.ema_decay=0.999"]  # the EMA stays near the initial weights: live and EMA differ
    cfg = resolve("shortcut", "smoke", over)
    out = execute(cfg, "recipes", progress=False, echo=lambda *_: None)
    params = client(tracking_uri()).get_run(out.run_id).data.params
    assert params["eval.weights"] == "live" and params["method.k"] == "0.125" and params["method.levels"] == "authors"
    assert params["method.level_shares"] == "1:0.5,1/2:0.5"  # 32 rows, 2 levels: 16 each
    state = ckpt.load(out.checkpoint.parent / "final.pt")
    fid = {}
    for weights in ("model", "ema"):
        p = prepare(cfg, progress=False)
        p.model.load_state_dict(state[weights])
        fid[weights] = p.evaluator.evaluate(p.method, p.model.to(p.device), 1).metrics["fid"]
    assert out.results[1]["fid"] == fid["model"] != fid["ema"]


# ----------------------------------------------------------------------------- consistency training: schedule = song


def test_song_schedule_against_the_formulas():
    from methods.consistency import song_num_points, song_target_decay

    K = 1000
    # N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, s0 = 2, s1 = 150, worked out by hand:
    # k = 0: sqrt(4) = 2 -> 2; k = K: sqrt(151^2) = 151 -> 151; k = K/2: sqrt(0.5 (22801 - 4) + 4) = 106.78 -> 107
    assert [song_num_points(k, K, 2, 150) for k in (0, 500, 1000)] == [2, 107, 151]
    assert song_num_points(1, K, 2, 150) == 6  # sqrt(0.001 * 22797 + 4) = 5.18: ceil(4.18) + 1
    Ns = [song_num_points(k, K, 2, 150) for k in range(K + 1)]
    assert all(a <= b_ for a, b_ in zip(Ns, Ns[1:]))
    # mu(k) = exp(s0 log(mu0) / N(k)): mu0 at N = s0, 0.9^(2/151) at the end
    assert song_target_decay(2, 2, 0.9) == pytest.approx(0.9)
    assert song_target_decay(151, 2, 0.9) == pytest.approx(0.9 ** (2 / 151)) == pytest.approx(0.998605, abs=1e-6)


def test_consistency_training_song_targets_and_target_ema():
    from methods import METHODS
    from methods.consistency import song_num_points, song_target_decay

    class Scalar(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))

        def forward(self, x, t, d, y):
            return self.w.expand_as(x)

    K, k = 100, 50
    opts = METHODS["consistency_training"].Options(M=8, schedule="song")
    opts.validate()
    m = METHODS["consistency_training"](opts, 0, None, train_steps=K)
    N = song_num_points(k, K, 2, 150)
    assert N == 107 and m.delta(k) == 1 / 106 and m.target_decay(k) == pytest.approx(song_target_decay(N, 2, 0.9))
    g = torch.Generator().manual_seed(0)
    B = 4096
    x0, x1 = torch.randn(B, 1, generator=g, dtype=torch.float64), torch.randn(B, 1, generator=g, dtype=torch.float64)
    batch = Batch(x1=x1, x0=x0, y=torch.zeros(B, dtype=torch.long), null_class=0)
    student = Scalar(1.0)
    tg = m.targets(student, None, batch, k, torch.Generator().manual_seed(1))
    i = torch.round(tg.t * 106)
    assert torch.allclose(tg.t, i / 106) and i.max() == 105 and len(i.unique()) > 90  # N - 1 cells on [0, 1)
    t, t2 = tg.t[:, None], (i[:, None] + 1) / 106
    x_t2 = (1 - t2) * x0 + t2 * x1  # F(x_t2, t2) = x_t2 + (1 - t2) w^- with w^- = 1 (the student's copy)
    assert torch.allclose(tg.target, (x_t2 + (1 - t2) * 1.0 - tg.x_t) / (1 - t))
    # after step k the target network moves toward the student by 1 - mu(k)
    with torch.no_grad():
        student.w.fill_(3.0)
    m.on_step_end(k, student, None)
    mu = song_target_decay(N, 2, 0.9)
    assert m.target_net(student).w.item() == pytest.approx(mu * 1.0 + (1 - mu) * 3.0)
    with pytest.raises(BenchError, match="method.schedule must be authors or song"):
        resolve("consistency_training", "smoke", ["schedule=karras"])


def test_consistency_training_authors_schedule_is_unchanged():
    from methods.consistency import ct_delta

    m = resolve("consistency_training", "smoke", ["M=8", "train.steps=40"])
    from methods import METHODS

    ct = METHODS["consistency_training"](m.method, 0, None, train_steps=40)
    assert [ct.delta(s) for s in range(40)] == [ct_delta(s, 40, 8) for s in range(40)]
    assert all(ct.target_decay(s) == 0.95 for s in (0, 39))


# ----------------------------------------------------------------------------- progressive: cfg = sampling | baked


class LabelAffine(nn.Module):
    """f(x, t, d, y) = c[y] (the null label is the last entry)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t, d, y):
        return self.c[y][:, None].expand_as(x)


@pytest.mark.parametrize("cfg", ["sampling", "baked"])
def test_progressive_cfg_baked_guides_the_first_stage_teacher(cfg):
    from bench.sampling import count_nfe
    from methods import METHODS

    c = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)  # two classes and the null label
    w = 3.0
    cls = METHODS["progressive"]
    opts = cls.Options(M=4, cfg_scale=w, cfg=cfg)
    opts.validate()
    m = cls(opts, 2, LabelAffine(c), train_steps=20)
    B = 64
    y = torch.arange(B) % 3
    batch = Batch(x1=torch.zeros(B, 2, dtype=torch.float64), x0=torch.zeros(B, 2, dtype=torch.float64), y=y, null_class=2)
    tg = m.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    guided = c[2] + w * (c[y] - c[2])  # v_u + w (v_c - v_u); the null rows get v_u
    want = guided if cfg == "baked" else c[y]
    assert torch.allclose(tg.target, want[:, None].expand(B, 2))
    # later stages: the teacher is the student copy, queried without guidance either way
    m.refresh_teacher(LabelAffine(c))
    tg2 = m.targets(None, None, batch, 19, torch.Generator().manual_seed(0))
    assert torch.allclose(tg2.target, c[y][:, None].expand(B, 2))
    # sampling: baked takes one unguided pass per step; sampling guides every step
    net = LabelAffine(torch.tensor([1.0, 2.0, 0.5]))
    assert count_nfe(m, net, torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2) == (2 if cfg == "baked" else 4)
    # a sweep over cfg_scale retrains per scale only when the scale is baked in
    assert cls.is_sampling_time("cfg_scale", opts) == (cfg == "sampling")
