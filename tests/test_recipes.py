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
    ref = np.bincount(authors_dt_base(rows, M, bias), minlength=int(np.log2(M))).tolist()
    if bias and M == 2:
        # their construction puts rows // 4 rows at dt_base 1 (d_big = 1/2), a level M = 2 lacks: refused
        assert len(ref) == 2 and ref[1] == rows // 4 > 0
        with pytest.raises(BenchError, match="needs M >= 4"):
            ShortcutOptions(M=M, levels="authors_bias").validate()
        return
    assert authors_level_counts(rows, int(np.log2(M)), bias) == ref
    assert sum(ref) == rows
    ShortcutOptions(M=M, levels="authors_bias" if bias else "authors").validate()  # every other case runs


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
    from bench.train.run import deviation_tag

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
    from bench.train.trainer import Trainer

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
    from bench.files import checkpoint as ckpt
    from bench.train.run import execute, prepare
    from bench.store.tracking import client, tracking_uri

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
    with pytest.raises(BenchError, match="method.schedule must be authors, song or fine"):
        resolve("consistency_training", "smoke", ["schedule=karras"])


def authors_dt_base_ct(max_steps: int, denoise_timesteps: int) -> list[int]:
    """kvfrans/shortcut-models baselines/targets_consistency_training.py lines 10-11, re-typed in numpy, at
    every update of their train.py: train_state.step runs 1 .. max_steps (utils/train_state.py create(step=1))."""
    dt_flow = np.log2(denoise_timesteps).astype(np.int32)
    return [int(np.floor(step / (max_steps / dt_flow))) for step in range(1, max_steps + 1)]


# Delta = 1 / 2**dt_base at our 0-based steps 0, 1, ..., worked out by hand from that expression:
# M = 8, 12 steps: floor(s / 4) for s = 1 .. 12; M = 16, 16 steps: floor(s / 4); their last update alone at 1/M
AUTHORS_CT_DELTAS = {
    (8, 12): [1] * 3 + [1 / 2] * 4 + [1 / 4] * 4 + [1 / 8],
    (16, 16): [1] * 3 + [1 / 2] * 4 + [1 / 4] * 4 + [1 / 8] * 4 + [1 / 16],
}
# M = 128, 700 steps: floor(s / 100); (our step, Delta)
AUTHORS_CT_128 = [(0, 1), (98, 1), (99, 1 / 2), (198, 1 / 2), (199, 1 / 4), (598, 1 / 32), (599, 1 / 64), (698, 1 / 64),
                  (699, 1 / 128)]


def test_consistency_training_authors_schedule_as_their_code():
    from methods import METHODS

    def ct(M, steps, *over):
        cfg = resolve("consistency_training", "smoke", [f"M={M}", f"train.steps={steps}", *over])
        return METHODS["consistency_training"](cfg.method, 0, None, train_steps=steps)

    for (M, steps), deltas in AUTHORS_CT_DELTAS.items():
        m = ct(M, steps)
        assert [m.delta(s) for s in range(steps)] == deltas
        assert deltas == [2.0 ** -b_ for b_ in authors_dt_base_ct(steps, M)]  # the table is their expression
    m = ct(128, 700)
    assert [(s, m.delta(s)) for s, _ in AUTHORS_CT_128] == AUTHORS_CT_128
    # their expression at every step of a few runs, the float arithmetic as they wrote it
    for M, steps in ((8, 40), (16, 1000), (32, 2500), (128, 4000)):
        m = ct(M, steps)
        assert [m.delta(s) for s in range(steps)] == [2.0 ** -b_ for b_ in authors_dt_base_ct(steps, M)]
        # log2(M) phases of equal length ending at 2/M (the last update alone at 1/M)
        assert sorted({m.delta(s) for s in range(steps - 1)}) == [2.0 ** -p for p in range(int(np.log2(M)) - 1, -1, -1)]
    # the authors' schedule is no deviation; song departs in grid and loss; ours ("fine": down to 1/M, a target network of its own) is
    assert ct(8, 40).opts.deviations() == {}
    assert ct(8, 40, "schedule=song").opts.deviations() == {  # Song et al.'s N(k) and mu(k) on this harness's grid and loss
        "schedule": "song", "song_grid": "even in t (Song et al.: EDM sigma, rho 7)", "song_loss": "mse (Song et al.: LPIPS)"}
    assert ct(8, 40, "schedule=fine").opts.deviations() == {"schedule": "fine", "target_decay": 0.95}
    with pytest.raises(BenchError, match="target_decay is read by schedule = fine only"):
        ct(8, 40, "target_decay=0.5")
    from bench.train.run import deviation_tag

    cfg = resolve("consistency_training", "smoke", ["schedule=fine"])
    assert deviation_tag(cfg) == {"method.deviations": "schedule=fine, target_decay=0.95"}


def test_consistency_training_fine_schedule_table():
    # schedule = fine (ours): log2(M) + 1 equal phases from 1 down to 1/M, worked out by hand
    from methods import METHODS

    cfg = resolve("consistency_training", "smoke", ["M=8", "train.steps=40", "schedule=fine"])
    m = METHODS["consistency_training"](cfg.method, 0, None, train_steps=40)
    assert [m.delta(s) for s in range(40)] == [1.0] * 10 + [0.5] * 10 + [0.25] * 10 + [0.125] * 10
    assert all(m.target_decay(s) == 0.95 for s in (0, 39))


