"""Baselines as released (issue 37): each default against the authors' expression, retyped here from their
code (file and line named at each test), never computed by calling ours; the named deviations; the stage
optimiser of CFD and RDD through the trainer; eval mode in every target query; PD's per-stage reading on a
tiny run; the cifar10 profile's flips; `bench deviations`.

Authors' code read: kvfrans/shortcut-models at 6010043 (baselines/targets_progressive.py,
targets_consistency_distillation.py, targets_consistency_training.py, targets_livereflow.py, train.py,
model.py), zju-SWJ/RCFD (RCFD.py, config/CIFAR10_RCFD.txt), cantbebetter2/RDD (train_rdd.py, train_rdd.sh)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.config import Config, resolve
from bench.errors import BenchError
from methods import METHODS
from methods.base import Batch


class Recorder(nn.Module):
    """f(x, t, d, y) = a x + c with a dropout layer; records every call's (d, y, training, grad enabled)."""

    def __init__(self, a: float, c: float, dim: int = 2):
        super().__init__()
        self.a, self.c = a, c
        self.w = nn.Parameter(torch.ones(dim))  # something to optimise and to copy
        self.drop = nn.Dropout(0.5)
        self.calls: list[dict] = []

    def forward(self, x, t, d, y):
        self.calls.append({"d": d.detach().clone(), "y": y.clone(), "training": self.training,
                           "grad": torch.is_grad_enabled()})
        return self.a * x * self.w + self.c


def make(name, M=8, train_steps=30, teacher=None, num_classes=0, **opts):
    cls = METHODS[name]
    o = cls.Options(M=M, **opts)
    o.validate()
    return cls(o, num_classes, teacher, train_steps=train_steps)


def points(B=256, seed=0):
    """An unconditional batch of 2-D points, x1 around 1.5."""
    b = batch_with_dropout(B, seed=seed)
    return Batch(x1=b.x1, x0=b.x0, y=torch.zeros(B, dtype=torch.long), null_class=0)


def batch_with_dropout(B=256, num_classes=3, seed=0):
    """x1 around 1.5, labels with a third of them dropped to the null class (y_kept the originals)."""
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(B, 2, generator=g), 1.5 + 0.5 * torch.randn(B, 2, generator=g)
    y_kept = torch.randint(0, num_classes, (B,), generator=g)
    y = torch.where(torch.arange(B) % 3 == 0, torch.full_like(y_kept, num_classes), y_kept)
    return Batch(x1=x1, x0=x0, y=y, null_class=num_classes, y_kept=y_kept)


