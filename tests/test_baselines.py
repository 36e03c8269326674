"""The baselines (progressive, consistency training/distillation, reflow, live reflow, MeanFlow):
targets against answers worked out by hand or in closed form for Gaussian data, NFE per sampling
run, determinism, frozen teachers, the progressive stage schedule and the consistency curriculum.

Closed forms used below (x0 ~ N(0, 1), x1 ~ N(mu, sigma^2), x_t = (1 - t) x0 + t x1), derived here:
- std of x_t: s(t) = sqrt((1 - t)^2 + t^2 sigma^2); the probability-flow ODE keeps the standardised
  value fixed, so the exact map from t to t2 is phi(x) = t2 mu + s(t2) (x - t mu) / s(t);
- the marginal velocity is v(x, t) = mu + s'(t) / s(t) (x - t mu), s'(t) = (t sigma^2 - (1 - t)) / s(t);
- the exact average velocity over [t, t + d] is (phi_{t -> t+d}(x) - x) / d; from t = 0 with d = 1
  it maps x0 to mu + sigma x0 (the exact one-step generator).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.evaluation.sampling import count_nfe, sample
from methods import METHODS
from methods.base import Batch
from methods.consistency import ConsistencyDistillation, ConsistencyTraining, ct_delta, ct_phase
from methods.meanflow import MeanFlow, average_velocity_jvp
from methods.progressive import Progressive, stage_of_step, teacher_step_size
from methods.reflow import LiveReflow, Reflow

NEW = ["progressive", "consistency_training", "consistency_distillation", "reflow", "live_reflow", "meanflow"]
MU, SIGMA = 1.5, 0.5


# ----------------------------------------------------------------------------- closed forms


def std_t(t):
    return torch.sqrt((1 - t) ** 2 + t**2 * SIGMA**2)


def b(v, x):
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def exact_map(x, t, t2):
    return b(t2, x) * MU + b(std_t(t2), x) * (x - b(t, x) * MU) / b(std_t(t), x)


def exact_velocity(x, t):
    st = std_t(t)
    ds = (t * SIGMA**2 - (1 - t)) / st
    return MU + b(ds / st, x) * (x - b(t, x) * MU)


class ExactVelocity(nn.Module):
    """The flow teacher with infinite capacity: v(x, t), ignores d and y."""

    def forward(self, x, t, d, y):
        return exact_velocity(x, t)


class ExactAverage(nn.Module):
    """The exact average velocity over [t, t + d] (velocity at d = 0)."""

    def forward(self, x, t, d, y):
        jump = (exact_map(x, t, t + d) - x) / b(d, x).clamp(min=1e-12)
        return torch.where(b(d, x) > 0, jump, exact_velocity(x, t))


class ExactConsistency(nn.Module):
    """f(x, t, 0) such that x + (1 - t) f = the ODE's end point from (x, t): the ideal consistency model."""

    def forward(self, x, t, d, y):
        return (exact_map(x, t, torch.ones_like(t)) - x) / b(1 - t, x).clamp(min=1e-12)


class Affine(nn.Module):
    """f(x, t, d, y) = a x + c[y]: simple enough to work targets out by hand."""

    def __init__(self, a: float, c: torch.Tensor):
        super().__init__()
        self.a, self.c = a, c

    def forward(self, x, t, d, y):
        return self.a * x + b(self.c[y], x).expand_as(x)


class TinyNet(nn.Module):
    """A small trainable f(x, t, d, y) on 2-D points (for teachers, gradients and NFE)."""

    def __init__(self, num_classes: int = 0, dim: int = 2):
        super().__init__()
        self.emb = nn.Embedding(num_classes + 1, 4)
        self.net = nn.Sequential(nn.Linear(dim + 2 + 4, 16), nn.SiLU(), nn.Linear(16, dim))

    def forward(self, x, t, d, y):
        return self.net(torch.cat([x, t[:, None], d[:, None], self.emb(y)], 1))


def make(name, M=8, train_steps=80, teacher=None, num_classes=0, **opts):
    cls = METHODS[name]
    o = cls.Options(M=M, **opts)
    o.validate()
    return cls(o, num_classes, teacher, train_steps=train_steps)


def gauss_batch(B=4096, seed=0, dim=1, num_classes=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, dim, generator=g, dtype=torch.float64)
    x1 = MU + SIGMA * torch.randn(B, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, num_classes, (B,), generator=g) if num_classes else torch.zeros(B, dtype=torch.long)
    return Batch(x1=x1, x0=x0, y=y, null_class=num_classes)


# ----------------------------------------------------------------------------- schedules


