"""Consistency training and distillation (Song, Dhariwal, Chen, Sutskever, ICML 2023), in flow form.

The consistency function comes from the velocity parameterisation,
  F(x_t, t) = x_t + (1 - t) f(x_t, t, 0, y)   (a prediction of x1; F(x, 1) = x by construction),
queried at d = 0, the flow teacher's query, so a student copied from the teacher starts at the
teacher's denoiser E[x1 | x_t]. Two times on one path, t < t2 = t + delta; the target keeps
F_theta(x_t, t) = sg(F_ema(x_t2, t2)), written as a velocity target for the shared MSE:
  target = (sg(F_ema(x_t2, t2)) - x_t) / (1 - t).
- training (CT): x_t2 = (1 - t2) x0 + t2 x1 with the same x0, x1; delta = 1, 1/2, ..., 1/M in
  equal phases of train.steps (coarse to fine), t on the grid of multiples of delta;
- distillation (CD): x_t2 = x_t + delta T(x_t, t, 0) with the flow teacher T, delta = 1/M, t on
  the 1/M grid; the student starts as a copy of the teacher.
Sampling with n steps (multistep consistency sampling): x1_hat = F(x, t), then
x <- (1 - t') z + t' x1_hat with fresh z ~ N(0, I), t' = t + 1/n; the last step returns x1_hat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from methods.base import Batch, Method, MethodOptions, Targets, bshape, full, grid_times, interpolate, velocity


def ct_phase(step: int, train_steps: int, M: int) -> int:
    """Phase p (0 .. log2 M) of training step `step` (0-based): delta = 2^-p; equal shares of train_steps."""
    K = int(math.log2(M)) + 1
    if train_steps <= 0:
        return K - 1
    return min(step * K // train_steps, K - 1)


def ct_delta(step: int, train_steps: int, M: int) -> float:
    """The consistency-training curriculum: delta = 1, 1/2, ..., 1/M in equal phases."""
    return 2.0 ** -ct_phase(step, train_steps, M)


@dataclass
class ConsistencyOptions(MethodOptions):
    target_weights: str = "ema"  # network that builds sg(F(x_t2, t2)): "ema" (Song et al.) or "model" (the student, as iCT)

    def validate(self) -> None:
        if self.target_weights not in ("ema", "model"):
            raise BenchError(f"method.target_weights must be ema or model, got {self.target_weights!r}.")


@dataclass
class ConsistencyDistillationOptions(ConsistencyOptions):
    teacher: str = ""  # finished flow-matching run id or checkpoint path ("" = train one first, as a nested run)


class _Consistency(Method):
    """Shared by CT and CD: the consistency function, the target and multistep sampling."""

    stochastic_sampler = True
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling

    def consistency_fn(self, net, x, t, y, cfg_scale: float = 1.0):
        """F(x, t) = x + (1 - t) f(x, t, 0, y), t: (B,)."""
        v = velocity(net, x, t, torch.zeros_like(t), y, cfg_scale, self.null_class)
        return x + bshape(1 - t, x) * v

    def _target(self, model, ema, x_t, t, x_t2, t2, y):
        net = ema if self.opts.target_weights == "ema" else model
        with torch.no_grad():
            F2 = self.consistency_fn(net, x_t2, t2, y)
        return (F2 - x_t) / bshape(1 - t, x_t)

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        x1_hat = self.consistency_fn(model, x, full(t, x), y, self.opts.cfg_scale)
        t_next = t + 1.0 / num_sampling_steps
        if t_next >= 1.0:
            return x1_hat  # (1 - t') z + t' x1_hat at t' = 1; no noise drawn
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (1 - t_next) * z + t_next * x1_hat


class ConsistencyTraining(_Consistency):
    """Consistency training from data alone, delta curriculum 1 -> 1/M; multistep consistency sampling."""

    name = "consistency_training"
    Options = ConsistencyOptions

    def delta(self, step: int) -> float:
        return ct_delta(step, self.train_steps, self.opts.M)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev = x1.shape[0], x1.device
        delta = self.delta(step)
        t = grid_times(B, round(1 / delta), generator, dev)
        t2 = t + delta
        x_t, x_t2 = interpolate(x0, x1, t), interpolate(x0, x1, t2)
        target = self._target(model, ema, x_t, t, x_t2, t2, y)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=y, target=target,
                       info={"delta": torch.full((), delta, device=dev)})  # not torch.tensor: a blocking copy on CUDA

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": batch_size}


class ConsistencyDistillation(_Consistency):
    """Consistency distillation of a flow teacher (one Euler step of 1/M); multistep consistency sampling."""

    name = "consistency_distillation"
    Options = ConsistencyDistillationOptions
    needs_teacher = True
    init_from_teacher = True

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev, M = x1.shape[0], x1.device, self.opts.M
        if self.teacher is None:
            raise BenchError("consistency distillation needs a teacher (set teacher=RUN_ID or a checkpoint path).")
        delta = 1.0 / M
        t = grid_times(B, M, generator, dev)
        t2 = t + delta
        x_t = interpolate(x0, x1, t)
        with torch.no_grad():
            x_t2 = x_t + delta * self.teacher(x_t, t, torch.zeros_like(t), y)
        target = self._target(model, ema, x_t, t, x_t2, t2, y)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=y, target=target)

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": 2 * batch_size}