def bcast(v, like):
    return v.reshape(-1, *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------- progressive distillation


def test_pd_target_as_targets_progressive_py():
    """targets_progressive.py lines 31-36 (bootstrap_cfg 0):
        v_b1 = call_model_fn(x_t, t, dt_base_bootstrap, labels, train=False)
        t2 = t + dt_bootstrap
        x_t2 = x_t + dt_bootstrap * v_b1
        x_t2 = jnp.clip(x_t2, -4, 4)
        v_b2 = call_model_fn(x_t2, t2, dt_base_bootstrap, labels, train=False)
        v_target = (v_b1 + v_b2) / 2
    with the network ignoring dt (train.py line 140, model.py lines 249-250) and the labels as given (PD's targets
    drop none). A steep teacher puts some x_t2 beyond 4, so the clip matters."""
    M, a, c = 8, 20.0, 10.0
    teacher = Recorder(a, c)
    m = make("progressive", M=M, teacher=teacher, num_classes=3)
    batch = batch_with_dropout()
    tg = m.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    dt = 1 / M  # stage 1: the teacher's step
    x_t, t = tg.x_t, tg.t
    v_b1 = a * x_t + c
    x_t2_raw = x_t + dt * v_b1
    x_t2 = x_t2_raw.clamp(-4, 4)
    v_b2 = a * x_t2 + c
    torch.testing.assert_close(tg.target, (v_b1 + v_b2) / 2)
    assert (x_t2_raw.abs() > 4).any() and (x_t2_raw.abs() <= 4).any()  # both kinds of rows
    assert all(torch.all(call["d"] == 0) for call in teacher.calls) and torch.all(tg.d == 0)  # d ignored
    assert all(torch.equal(call["y"], batch.y_kept) for call in teacher.calls) and torch.equal(tg.y, batch.y_kept)
    assert all(not call["training"] and not call["grad"] for call in teacher.calls)  # train=False, no gradient
    # the former choices, each a named deviation
    old = make("progressive", M=M, teacher=Recorder(a, c), num_classes=3, clip=0.0, student_d="step", dropout_rows="all")
    tg_old = old.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(tg_old.target, (v_b1 + a * x_t2_raw + c) / 2)
    assert torch.all(tg_old.d == 2 * dt) and torch.equal(tg_old.y, batch.y)
    assert old.opts.deviations() == {"clip": 0.0, "student_d": "step", "dropout_rows": "all"}
    assert m.opts.deviations() == {}


def test_pd_cfg_placement_is_never_a_deviation():
    """train.py line 62: bootstrap_cfg 0 (CFG at sampling) is the authors' default; 1 bakes it into stage 1."""
    for cfg in ("baked", "sampling"):
        assert resolve("progressive", "digits", [f"cfg={cfg}", "cfg_scale=2"]).method.deviations() == {}


def test_pd_lr_warmup_is_not_restarted_per_stage_on_cifar10():
    """The cifar10 profile warms up over 10k steps; PD's stages share the run's one schedule (train.py lines 146-153)."""
    from bench.train.trainer import lr_at

    cfg = resolve("progressive", "cifar10")
    assert cfg.train.lr_warmup == 10_000 and cfg.method.lr_per_stage is False
    m = METHODS["progressive"](cfg.method, 0, None, train_steps=cfg.train.steps)
    first_of_stage_2 = cfg.train.steps // 7
    span = m.lr_span(first_of_stage_2, cfg.train.steps)
    assert span == (0, cfg.train.steps)
    assert lr_at(first_of_stage_2, cfg.train, span) == cfg.train.lr  # no second warm-up


def test_stored_pd_runs_keep_what_they_ran_with():
    """A config stored before issue 37 lacks the new keys: it loads with the values it trained with."""
    new = resolve("progressive", "smoke", [])
    d = new.to_dict()
    for key in ("clip", "student_d", "dropout_rows", "lr_per_stage", "reading"):
        del d["method"][key]
    old = Config.from_dict(d).method
    assert (old.clip, old.student_d, old.dropout_rows, old.lr_per_stage) == (0.0, "step", "all", True)
    d = resolve("cfd", "digits", []).to_dict()
    for key in ("clip", "student_d", "dropout_rows", "lr_per_stage", "reading", "stage_optimiser"):
        del d["method"][key]
    assert Config.from_dict(d).method.stage_optimiser == "profile"
    d = resolve("consistency_distillation", "smoke", []).to_dict()
    for key in ("target", "clip"):
        del d["method"][key]
    old = Config.from_dict(d).method
    assert (old.target, old.clip) == ("own", 0.0)


# ----------------------------------------------------------------------------- PD's per-stage reading


def euler_by_hand(net, x0, y, n, d):
    """n Euler steps, x <- x + f(x, i/n, d, y) / n (written out, not the harness's sampler)."""
    x = x0
    for i in range(n):
        x = x + net(x, torch.full((x.shape[0],), i / n), torch.full((x.shape[0],), d), y) / n
    return x


def test_pd_per_stage_reading_on_a_tiny_run():
    """M = 4, 4 steps: stage 1 (steps 0-1) distils the 2-step student, stage 2 the 1-step one. reading = per_stage
    samples n = 2 with the student kept at stage 1's end, n = 4 with the flow teacher, n = 1 with the final
    model; reading = final (the authors' evaluation) samples every n with the final model."""
    from bench.evaluation.sampling import count_nfe, sample
    from bench.models import build_model
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    over = ["train.steps=4", "train.batch_size=32", "model.hidden=32", "model.depth=2", "method.M=4", "reading=per_stage",
            "train.ema_decay=0.5"]
    cfg = resolve("progressive", "smoke", over)
    torch.manual_seed(0)
    teacher = build_model(cfg.model, (2,), 0).requires_grad_(False).eval()
    p = prepare(cfg, progress=False, teacher=teacher)
    p.method.teacher = teacher
    p.model.load_state_dict(teacher.state_dict())
    tr = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
    seen = {}
    end = tr.method.on_step_end

    def spy(step, model, ema):
        if step == 1:  # stage 1's last step: its EMA is the 2-step student
            seen["student_2"] = copy.deepcopy(ema.state_dict())
        end(step, model, ema)

    tr.method.on_step_end = spy
    tr.fit()
    m = tr.method
    kept = m.state_dict()["stage_students"]
    assert set(kept) == {2, 4} and all(torch.equal(kept[2][k].cpu(), v) for k, v in seen["student_2"].items())
    assert all(torch.equal(kept[4][k], v) for k, v in teacher.state_dict().items())  # n = M: the teacher's weights
    student_2 = copy.deepcopy(tr.ema)
    student_2.load_state_dict(seen["student_2"])
    g = torch.Generator().manual_seed(1)
    x0, y = torch.randn(16, 2, generator=g), torch.zeros(16, dtype=torch.long)
    ema = tr.ema.eval()
    with torch.no_grad():
        torch.testing.assert_close(sample(m, ema, x0, y, 2), euler_by_hand(student_2, x0, y, 2, 0.0))
        torch.testing.assert_close(sample(m, ema, x0, y, 4), euler_by_hand(teacher, x0, y, 4, 0.0))
        torch.testing.assert_close(sample(m, ema, x0, y, 1), euler_by_hand(ema, x0, y, 1, 0.0))
        assert not torch.allclose(sample(m, ema, x0, y, 2), euler_by_hand(ema, x0, y, 2, 0.0))
        # the student runs inside the sampled model (its weights swapped in and back): wrappers see every call
        assert [count_nfe(m, ema, x0, y, n) for n in (1, 2, 4)] == [1, 2, 4]
        assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), tr.ema.state_dict().values()))
        restored = copy.deepcopy(tr.ema.state_dict())
        sample(m, ema, x0, y, 2)
        assert all(torch.equal(restored[k], v) for k, v in ema.state_dict().items())
        final = METHODS["progressive"](dataclass_replace(cfg.method, reading="final"), 0, teacher, train_steps=4)
        final.load_state_dict(m.state_dict())
        for n in (1, 2, 4):  # the authors' reading: the final student at every n
            torch.testing.assert_close(sample(final, ema, x0, y, n), euler_by_hand(ema, x0, y, n, 0.0))
        # a checkpoint evaluated without a teacher (evaluate_checkpoint): n = M from the teacher's kept weights
        bare = METHODS["progressive"](cfg.method, 0, None, train_steps=4)
        bare.load_state_dict(copy.deepcopy(m.state_dict()))
        for n in (1, 2, 4):
            torch.testing.assert_close(sample(bare, ema, x0, y, n), sample(m, ema, x0, y, n))
    # a separate row: the reading is a sampling-time option the run records, not a deviation
    assert METHODS["progressive"].is_sampling_time("reading", cfg.method) and cfg.method.deviations() == {}
    assert cfg.flat()["method.reading"] == "per_stage"


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