def test_progressive_stage_schedule_is_equal_shares_of_the_training_steps():
    # M = 8: 3 stages; 30 steps -> 10 each
    assert [stage_of_step(s, 30, 8) for s in range(30)] == [1] * 10 + [2] * 10 + [3] * 10
    # 31 steps: floor(step * 3 / 31) -> stage 1 for 0..10, 2 for 11..20, 3 for 21..30
    assert [stage_of_step(s, 31, 8) for s in range(31)] == [1] * 11 + [2] * 10 + [3] * 10
    # M = 128: 7 stages; teacher step 1/128 doubling to 1/2, the student learns 2d
    assert [stage_of_step(s, 700, 128) for s in (0, 99, 100, 599, 600, 699)] == [1, 1, 2, 6, 7, 7]
    assert [teacher_step_size(i, 128) for i in range(1, 8)] == [1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2]
    # final_steps = 4 at M = 128: 128 -> 64 -> 32 -> 16 -> 8 -> 4, five stages of 100 steps; the last student d = 1/4
    assert [stage_of_step(s, 500, 128, 4) for s in (0, 99, 100, 399, 400, 499)] == [1, 1, 2, 4, 5, 5]
    m = make("progressive", M=128, train_steps=500, final_steps=4, teacher=Affine(0.0, torch.zeros(1, dtype=torch.float64)),
             student_d="step")  # d = the student's step (the authors' default feeds 0)
    m.refresh_teacher(Affine(0.0, torch.zeros(1, dtype=torch.float64)))
    assert set(m.targets(None, None, gauss_batch(64), 499, torch.Generator().manual_seed(0)).d.tolist()) == {1 / 4}


def test_consistency_curriculum_is_coarse_to_fine_in_equal_phases():
    # schedule = fine, M = 8: deltas 1, 1/2, 1/4, 1/8 over 40 steps -> 10 each (the authors' schedule: test_recipes.py)
    assert [ct_delta(s, 40, 8) for s in range(40)] == [1.0] * 10 + [0.5] * 10 + [0.25] * 10 + [0.125] * 10
    assert [ct_phase(s, 800, 128) for s in (0, 99, 100, 699, 700, 799)] == [0, 0, 1, 6, 7, 7]
    # the method uses it: t on the grid of multiples of delta, t2 = t + delta
    m = make("consistency_training", M=8, train_steps=40, schedule="fine")
    net = Affine(0.0, torch.zeros(1, dtype=torch.float64))
    for step, delta in ((0, 1.0), (15, 0.5), (25, 0.25), (39, 0.125)):
        tg = m.targets(net, net, gauss_batch(512), step, torch.Generator().manual_seed(step))
        cells = tg.t / delta
        assert torch.allclose(cells, cells.round()) and tg.t.max() <= 1 - delta + 1e-12
        assert len(torch.unique(tg.t)) == round(1 / delta)


# ----------------------------------------------------------------------------- progressive


def test_progressive_stage1_target_is_the_average_of_two_teacher_euler_steps():
    # affine teacher v = a x + c: v1 = a x + c, v2 = a (x + d v1) + c, so (v1 + v2) / 2 = (a x + c)(1 + a d / 2)
    a, c = 0.7, torch.tensor([0.3], dtype=torch.float64)
    M, steps = 8, 30
    m = make("progressive", M=M, train_steps=steps, teacher=Affine(a, c), student_d="step")
    batch = gauss_batch(256)
    tg = m.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    d = 1 / M
    x_t = (1 - b(tg.t, batch.x0)) * batch.x0 + b(tg.t, batch.x0) * batch.x1
    assert torch.allclose(tg.x_t, x_t)
    assert torch.allclose(tg.target, (a * x_t + 0.3) * (1 + a * d / 2))
    assert torch.allclose(tg.d, torch.full_like(tg.d, 2 * d))  # the student learns one step of 2d
    assert torch.allclose(tg.t * M / 2, (tg.t * M / 2).round())  # t on multiples of 2d


