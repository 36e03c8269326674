"""Reflow (Liu, Gong, Liu, ICLR 2023) and live reflow (a baseline of the shortcut paper).

Reflow, two stages: the flow teacher (stage 1) maps noise x0 to x1_hat with M Euler steps; the
student (copied from the teacher) then flow-matches on the pairs (x0, x1_hat): target x1_hat - x0
at x_t = (1 - t) x0 + t x1_hat, t on the 1/M grid, d = 0. The pairs are generated once, at the
first training step, `num_pairs` in all, in equal pools per label (the classes and the null
label), from a fixed seed so a resumed run regenerates the same pairs; each batch row draws a pair
of its own label, so the data's class frequencies and label dropout carry over.
The teacher is queried per label (unguided: the null pool holds its unconditional samples).
Sampling: Euler at d = 0, CFG at scale w (when w != 1) at every step, like flow matching.

Live reflow, a baseline of the shortcut paper, as the authors' code (kvfrans/shortcut-models,
baselines/targets_livereflow.py): (1 - k) B flow-matching rows and k B reflow rows. A reflow row
draws x1_hat = sg(an on-the-fly `rollout_steps`-step Euler roll-out of the model itself from its
noise x0, flow queries) and is trained along the whole reflowed path: t on the 1/M grid,
x_t = (1 - t) x0 + t x1_hat, queried at d = 1, target x1_hat - x0. With CFG the roll-out is
guided at the training-time scale w (baked in, as the shortcut's bootstrap CFG). The reflow rows
keep their labels (label dropout only on the flow rows). Sampling: every n < M takes its n Euler
steps with the d = 1 query (one pass, no CFG); n = M is Euler with the flow query and CFG at w.
`recipe = "authors"` sets the knobs as their code runs them (a knob set otherwise is logged as a
deviation, `method.deviations`):
- k = 1/8: `bootstrap_size = batch_size // bootstrap_every` (line 26), bootstrap_every 8 in train.py;
- flow_d = "min": the flow rows and the roll-out query dt_base = log2(M), d = 1/M (lines 22-23, 33,
  39), and so does evaluation at n = M (helper_eval.py: dt_base = log2(denoise_timesteps));
  "zero" queries d = 0;
- bootstrap_ema = false: the roll-out calls `train_state.call_model`, the live weights (lines 33, 39);
  true rolls out the EMA weights;
- eval_weights = "live": their evaluation samples with the live weights (use_ema 0 in train.py).
Before these knobs existed, live reflow ran k = 1/4, flow rows at d = 0 and an EMA roll-out,
evaluated with the EMA (checkpoints without flow_d load with those values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.errors import BenchError
from methods.base import (Batch, LossLadder, Method, MethodOptions, Targets, TeacherOptions, check_fraction, euler, eval_mode, full,
                          grid_times, interpolate, velocity)

PAIR_CHUNK = 4096  # rows per teacher call while generating pairs


@dataclass
class ReflowOptions(TeacherOptions):
    num_pairs: int = 50_000  # (x0, x1_hat) pairs generated with the teacher at M Euler steps, over all labels
    pair_seed: int = 0  # seed of the pairs' noise (fixed, so a resume regenerates the same pairs)

    def validate(self) -> None:
        if self.num_pairs < 1:
            raise BenchError(f"method.num_pairs must be >= 1, got {self.num_pairs}.")


class Reflow(Method):
    """Flow matching on (noise, teacher sample) pairs from an M-step flow teacher; Euler at d = 0."""

    name = "reflow"
    family = "distillation"
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling
    Options = ReflowOptions
    needs_teacher = True
    init_from_teacher = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs_x0 = self.pairs_x1 = None  # (L, P, *shape): L = labels (classes + null), P pairs each

    @property
    def num_labels(self) -> int:
        return self.num_classes + 1

    @property
    def pairs_per_label(self) -> int:
        return -(-self.opts.num_pairs // self.num_labels)

    @torch.no_grad()
    def generate_pairs(self, shape: tuple[int, ...], device, dtype=torch.float32) -> None:
        """x0 ~ N(0, I) and x1_hat = the teacher's M-step Euler sample from x0, for every label."""
        if self.teacher is None:
            raise BenchError("reflow needs a teacher (set teacher=RUN_ID or a checkpoint path).")
        g = torch.Generator(device).manual_seed(self.opts.pair_seed)
        L, P, M = self.num_labels, self.pairs_per_label, self.opts.M
        x0 = torch.randn(L * P, *shape, generator=g, device=device, dtype=dtype)
        y = torch.arange(L, device=device).repeat_interleave(P)
        x1 = torch.empty_like(x0)
        self.teacher.eval()  # frozen: no dropout
        for s in range(0, L * P, PAIR_CHUNK):
            x, yy = x0[s : s + PAIR_CHUNK], y[s : s + PAIR_CHUNK]
            x1[s : s + PAIR_CHUNK] = euler(x, lambda x_, t: self.teacher(x_, t, full(0.0, x_), yy), M)
        self.pairs_x0, self.pairs_x1 = x0.view(L, P, *shape), x1.view(L, P, *shape)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        y = batch.y
        B, dev = y.shape[0], y.device
        if self.pairs_x0 is None:
            self.generate_pairs(tuple(batch.x1.shape[1:]), dev, batch.x1.dtype)
        idx = torch.randint(self.pairs_per_label, (B,), generator=generator, device=dev)
        x0, x1 = self.pairs_x0[y, idx], self.pairs_x1[y, idx]
        t = grid_times(B, self.opts.M, generator, dev)
        return Targets(x_t=interpolate(x0, x1, t), t=t, d=torch.zeros_like(t), y=y, target=x1 - x0)

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        # the one-off pair generation (pairs x M teacher rows), spread over the training steps
        pair_rows = self.pairs_per_label * self.num_labels * self.opts.M
        return {"forward_rows": batch_size, "backward_rows": batch_size,
                "nograd_rows": pair_rows / max(self.train_steps, 1)}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        tt = full(t, x)
        v = velocity(model, x, tt, torch.zeros_like(tt), y, self.opts.cfg_scale, self.null_class)
        return x + v / num_sampling_steps