# ----------------------------------------------------------------------------- consistency distillation


def test_cd_target_as_targets_consistency_distillation_py():
    """targets_consistency_distillation.py lines 23-29:
        v_b1 = train_state_teacher.call_model_ema(x_t, t, dt_base, labels, train=False)
        t2 = t + dt_bootstrap
        x_t2 = x_t + dt_bootstrap * v_b1
        x_t2 = jnp.clip(x_t2, -4, 4)
        v_b2 = train_state.call_model_ema(x_t2, t2, dt_base, labels, train=False)
        pred_x1 = x_t2 + (1 - t2[:, None, None, None]) * v_b2
        v_target = (pred_x1 - x_t) / (1 - t[:, None, None, None])
    the second query by the student's own training EMA; CT (targets_consistency_training.py line 27) has no clip."""
    M = 8
    teacher, ema = Recorder(60.0, 30.0), Recorder(0.5, -1.0)
    model = Recorder(9.0, 9.0)  # the live student: never queried for the target
    model.train()
    m = make("consistency_distillation", M=M, teacher=teacher)
    batch = points()
    tg = m.targets(model, ema, batch, 0, torch.Generator().manual_seed(0))
    dt = 1 / M
    x_t, t = tg.x_t, tg.t
    t2 = t + dt
    v_b1 = 60.0 * x_t + 30.0
    raw = x_t + dt * v_b1
    x_t2 = raw.clamp(-4, 4)
    v_b2 = 0.5 * x_t2 - 1.0
    pred_x1 = x_t2 + bcast(1 - t2, x_t2) * v_b2
    torch.testing.assert_close(tg.target, (pred_x1 - x_t) / bcast(1 - t, x_t))
    assert (raw.abs() > 4).any() and (raw.abs() <= 4).any()
    assert not model.calls and len(ema.calls) == 1 and len(teacher.calls) == 1
    assert m.opts.deviations() == {}
    assert make("consistency_distillation", M=M, teacher=teacher, target="own").opts.deviations() == {
        "target": "own", "target_decay": 0.95}
    assert make("consistency_distillation", M=M, teacher=teacher, clip=0.0).opts.deviations() == {"clip": 0.0}
    with pytest.raises(BenchError, match="target_decay is read by target = own only"):
        make("consistency_distillation", M=M, teacher=teacher, target_decay=0.5)