def test_progressive_refreshes_its_teacher_with_the_student_at_stage_boundaries():
    M, steps = 8, 30
    flow_teacher = ExactVelocity()
    m = make("progressive", M=M, train_steps=steps, teacher=flow_teacher, student_d="step")  # ExactAverage reads d
    student = ExactAverage()  # an ideal stage-1 student: its 2/M jumps are exact
    for s in range(9):
        m.on_step_end(s, model=None, ema=student)
    assert m.current_teacher() is flow_teacher  # still stage 1
    m.on_step_end(9, model=None, ema=student)  # the 10th step ends stage 1
    assert m.current_teacher() is not flow_teacher and not any(p.requires_grad for p in m.current_teacher().parameters())
    # stage 2: teacher steps of d = 2/M with the ideal student compose exactly: target = the exact 4/M jump
    batch = gauss_batch(512)
    tg = m.targets(None, None, batch, 10, torch.Generator().manual_seed(1))
    d = 2 / M
    expect = (exact_map(tg.x_t, tg.t, tg.t + 2 * d) - tg.x_t) / (2 * d)
    assert torch.allclose(tg.target, expect, atol=1e-6)  # t is float32 (grid_times)
    assert torch.allclose(tg.d, torch.full_like(tg.d, 2 * d))
    # the last step of training does not refresh (no stage after it)
    m2 = make("progressive", M=M, train_steps=steps, teacher=flow_teacher)
    m2.on_step_end(steps - 1, None, student)
    assert m2.current_teacher() is flow_teacher


def test_progressive_stage_teacher_survives_a_checkpoint():
    torch.manual_seed(0)
    teacher = TinyNet()
    m = make("progressive", M=8, train_steps=30, teacher=teacher)
    student = TinyNet()
    m.on_step_end(9, None, student)
    state = copy.deepcopy(m.state_dict())
    m2 = make("progressive", M=8, train_steps=30, teacher=teacher)
    m2.load_state_dict(state)
    x, t = torch.randn(5, 2), torch.rand(5)
    d, y = torch.full((5,), 0.25), torch.zeros(5, dtype=torch.long)
    assert torch.equal(m2.current_teacher()(x, t, d, y), student(x, t, d, y))
    m3 = make("progressive", M=8, train_steps=30, teacher=teacher)
    m3.load_state_dict(make("progressive", M=8, train_steps=30, teacher=teacher).state_dict())
    assert m3.current_teacher() is teacher
    # evaluating a checkpoint needs no teacher: the stage teacher's weights wait until one is handed over
    m4 = make("progressive", M=8, train_steps=30)
    m4.load_state_dict(state)
    assert m4.state_dict()["stage_teacher"] is state["stage_teacher"]
    m4.teacher = teacher
    assert torch.equal(m4.current_teacher()(x, t, d, y), student(x, t, d, y))


# ----------------------------------------------------------------------------- consistency


def test_consistency_training_at_delta_one_regresses_the_straight_line():
    # delta = 1: t = 0, t2 = 1, F(x1, 1) = x1, so the target is (x1 - x0) / 1 whatever the network
    m = make("consistency_training", M=8, train_steps=40)
    batch = gauss_batch(64)
    net = TinyNet(dim=1).double()
    tg = m.targets(net, net, batch, 0, torch.Generator().manual_seed(0))
    assert torch.all(tg.t == 0) and torch.all(tg.d == 0)
    assert torch.allclose(tg.target, batch.x1 - batch.x0)


def test_consistency_training_target_by_hand():
    # f(x, t, 0) = c (constant): F(x, t) = x + (1 - t) c, so the target is
    # (x_t2 + (1 - t2) c - x_t) / (1 - t) = ((t2 - t)(x1 - x0) + (1 - t2) c) / (1 - t)
    c = torch.tensor([0.4], dtype=torch.float64)
    net = Affine(0.0, c)
    m = make("consistency_training", M=8, train_steps=40)
    batch = gauss_batch(256)
    tg = m.targets(net, net, batch, 30, torch.Generator().manual_seed(3))  # the authors' schedule: delta = 1/4 at step 30
    t = b(tg.t, batch.x0)
    t2 = t + 0.25
    expect = ((t2 - t) * (batch.x1 - batch.x0) + (1 - t2) * 0.4) / (1 - t)
    assert torch.allclose(tg.target, expect)


class ExactStep(nn.Module):
    """A teacher whose one Euler step of 1/M is exact: the average velocity over [t, t + 1/M], for any d."""

    def __init__(self, M):
        super().__init__()
        self.M = M

    def forward(self, x, t, d, y):
        return (exact_map(x, t, t + 1 / self.M) - x) * self.M


def test_consistency_distillation_has_the_exact_consistency_function_as_fixed_point():
    # a teacher whose 1/M step is exact puts x_t2 on x_t's ODE trajectory, where the exact consistency
    # function has the same value; so with it as target network the target is f*(x_t, t) itself
    M = 128
    m = make("consistency_distillation", M=M, train_steps=10, teacher=ExactStep(M))
    batch = gauss_batch(2048)
    ideal = ExactConsistency()
    tg = m.targets(ideal, ideal, batch, 0, torch.Generator().manual_seed(0))  # the training EMA reads x_t2 (authors)
    assert torch.allclose(tg.target, ideal(tg.x_t, tg.t, tg.d, tg.y), atol=1e-5)  # t is float32
    assert torch.all(tg.d == 0) and torch.allclose(tg.t * M, (tg.t * M).round())
    # with the exact velocity (an Euler step) it is off by O(1/M) at most
    m = make("consistency_distillation", M=M, train_steps=10, teacher=ExactVelocity())
    tg = m.targets(ideal, ideal, batch, 0, torch.Generator().manual_seed(0))
    assert (tg.target - ideal(tg.x_t, tg.t, tg.d, tg.y)).abs().max().item() < 0.05