class _Scalar(nn.Module):
    """f = w: a target network can be told apart from the student by its w."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))

    def forward(self, x, t, d, y):
        return self.w.expand_as(x)


def test_consistency_training_authors_target_is_the_training_ema():
    # their line 29: v_b2 = train_state.call_model_ema(x_t2, t2, ...); pred_x1 = x_t2 + (1 - t2) v_b2;
    # v_target = (pred_x1 - x_t) / (1 - t). Student w = 1, training EMA w = 2.5: the target uses 2.5.
    from methods import METHODS

    cls = METHODS["consistency_training"]
    m = cls(cls.Options(M=8), 0, None, train_steps=12)
    g = torch.Generator().manual_seed(0)
    B = 512
    x0, x1 = torch.randn(B, 1, generator=g, dtype=torch.float64), torch.randn(B, 1, generator=g, dtype=torch.float64)
    batch = Batch(x1=x1, x0=x0, y=torch.zeros(B, dtype=torch.long), null_class=0)
    student, ema = _Scalar(1.0), _Scalar(2.5)
    tg = m.targets(student, ema, batch, 5, torch.Generator().manual_seed(1))  # step 5: Delta = 1/2
    t = tg.t[:, None]
    assert set(tg.t.tolist()) == {0.0, 0.5}
    t2 = t + 0.5
    x_t, x_t2 = (1 - t) * x0 + t * x1, (1 - t2) * x0 + t2 * x1
    assert torch.allclose(tg.target, (x_t2 + (1 - t2) * 2.5 - x_t) / (1 - t))
    # no target network of its own: nothing to follow after the step, nothing in the checkpoint
    m.on_step_end(5, student, ema)
    assert m.state_dict() == {"target_net": None} and "target_decay" not in tg.info
    with pytest.raises(BenchError, match="training EMA"):
        m.targets(student, None, batch, 5, torch.Generator().manual_seed(1))


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
    from bench.evaluation.sampling import count_nfe
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


def test_progressive_bakes_the_guidance_by_default_as_the_authors():
    """kvfrans/shortcut-models baselines/targets_progressive.py: dt_base = dt_flow - floor(step / (max_steps /
    dt_flow)) - 1 (line 11), cfg_scale = where(dt_base == dt_flow - 1, cfg_scale, 1) (line 29, bootstrap_cfg 1 as
    their ImageNet command): guided teacher targets in the first stage only, at every other stage unguided."""
    from methods import METHODS

    cfg = resolve("progressive", "smoke", ["cfg_scale=1.5"])
    assert cfg.method.cfg == "baked" and cfg.method.deviations() == {}
    # both placements are the authors' options (train.py line 62 bootstrap_cfg 0, the default; 1 in their ImageNet command)
    assert resolve("progressive", "smoke", ["cfg_scale=1.5", "cfg=sampling"]).method.deviations() == {}
    assert resolve("progressive", "smoke", ["cfg=sampling"]).method.deviations() == {}
    assert resolve("cfd", "digits", ["cfg_scale=2", "cfg=sampling"]).method.deviations() == {}

    M, steps, w = 8, 24, 3.0
    dt_flow = int(np.log2(M))
    their = {}  # their stage (dt_flow - dt_base, 1 = the first) -> the scale of its teacher targets
    for step in range(1, steps + 1):  # their train_state.step runs 1 .. max_steps
        dt_base = dt_flow - np.floor(step / (steps / dt_flow)) - 1
        if dt_base >= 0:  # their last update alone would reach dt_base = -1 (d = 2): no stage
            their.setdefault(int(dt_flow - dt_base), set()).add(w if dt_base == dt_flow - 1 else 1.0)
    c = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)  # f = c[y]: two classes and the null label
    cls = METHODS["progressive"]
    m = cls(cls.Options(M=M, cfg_scale=w), 2, LabelAffine(c), train_steps=steps)
    B = 30
    y = torch.arange(B) % 3
    batch = Batch(x1=torch.zeros(B, 1, dtype=torch.float64), x0=torch.zeros(B, 1, dtype=torch.float64), y=y, null_class=2)
    guided = c[2] + w * (c[y] - c[2])
    ours = {}
    for step in range(steps):
        tg = m.targets(None, None, batch, step, torch.Generator().manual_seed(step))
        scale = w if torch.allclose(tg.target[:, 0], guided) else 1.0 if torch.allclose(tg.target[:, 0], c[y]) else None
        ours.setdefault(m.stage(step), set()).add(scale)
        m.on_step_end(step, None, LabelAffine(c))  # the next stage's teacher: an (unguided) copy of the student
    assert ours == their == {1: {w}, 2: {1.0}, 3: {1.0}}
    # sampling with the baked student: one unguided pass per step
    from bench.evaluation.sampling import count_nfe

    assert count_nfe(m, LabelAffine(torch.tensor([1.0, 2.0, 0.5])), torch.zeros(3, 1), torch.tensor([0, 1, 0]), 4) == 4