LIVE_REFLOW_RECIPES: dict[str, dict[str, object]] = {
    "authors": {"k": 0.125, "flow_d": "min", "bootstrap_ema": False, "eval_weights": "live"},
}


@dataclass
class LiveReflowOptions(MethodOptions):
    # the published setting the knobs below default to: "authors" (their targets_livereflow.py; see the module
    # docstring); a knob set in a profile or with --set is logged as a deviation
    recipe: str = "authors"
    k: float = 0.125  # share of each batch on the d = 1 reflow target (authors: batch_size // bootstrap_every, 1/8)
    rollout_steps: int = 8  # Euler steps of the model's own roll-out that makes x1_hat (authors: 8)
    bootstrap_ema: bool = False  # roll out the EMA weights (authors: false, the live weights)
    flow_d: str = "min"  # d of the flow rows, the roll-out's queries and n = M sampling: "min" (1/M, authors) or "zero"
    eval_weights: str = "live"  # weights evaluation samples with: "live" (authors' use_ema = 0) or "ema"

    def validate(self) -> None:
        if self.recipe not in LIVE_REFLOW_RECIPES:
            raise BenchError(f"method.recipe must be {' or '.join(LIVE_REFLOW_RECIPES)}, got {self.recipe!r}.")
        check_fraction("method.k", self.k)
        if self.rollout_steps < 1:
            raise BenchError(f"method.rollout_steps must be >= 1, got {self.rollout_steps}.")
        if self.flow_d not in ("zero", "min"):
            raise BenchError(f"method.flow_d must be zero or min, got {self.flow_d!r}.")
        if self.eval_weights not in ("ema", "live"):
            raise BenchError(f"method.eval_weights must be ema or live, got {self.eval_weights!r}.")

    def deviations(self) -> dict[str, object]:
        published = {**LIVE_REFLOW_RECIPES[self.recipe], "rollout_steps": 8}
        return {key: getattr(self, key) for key, value in published.items() if getattr(self, key) != value}