class Scalar(nn.Module):
    """f = w (one parameter): the target network's EMA can be followed by hand."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))

    def forward(self, x, t, d, y):
        return self.w.expand_as(x)


@pytest.mark.parametrize("name", ["consistency_training", "consistency_distillation"])
def test_consistency_target_network_is_an_ema_of_the_student(name):
    # theta^- starts at the student (w = 1); the student moves to w = 3; after two steps with mu = 0.5:
    # 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 0.5 * 2 + 0.5 * 3 = 2.5; the target uses theta^-: F2 = x_t2 + (1 - t2) w^-
    student = Scalar(1.0)
    # a target network of its own: CT's schedule = fine, CD's target = own (the authors' read the training EMA)
    fine = {"schedule": "fine"} if name == "consistency_training" else {"target": "own"}
    m = make(name, M=8, train_steps=40, target_decay=0.5, teacher=Scalar(0.0), **fine)
    batch = gauss_batch(64)
    m.targets(student, None, batch, 39, torch.Generator().manual_seed(0))
    with torch.no_grad():
        student.w.fill_(3.0)
    m.on_step_end(0, student, None)
    m.on_step_end(1, student, None)
    tg = m.targets(student, None, batch, 39, torch.Generator().manual_seed(0))
    t = b(tg.t, tg.x_t)
    x_t2 = tg.x_t + 0.0 if name == "consistency_distillation" else (1 - t - 0.125) * batch.x0 + (t + 0.125) * batch.x1
    assert torch.allclose(tg.target, (x_t2 + (1 - t - 0.125) * 2.5 - tg.x_t) / (1 - t))
    # it travels with the checkpoint; with target_decay = 0 the live weights build the target
    m2 = make(name, M=8, train_steps=40, target_decay=0.5, teacher=Scalar(0.0), **fine)
    m2.load_state_dict(m.state_dict())
    assert m2.target_net(Scalar(7.0)).w.item() == 2.5
    m0 = make(name, M=8, train_steps=40, target_decay=0.0, teacher=Scalar(0.0), **fine)
    assert m0.target_net(student) is student


def test_multistep_consistency_sampling_with_the_exact_model():
    ideal = ExactConsistency()
    m = make("consistency_training", M=128)
    x0 = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(len(x0), dtype=torch.long)
    one = sample(m, ideal, x0, y, 1, torch.Generator().manual_seed(1))
    assert torch.allclose(one, MU + SIGMA * x0)  # x1_hat = F(x0, 0) = the exact one-step map
    for n in (2, 8):
        xs = sample(m, ideal, x0, y, n, torch.Generator().manual_seed(1))
        assert abs(xs.mean().item() - MU) < 0.02 and abs(xs.std().item() - SIGMA) < 0.02
        # the last step returns x1_hat with no new noise: re-noising at t' = 1 would be the identity
    a = sample(m, ideal, x0[:100], y[:100], 4, torch.Generator().manual_seed(5))
    a2 = sample(m, ideal, x0[:100], y[:100], 4, torch.Generator().manual_seed(5))
    c = sample(m, ideal, x0[:100], y[:100], 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, a2) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- reflow


def test_reflow_pairs_come_from_the_teachers_M_step_euler_sampler():
    M = 128
    m = make("reflow", M=M, train_steps=10, teacher=ExactVelocity(), num_pairs=3000)
    m.generate_pairs((1,), torch.device("cpu"), torch.float64)
    x0, x1 = m.pairs_x0.flatten(), m.pairs_x1.flatten()
    # M Euler steps of the exact velocity land within O(1/M) of the exact map mu + sigma x0
    err = (x1 - (MU + SIGMA * x0)).abs()
    assert err.max().item() < 0.05 and err.mean().item() < 0.01
    assert abs(x1.std().item() - SIGMA) < 0.03


def test_reflow_rows_use_pairs_of_their_own_label():
    # teacher v = c[y] (constant per label): x1_hat = x0 + c[y], so the target of a row is c[its label]
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)  # 2 classes + null
    teacher = Affine(0.0, c)
    teacher.forward = lambda x, t, d, y: c[y]
    m = make("reflow", M=8, train_steps=10, teacher=teacher, num_classes=2, num_pairs=300)
    batch = gauss_batch(512, dim=2, num_classes=2)
    batch.y[::4] = 2  # dropped labels -> the null pool
    tg = m.targets(None, None, batch, 0, torch.Generator().manual_seed(0))
    assert torch.allclose(tg.target, c[batch.y])
    x0 = tg.x_t - b(tg.t, tg.x_t) * tg.target  # x_t on the straight line from its pair's x0
    assert torch.cdist(x0, m.pairs_x0.reshape(-1, 2)).min(1).values.max() < 1e-6
    assert torch.all(tg.d == 0)


def test_live_reflow_targets_by_hand():
    # the model's own roll-out with a constant velocity c lands on x0 + c, so the d = 1 rows regress c
    # along the straight path from x0 to x1_hat = x0 + c, at every t of the 1/M grid (not only t = 0)
    c = torch.tensor([0.25], dtype=torch.float64)
    M, nb = 8, 64
    m = make("live_reflow", M=M, k=0.25, rollout_steps=8, bootstrap_ema=True, flow_d="zero")
    batch = gauss_batch(256)
    tg = m.targets(None, Affine(0.0, c), batch, 0, torch.Generator().manual_seed(0))
    assert torch.allclose(tg.target[:nb], torch.full_like(tg.target[:nb], 0.25))
    assert torch.all(tg.d[:nb] == 1)
    t_r = tg.t[:nb]
    assert torch.all(t_r * M == torch.round(t_r * M)) and t_r.min() == 0 and (t_r > 0).float().mean() > 0.7
    assert len(set(t_r.tolist())) > M // 2  # spread over the grid
    assert torch.allclose(tg.x_t[:nb], batch.x0[:nb] + b(t_r, batch.x0) * 0.25)
    assert torch.allclose(tg.target[nb:], batch.x1[nb:] - batch.x0[nb:]) and torch.all(tg.d[nb:] == 0)
    # with the exact velocity and a fine roll-out, x1_hat -> mu + sigma x0
    m = make("live_reflow", M=8, k=0.25, rollout_steps=256, bootstrap_ema=True)
    tg = m.targets(None, ExactVelocity(), batch, 0, torch.Generator().manual_seed(0))
    assert torch.allclose(tg.target[:nb], MU + SIGMA * batch.x0[:nb] - batch.x0[:nb], atol=2e-2)


def test_live_reflow_rows_keep_their_labels():
    # label dropout reaches the flow rows only (the authors' code): the roll-out and the d = 1 rows see y_kept
    m = make("live_reflow", M=8, k=0.5, num_classes=3)
    batch = gauss_batch(64, num_classes=3)
    batch.y_kept = batch.y.clone()
    batch.y = torch.full_like(batch.y, 3)  # every label dropped
    tg = m.targets(Affine(0.0, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)), None, batch, 0,
                   torch.Generator().manual_seed(0))
    assert torch.equal(tg.y[:32], batch.y_kept[:32]) and torch.all(tg.y[32:] == 3)
    assert torch.allclose(tg.target[:32, 0], batch.y_kept[:32].double())  # the roll-out was conditional


class DRecorder(nn.Module):
    """Records the (t, d) of every query; returns zeros."""

    def __init__(self):
        super().__init__()
        self.queries = []

    def forward(self, x, t, d, y):
        self.queries.append((t.clone(), d.clone(), y.clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("flow_d,d_flow", [("min", 1 / 8), ("zero", 0.0)])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_live_reflow_samples_every_n_below_M_with_the_d1_code(n, flow_d, d_flow):
    # n < M: n Euler steps, each one unguided pass at d = 1; n = M: the flow query (authors: d = 1/M) with CFG
    M, w = 8, 2.0
    m = make("live_reflow", M=M, num_classes=3, cfg_scale=w, flow_d=flow_d)
    net = DRecorder()
    sample(m, net, torch.zeros(5, 2), torch.tensor([0, 1, 2, 0, 1]), n)
    if n < M:
        assert len(net.queries) == n
        assert all(torch.all(d == 1) and torch.all(y < 3) for _, d, y in net.queries)
    else:
        assert len(net.queries) == n and all(len(d) == 10 and torch.all(d == d_flow) for _, d, y in net.queries)
    assert [q[0][0].item() for q in net.queries] == [i / n for i in range(n)]


def test_live_reflow_authors_recipe_as_their_code():
    """kvfrans/shortcut-models baselines/targets_livereflow.py: bootstrap_size = batch_size // bootstrap_every
    (line 26; bootstrap_every 8 in train.py), the roll-out and the flow rows at dt_base = log2(M) (lines 22-23,
    33, 39: d = 1/M), the roll-out with train_state.call_model (the live weights), eval with use_ema = 0."""
    M, B = 8, 64
    m = make("live_reflow", M=M)
    assert m.num_reflow_rows(B) == B // 8 and m.eval_weights == "live" and m.opts.deviations() == {}

    class Recorder(nn.Module):  # f = c; records the d of every query
        def __init__(self, c):
            super().__init__()
            self.c, self.ds = c, []

        def forward(self, x, t, d, y):
            self.ds.append(d.clone())
            return torch.full_like(x, self.c)

    live, ema = Recorder(0.5), Recorder(-1.0)
    batch = gauss_batch(B)
    tg = m.targets(live, ema, batch, 0, torch.Generator().manual_seed(0))
    nb = B // 8
    assert len(live.ds) == 8 and not ema.ds  # 8 roll-out steps, all with the live weights
    assert all(torch.all(d == 1 / M) for d in live.ds)  # at the flow level, d = 1/M
    assert torch.allclose(tg.target[:nb], torch.full_like(tg.target[:nb], 0.5))  # x1_hat = x0 + 0.5
    assert torch.all(tg.d[:nb] == 1) and torch.all(tg.d[nb:] == 1 / M)
    # today's former choices are named deviations
    old = make("live_reflow", M=M, k=0.25, bootstrap_ema=True, flow_d="zero", eval_weights="ema")
    assert old.opts.deviations() == {"k": 0.25, "flow_d": "zero", "bootstrap_ema": True, "eval_weights": "ema"}
    from bench.config import Config, resolve
    from bench.train.run import deviation_tag

    cfg = resolve("live_reflow", "smoke", [])
    assert cfg.method.deviations() == {} and deviation_tag(cfg) == {}
    assert resolve("live_reflow", "smoke", ["k=1/4"]).method.deviations() == {"k": 0.25}
    # a run stored before these knobs existed loads with the values it ran (flow rows at d = 0, EMA eval)
    d = cfg.to_dict()
    d["method"] = {k: v for k, v in d["method"].items() if k not in ("flow_d", "eval_weights", "recipe")}
    d["method"].update(k=0.25, bootstrap_ema=True)
    stored = Config.from_dict(d).method
    assert (stored.flow_d, stored.eval_weights, stored.k, stored.bootstrap_ema) == ("zero", "ema", 0.25, True)


# ----------------------------------------------------------------------------- MeanFlow


def test_meanflow_identity_with_the_exact_average_velocity():
    # for the exact average velocity u and the marginal velocity v: u(x, t, d) = v + d * (du/dt along the path)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, generator=g, dtype=torch.float64)
    t = torch.rand(256, generator=g, dtype=torch.float64) * 0.8
    d = torch.rand(256, generator=g, dtype=torch.float64) * (1 - t)
    y = torch.zeros(256, dtype=torch.long)
    v = exact_velocity(x, t)
    u, du = average_velocity_jvp(ExactAverage(), x, t, d, y, v)
    assert torch.allclose(u, ExactAverage()(x, t, d, y))
    assert torch.allclose(v + b(d, x) * du, u, atol=1e-9)


def test_meanflow_targets_match_a_finite_difference_reference():
    m = make("meanflow", M=8, mean_fraction=0.25, adaptive_p=0.0, time_input_scale=1.0)
    batch = gauss_batch(64, dim=2)
    net = ExactAverage()
    tg = m.targets(net, net, batch, 0, torch.Generator().manual_seed(0))
    nb = 16
    v = batch.x1 - batch.x0
    assert torch.all(tg.d[:nb] > 0) and torch.all(tg.d[nb:] == 0) and torch.all(tg.t + tg.d <= 1)
    assert torch.allclose(tg.target[nb:], v[nb:])
    # central difference along (v, 1, -1) in float64
    xs, ts, ds, ys = tg.x_t[:nb], tg.t[:nb], tg.d[:nb], tg.y[:nb]
    eps = 1e-6
    fd = (net(xs + eps * v[:nb], ts + eps, ds - eps, ys) - net(xs - eps * v[:nb], ts - eps, ds + eps, ys)) / (2 * eps)
    assert torch.allclose(tg.target[:nb], v[:nb] + b(ds, xs) * fd, atol=1e-5)


@pytest.mark.parametrize("jvp_ema", [False, True])
def test_meanflow_adaptive_weight_gives_the_gradient_of_the_weighted_loss(jvp_ema):
    # reference: the paper's loss, mean over rows of sg(w) * mean over dims (f - sg(target))^2 with
    # w = 1 / (||target - f||^2 + c)^p, built from the unweighted targets (p = 0) of the same draw
    torch.manual_seed(0)
    model, ema = TinyNet().double(), TinyNet().double()
    batch = gauss_batch(32, dim=2)
    p, c = 1.0, 1e-3

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [q.grad.clone() for q in model.parameters()]

    plain = make("meanflow", M=8, adaptive_p=0.0, jvp_ema=jvp_ema).targets(model, ema, batch, 0, torch.Generator().manual_seed(4))
    pred = model(plain.x_t, plain.t, plain.d, plain.y)
    w = 1 / ((pred.detach() - plain.target).pow(2).sum(1) + c) ** p
    ref = grads((w * (pred - plain.target).pow(2).mean(1)).mean())

    tg = make("meanflow", M=8, adaptive_p=p, adaptive_c=c, jvp_ema=jvp_ema).targets(model, ema, batch, 0, torch.Generator().manual_seed(4))
    assert torch.equal(tg.x_t, plain.x_t) and torch.equal(tg.d, plain.d)
    ours = grads((model(tg.x_t, tg.t, tg.d, tg.y) - tg.target).pow(2).mean(1).mean())  # the trainer's plain MSE
    assert all(torch.allclose(a, b_, rtol=1e-6, atol=1e-12) for a, b_ in zip(ours, ref))


def test_meanflow_one_step_with_the_exact_model_is_the_exact_generator():
    x0 = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(1000, dtype=torch.long)
    assert torch.allclose(sample(make("meanflow", M=8, time_input_scale=1.0), ExactAverage(), x0, y, 1), MU + SIGMA * x0)
    # the network is fed s t and d: a net that reads t / s is the same exact generator
    assert torch.allclose(sample(make("meanflow", M=8, time_input_scale=0.01), Rescaled(ExactAverage(), 0.01), x0, y, 1),
                          MU + SIGMA * x0)


class Rescaled(nn.Module):
    """net(x, t / s, d, y): undoes MeanFlow's time_input_scale s (which scales t only)."""

    def __init__(self, net, s):
        super().__init__()
        self.net, self.s = net, s

    def forward(self, x, t, d, y):
        return self.net(x, t / self.s, d, y)