# ----------------------------------------------------------------------------- eval mode


@pytest.mark.parametrize("name,opts", [
    ("shortcut", {"bootstrap_ema": False}),
    ("live_reflow", {}),  # the authors' live roll-out (targets_livereflow.py lines 33, 39: train=False)
    ("consistency_distillation", {"target": "own", "target_decay": 0.0}),
    ("consistency_training", {"schedule": "fine", "target_decay": 0.0}),
    ("progressive", {}),
])
def test_every_target_query_runs_in_eval_mode(name, opts):
    """The authors query every target and roll-out with train=False: dropout off in every no-grad query of the
    live network, whose training mode is given back afterwards."""
    model, ema = Recorder(0.5, 0.1), Recorder(0.5, 0.1)
    model.train()
    teacher = Recorder(0.5, 0.1) if METHODS[name].needs_teacher else None  # in train mode: the method must switch it
    m = make(name, M=8, teacher=teacher, **opts)
    batch = points(B=64)
    m.targets(model, ema, batch, 25, torch.Generator().manual_seed(0))
    queried = [c for net in (model, ema, teacher) if net is not None for c in net.calls if not c["grad"]]
    assert queried and all(not c["training"] for c in queried)
    assert model.training  # restored for the regressed forward


# ----------------------------------------------------------------------------- CFD and RDD


def test_cfd_rdd_defaults_as_released():
    """The 4-step student (8 -> 4 with the classifier), the released stage optimiser, RDD's temperature 0.9
    (train_rdd.sh: --temperature 0.9); CFD keeps the paper's ResNet-18 setting 0.95."""
    cfd, rdd = resolve("cfd", "digits").method, resolve("rdd", "digits").method
    assert (cfd.final_steps, cfd.stage_optimiser, cfd.stage_lr, cfd.feature_temperature) == (4, "released", 5e-5, 0.95)
    assert (rdd.final_steps, rdd.stage_optimiser, rdd.stage_lr, rdd.feature_temperature) == (4, "released", 5e-5, 0.9)
    assert cfd.deviations() == {} and rdd.deviations() == {}
    assert resolve("rdd", "digits", ["feature_temperature=0.95"]).method.deviations() == {"feature_temperature": 0.95}
    assert resolve("cfd", "digits", ["stage_optimiser=profile"]).method.deviations() == {"stage_optimiser": "profile"}
    for name in ("cfd", "rdd"):  # the cifar10 profile's ImageNet ResNet-18 is named
        assert "classifier" in resolve(name, "cifar10").method.deviations()