def legacy_live_reflow_options(options: dict) -> dict:
    """Options of a live-reflow run stored before the recipe's knobs existed: the values it ran with."""
    if "flow_d" in options:
        return options
    return {**options, "flow_d": "zero", "eval_weights": "ema"}


class LiveReflow(Method):
    """Flow matching plus the d = 1 code trained along the model's own reflowed paths; n < M steps query d = 1."""

    name = "live_reflow"
    family = "shortcut and MeanFlow"
    sampling_time_options = frozenset()  # cfg_scale guides the roll-out targets: a new scale is a new model
    Options = LiveReflowOptions

    @property
    def flow_d(self) -> float:
        return {"zero": 0.0, "min": 1.0 / self.opts.M}[self.opts.flow_d]

    @property
    def eval_weights(self) -> str:
        return self.opts.eval_weights

    def num_reflow_rows(self, batch_size: int) -> int:
        return int(round(batch_size * self.opts.k))

    @torch.no_grad()
    def rollout(self, net, x0, y):
        """x1_hat: `rollout_steps` Euler steps of the flow query (at flow_d, guided at w) from x0 at t = 0, the
        network in eval mode (targets_livereflow.py lines 33, 39: `train=False`, no dropout)."""
        with eval_mode(net):
            return euler(x0, lambda x, t: velocity(net, x, t, full(self.flow_d, t), y, self.opts.cfg_scale, self.null_class),
                         self.opts.rollout_steps)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev, M = x1.shape[0], x1.device, self.opts.M
        nb = self.num_reflow_rows(B)
        t_f = grid_times(B - nb, M, generator, dev)
        x_f = interpolate(x0[nb:], x1[nb:], t_f)
        y_r = batch.labels_kept()[:nb]  # the authors drop labels on the flow rows only
        x1_hat = self.rollout(ema if self.opts.bootstrap_ema else model, x0[:nb], y_r)
        t_r = grid_times(nb, M, generator, dev).to(x1.dtype)  # the whole reflowed path, not only t = 0
        groups = torch.zeros(B, dtype=torch.bool, device=dev)
        groups[:nb] = True
        return Targets(
            x_t=torch.cat([interpolate(x0[:nb], x1_hat, t_r), x_f]),
            t=torch.cat([t_r, t_f]),
            d=torch.cat([torch.ones_like(t_r), full(self.flow_d, t_f)]),
            y=torch.cat([y_r, y[nb:]]),
            target=torch.cat([x1_hat - x0[:nb], x1[nb:] - x0[nb:]]),
            info={"row_group/reflow": groups, "row_group/flow": ~groups},
        )

    def loss_ladder(self) -> LossLadder:
        """The d = 1 rows on the model's own roll-outs over the flow rows they are rolled out with."""
        return LossLadder(("reflow", "flow"), ("reflow (d = 1)", "flow (d = 0)"), "flow", "reflow loss at d = 1 and the flow loss")

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        rows_per_query = 2 if self.opts.cfg_scale != 1.0 else 1  # `velocity` guides on 2 rows per row
        nograd = self.num_reflow_rows(batch_size) * self.opts.rollout_steps * rows_per_query
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": nograd}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        tt = full(t, x)
        if num_sampling_steps < self.opts.M:  # the d = 1 code at every step, as the authors sample
            return x + model(x, tt, torch.ones_like(tt), y) / num_sampling_steps
        v = velocity(model, x, tt, full(self.flow_d, tt), y, self.opts.cfg_scale, self.null_class)
        return x + v / num_sampling_steps