def test_meanflow_time_input_scale_is_a_reparameterisation():
    # the same function fed s t gives the same targets: the JVP's chain rule carries the factor s
    batch = gauss_batch(64, dim=2)
    ref = make("meanflow", M=8, adaptive_p=0.0, time_input_scale=1.0).targets(ExactAverage(), None, batch, 0, torch.Generator().manual_seed(2))
    tg = make("meanflow", M=8, adaptive_p=0.0, time_input_scale=0.01).targets(Rescaled(ExactAverage(), 0.01), None, batch, 0,
                                                                           torch.Generator().manual_seed(2))
    assert torch.allclose(tg.t, 0.01 * ref.t) and torch.allclose(tg.d, ref.d)
    assert torch.allclose(tg.target, ref.target, atol=1e-5)


def test_meanflow_trains_a_dit_on_digits_shaped_input():
    from torch.autograd.functional import jvp as reverse_mode_jvp

    from bench.models.dit import DiT, PRESETS

    torch.manual_seed(0)
    hidden, depth, heads, patch = PRESETS["DiT-tiny/2"]
    model = DiT((1, 8, 8), 10, hidden=hidden, depth=depth, heads=heads, patch=patch)
    with torch.no_grad():
        for p in model.parameters():  # adaLN-zero starts at f = 0; perturb so the JVP is not trivially 0
            p.add_(0.02 * torch.randn_like(p))
    B = 8
    x, t = torch.randn(B, 1, 8, 8), torch.rand(B) * 0.5
    d, y, v = torch.rand(B) * 0.4, torch.randint(0, 11, (B,)), torch.randn(B, 1, 8, 8)
    _, du = average_velocity_jvp(model, x, t, d, y, v)
    # independent reference: reverse-mode double-vjp trick (the fused CPU attention has no double backward)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        _, ref = reverse_mode_jvp(lambda a, b_, c_: model(a, b_, c_, y), (x, t, d), (v, torch.ones(B), -torch.ones(B)))
    assert du.abs().max() > 0
    assert torch.allclose(du, ref, atol=1e-4, rtol=1e-3)
    # a few training steps through the one trainer
    m = make("meanflow", M=8, mean_fraction=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(2):
        batch = Batch(x1=torch.randn(B, 1, 8, 8).clamp(-1, 1), x0=torch.randn(B, 1, 8, 8), y=y, null_class=10)
        tg = m.targets(model, model, batch, step, torch.Generator().manual_seed(step))
        loss = (model(tg.x_t, tg.t, tg.d, tg.y) - tg.target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert sample(m, model, torch.randn(4, 1, 8, 8), y[:4], 2).shape == (4, 1, 8, 8)


# ----------------------------------------------------------------------------- every new method


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_nfe_per_sampling_run(name, cfg_scale):
    torch.manual_seed(0)
    m = make(name, M=8, num_classes=3, cfg_scale=cfg_scale)
    net = TinyNet(num_classes=3)
    x0, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    for n in (1, 2, 4, 8):
        expect = n if cfg_scale == 1.0 else 2 * n
        if name == "live_reflow" and n < 8:
            expect = n  # the d = 1 code below M: guidance is baked into its training targets
        if name == "progressive":
            expect = n  # cfg = baked (the default, as the authors' code): stage 1's targets carry the guidance
        assert count_nfe(m, net, x0, y, n) == expect, (name, n)


@pytest.mark.parametrize("name", NEW)
def test_declared_passes_per_step_match_the_rows_evaluated(name):
    """passes_per_step (the compute budget) against the rows actually pushed through every network."""
    from bench.evaluation.sampling import NFECounter

    torch.manual_seed(0)
    B, M, steps = 64, 8, 16
    teacher = NFECounter(TinyNet(num_classes=3))
    m = make(name, M=M, train_steps=steps, num_classes=3, teacher=teacher if METHODS[name].needs_teacher else None,
             **({"num_pairs": 40} if name == "reflow" else {}),
             **({"target": "own", "target_decay": 0.0} if name == "consistency_distillation" else {}))  # the target network = the counted model (CT: the EMA)
    model, ema = NFECounter(TinyNet(num_classes=3)), NFECounter(TinyNet(num_classes=3))
    g = torch.Generator().manual_seed(0)
    batch = Batch(x1=torch.randn(B, 2), x0=torch.randn(B, 2), y=torch.randint(0, 4, (B,)), null_class=3)
    m.targets(model, ema, batch, 0, g)
    rows = model.rows + ema.rows + teacher.rows
    declared = m.passes_per_step(B)
    assert declared["forward_rows"] == B and declared["backward_rows"] == B
    if name == "reflow":  # the one-off pairs (4 labels x 10 pairs x M steps), spread over the steps
        assert rows == 4 * 10 * M and declared["nograd_rows"] * steps == rows
    elif name == "meanflow":  # a JVP over the d > 0 rows (primal + tangent) and f on the others (adaptive weight)
        nb = m.num_mean_rows(B)
        assert rows == B and declared["nograd_rows"] == 2 * nb + (B - nb)
    else:
        assert declared["nograd_rows"] == rows


@pytest.mark.parametrize("name", NEW)
def test_training_is_deterministic_and_teachers_get_no_gradient(name):
    from bench.config import resolve
    from bench.train.teachers import TeacherPlan
    from bench.train.trainer import Trainer
    from bench.train.run import prepare

    over = ["train.steps=6", "train.batch_size=32", "model.hidden=32", "model.depth=2", "eval.num_samples=10",
            "train.log_every=3", "method.M=4"] + (["num_pairs=20"] if name == "reflow" else [])

    def train_once():
        cfg = resolve(name, "smoke", over)
        teacher = None
        if METHODS[name].needs_teacher:
            torch.manual_seed(123)
            from bench.models import build_model

            teacher = build_model(cfg.model, (2,), 0)
        p = prepare(cfg, progress=False, teacher=teacher)
        before = None
        if teacher is not None:
            plan = TeacherPlan.check(p, teacher)
            p.method.teacher = plan.teacher.module
            if p.method.init_from_teacher:
                p.model.load_state_dict(teacher.state_dict())
            before = {k: v.clone() for k, v in teacher.state_dict().items()}
        tr = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False)
        start = {k: v.clone() for k, v in tr.model.state_dict().items()}
        tr.fit()
        # it trained: six optimiser steps moved the weights (else equal runs would prove nothing)
        assert tr.step == 6 and any(not torch.equal(start[k], v) for k, v in tr.model.state_dict().items())
        if teacher is not None:
            assert not teacher.training
            assert all(not q.requires_grad and q.grad is None for q in teacher.parameters())
            assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
        return {k: v.clone() for k, v in tr.model.state_dict().items()}

    a, b_ = train_once(), train_once()
    assert all(torch.equal(a[k], b_[k]) for k in a)