def test_the_released_stage_optimiser_through_the_trainer(monkeypatch):
    """M = 16, final_steps = 4: stage 1 (16 -> 8, plain PD) on the profile's optimiser (digits: lr 2e-3 constant,
    no clip, EMA 0.99), stage 2 (8 -> 4, the classifier's) as RCFD.py runs it: a new Adam (line 151), lr 5e-5,
    CosineAnnealingLR(T_max = the stage's steps) stepped after each optimiser step (lines 152, 189-190), so the
    k-th step of the stage (0-based) runs at 5e-5 (1 + cos(pi k / T)) / 2; clip_grad_norm_(..., 1.0) (line 188);
    ema_decay 0 (config/CIFAR10_RCFD.txt): the weights kept are the live ones."""
    from bench.models import build_model
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    over = ["train.steps=6", "train.batch_size=8", "model.hidden=32", "model.depth=2", "method.M=16", "train.log_every=3"]
    cfg = resolve("cfd", "digits", over)
    torch.manual_seed(5)
    teacher = build_model(cfg.model, (1, 8, 8), 10).requires_grad_(False).eval()
    with torch.no_grad():  # the DiT's zero-initialised output layer would make every target and gradient 0
        for q in teacher.parameters():
            q.add_(0.05 * torch.randn_like(q))
    p = prepare(cfg, progress=False)
    p.method.teacher = teacher
    p.model.load_state_dict(teacher.state_dict())
    tr = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
    clips, seen, ema_is_live = [], [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        clips.append((tr.step, max_norm))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    step = tr.opt.step

    def record(*a, **k):
        g = tr.opt.param_groups[0]
        seen.append((g["lr"], g["weight_decay"], len(tr.opt.state)))
        return step(*a, **k)

    tr.opt.step = record
    end = tr.method.on_step_end

    def spy(s, model, ema):
        ema_is_live.append(all(torch.equal(a, b) for a, b in zip(model.parameters(), ema.parameters())))
        end(s, model, ema)

    tr.method.on_step_end = spy
    start = [q.detach().clone() for q in tr.model.parameters()]
    tr.fit()
    assert any(not torch.equal(a, q) for a, q in zip(start, tr.model.parameters()))  # it trained
    T = 3
    released = [5e-5 * (1 + math.cos(math.pi * k / T)) / 2 for k in range(T)]
    assert [s[0] for s in seen] == pytest.approx([2e-3] * 3 + released, rel=1e-12)
    assert [s[1] for s in seen] == [0.0] * 6
    n_params = len(list(tr.model.parameters()))
    assert [s[2] for s in seen] == [0, n_params, n_params, 0, n_params, n_params]  # a fresh Adam at the stage
    assert clips == [(3, 1.0), (4, 1.0), (5, 1.0)]
    assert ema_is_live == [False, False, False, True, True, True]
    # stage_optimiser = released_all: every stage so; profile: none
    m = METHODS["cfd"](resolve("cfd", "digits", over + ["stage_optimiser=released_all"]).method, 10, teacher, train_steps=6)
    assert [m.stage_optimiser(s, 6) is not None for s in range(6)] == [True] * 6
    m = METHODS["cfd"](resolve("cfd", "digits", over + ["stage_optimiser=profile"]).method, 10, teacher, train_steps=6)
    assert all(m.stage_optimiser(s, 6) is None for s in range(6))


def test_rdd_head_steps_as_its_own_adam_in_the_released_stage(monkeypatch):
    """train_rdd.py: the head (loss_fun) has an Adam of its own at lr (line 173), never scheduled (only `optim` is,
    line 176) and outside the clip (line 220 clips student_sampler's parameters only)."""
    from bench.models import build_model
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    over = ["train.steps=3", "train.batch_size=8", "model.hidden=32", "model.depth=2", "method.M=8", "queue_size=64",
            "queue_update=16", "num_anchors=16"]
    cfg = resolve("rdd", "digits", over)
    torch.manual_seed(5)
    teacher = build_model(cfg.model, (1, 8, 8), 10).requires_grad_(False).eval()
    p = prepare(cfg, progress=False)
    p.method.teacher = teacher
    p.model.load_state_dict(teacher.state_dict())
    tr = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, *a, **k: (clipped.append(len(list(params))),
                                                                                    real_clip([], *a, **k))[1])
    seen, step = [], tr.opt.step

    def record(*a, **k):
        seen.append([g["lr"] for g in tr.opt.param_groups])
        return step(*a, **k)

    tr.opt.step = record
    tr.fit()
    student = [5e-5 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert [s[0] for s in seen] == pytest.approx(student, rel=1e-12) and [s[1] for s in seen] == [5e-5] * 3
    assert clipped == [len(list(tr.model.parameters()))] * 3


# ----------------------------------------------------------------------------- untagged knobs, now tagged


def test_meanflow_and_song_name_their_departures():
    mf = resolve("meanflow", "digits").method.deviations()
    assert mf == {"adaptive_p": 0.5, "time_sampling": "uniform", "time_input_scale": 0.01}
    assert resolve("meanflow", "cifar10").method.deviations() == {"time_sampling": "uniform", "time_input_scale": 0.01}
    paper = ["time_sampling=logit_normal", "time_input_scale=1", "adaptive_p=1"]
    assert resolve("meanflow", "smoke", paper).method.deviations() == {}
    # the paper's lognorm(-0.4, 1) is in its time, z_t = (1 - t) x + t eps (t = 1 noise): here t = 1 is data, so +0.4
    assert resolve("meanflow", "smoke", paper).method.logit_mean == -(-0.4)
    assert resolve("meanflow", "smoke", paper + ["logit_mean=-0.4"]).method.deviations() == {"logit_mean": -0.4, "logit_std": 1.0}
    song = resolve("consistency_training", "smoke", ["schedule=song"]).method.deviations()
    assert song["schedule"] == "song" and "LPIPS" in song["song_loss"] and "rho 7" in song["song_grid"]


def test_bench_deviations_prints_every_method():
    from typer.testing import CliRunner

    from bench.cli import app

    out = CliRunner().invoke(app, ["deviations", "--profile", "digits"])
    assert out.exit_code == 0, out.output
    lines = dict(line.split(None, 1) for line in out.output.strip().splitlines())
    assert set(lines) == set(METHODS)
    assert lines["shortcut"].strip() == "levels=quarter_large, bootstrap_weight=8"
    assert lines["progressive"].strip() == "-"


# ----------------------------------------------------------------------------- cifar10 flips


def test_the_cifar10_profile_flips_its_training_batches(tmp_path):
    """data.augment = flip on the cifar10 profile: every training row is its image or the image mirrored
    left-right, both occur; with none, every row is its image. The reference set is never flipped."""
    from bench.data import load_dataset
    from bench.speed import build_trainer
    from tests.cifar10_format import make_batches, write_folder

    write_folder(tmp_path, make_batches(8, seed=0))
    small = ["model.preset=", "model.hidden=16", "model.depth=1", "model.channel_mult=1,2", "model.attn_resolutions=16",
             "model.heads=1", "train.batch_size=64", "train.precision=fp32", "train.compile=false", "train.device=cpu", "M=4"]
    for augment in ("flip", "none"):
        over = small + ([] if augment == "flip" else ["data.augment=none"])
        cfg = resolve("flow_matching", "cifar10", over, data_spec=f"cifar10:{tmp_path}")
        assert cfg.data.augment == augment
        data = load_dataset(cfg.data)
        tr = build_trainer(cfg, data, torch.device("cpu"))
        idx_gen = copy.deepcopy(tr.data_gen)
        batch = tr.prepare_batch()
        idx = torch.randint(len(data), (64,), generator=idx_gen)  # the rows prepare_batch drew
        x, _ = data.get(idx)
        same = (batch.x1 == x).flatten(1).all(1)
        mirrored = (batch.x1 == x.flip(-1)).flatten(1).all(1)
        assert torch.all(same | mirrored)
        if augment == "flip":
            assert (~same).any() and same.any()
        else:
            assert same.all()
        assert data.reference() is data or torch.equal(data.reference().get(idx)[0], x)
    with pytest.raises(BenchError, match="data.augment must be"):
        resolve("flow_matching", "cifar10", ["data.augment=edm"])


def test_flips_refuse_points():
    from bench.data import load_dataset
    from bench.speed import build_trainer

    cfg = resolve("flow_matching", "smoke", ["data.augment=flip", "train.steps=1"])
    with pytest.raises(BenchError, match="flips images"):
        build_trainer(cfg, load_dataset(cfg.data), torch.device("cpu"))
