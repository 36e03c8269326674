"""Progressive distillation (Salimans and Ho, ICLR 2022), in flow form.

log2(M / final_steps) stages, each an equal share of train.steps (final_steps = 1: down to a
one-step student; 4: the 4-step student the PD, CFD and RDD papers compare, two stages fewer).
At stage i the teacher takes two steps of size d = 2^(i-1) / M and the student learns one step
of size 2d:
  target = sg((v1 + v2) / 2), v1 = T(x_t, t, d), v2 = T(x_t + d v1, t + d, d),
with t on the grid of multiples of 2d and the student queried at (x_t, t, 2d). Stage 1's teacher
is the flow-matching teacher (queried at d = 0, its only query); after each stage the teacher
becomes a frozen copy of the student. The student starts as a copy of the flow teacher.
CFG (`cfg`, when cfg_scale = w != 1): "baked" (the default, as the authors' code:
kvfrans/shortcut-models baselines/targets_progressive.py line 29 guides at cfg_scale only while
dt_base == log2(M) - 1, the first stage, under `bootstrap_cfg` 1 as their ImageNet command sets it)
guides stage 1's teacher, v = v_u + w (v_c - v_u), so every stage inherits the guidance and sampling
takes one unguided pass per step; "sampling" (logged as a deviation) keeps the targets unguided and
guides every sampling step at scale w.
Sampling: Euler with d = 1/n.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from methods.base import Batch, Method, Targets, TeacherOptions, full, grid_times, interpolate, velocity


def num_stages(M: int, final_steps: int = 1) -> int:
    """log2(M / final_steps): the stages from the M-step teacher down to a final_steps-step student."""
    return int(math.log2(M // final_steps))


def stage_of_step(step: int, train_steps: int, M: int, final_steps: int = 1) -> int:
    """The stage (1 .. log2(M / final_steps)) that training step `step` (0-based) belongs to; equal shares of train_steps."""
    K = num_stages(M, final_steps)
    if train_steps <= 0:
        return K
    return min(step * K // train_steps, K - 1) + 1


def stage_bounds(stage: int, train_steps: int, M: int, final_steps: int = 1) -> tuple[int, int]:
    """[first, end) training steps of `stage` (1-based), as stage_of_step assigns them."""
    K = num_stages(M, final_steps)
    first = -(-(stage - 1) * train_steps // K)  # ceil
    end = train_steps if stage == K else -(-stage * train_steps // K)
    return first, end


def teacher_step_size(stage: int, M: int) -> float:
    """d of the teacher's two steps at `stage`: 1/M, 2/M, ..., 1/2 (the student learns 2d)."""
    return 2 ** (stage - 1) / M


@dataclass
class ProgressiveOptions(TeacherOptions):
    refresh_from: str = "ema"  # student weights that become the next stage's teacher: "ema" or "model"
    # where guidance at cfg_scale != 1 goes: "baked" (the authors' code, targets_progressive.py with bootstrap_cfg 1
    # as their ImageNet command: stage 1's teacher targets guided, the student samples unguided) or "sampling"
    # (CFG at every sampling step; logged as a deviation when cfg_scale != 1). At cfg_scale = 1 the two are the same
    cfg: str = "baked"
    # the student's step count the stages stop at: 1 (distil to one step) or e.g. 4 (log2(M / 4) stages, the 4-step
    # student the PD / CFD / RDD papers compare; stages stay equal shares of train.steps); cfd and rdd inherit it
    final_steps: int = 1

    def validate(self) -> None:
        if self.M < 2:
            raise BenchError(f"progressive distillation needs M >= 2 (log2 M stages), got M = {self.M}.")
        f = self.final_steps
        if not (1 <= f < self.M and f & (f - 1) == 0):
            raise BenchError(f"method.final_steps must be a power of two below M = {self.M} (1 = a one-step student), got {f}.")
        if self.refresh_from not in ("ema", "model"):
            raise BenchError(f"method.refresh_from must be ema or model, got {self.refresh_from!r}.")
        if self.cfg not in ("sampling", "baked"):
            raise BenchError(f"method.cfg must be sampling or baked, got {self.cfg!r}.")

    def deviations(self) -> dict[str, object]:
        # the authors bake the guidance into stage 1's targets; at cfg_scale = 1 there is none to place
        return {"cfg": self.cfg} if self.cfg == "sampling" and self.cfg_scale != 1.0 else {}


class Progressive(Method):
    """Progressive distillation of a flow teacher into a final_steps-step model over log2(M / final_steps) stages."""

    name = "progressive"
    family = "distillation"
    Options = ProgressiveOptions
    needs_teacher = True
    init_from_teacher = True

    sampling_time_options = frozenset({"cfg_scale"})  # with cfg = sampling the targets are unguided (baked: see is_sampling_time)

    @classmethod
    def is_sampling_time(cls, name: str, options) -> bool:
        return super().is_sampling_time(name, options) and not (name == "cfg_scale" and options.cfg == "baked")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stage_teacher: nn.Module | None = None  # frozen copy of the student; None while stage 1's teacher is in use
        self._pending: dict | None = None  # stage-teacher weights loaded before any teacher module exists (sampling only)

    @property
    def num_stages(self) -> int:
        return num_stages(self.opts.M, self.opts.final_steps)

    def stage(self, step: int) -> int:
        return stage_of_step(step, self.train_steps, self.opts.M, self.opts.final_steps)

    def lr_span(self, step: int, train_steps: int) -> tuple[int, int]:
        """Each stage runs its own schedule (CFD's released code: cosine to 0 per stage)."""
        o = self.opts
        first, end = stage_bounds(stage_of_step(step, train_steps, o.M, o.final_steps), train_steps, o.M, o.final_steps)
        return first, end - first

    def current_teacher(self) -> nn.Module:
        if self._pending is not None and self.teacher is not None:
            weights, self._pending = self._pending, None
            self.load_state_dict({"stage_teacher": weights})
        if self._stage_teacher is not None:
            return self._stage_teacher
        if self.teacher is None:
            raise BenchError("progressive distillation needs a teacher (set teacher=RUN_ID or a checkpoint path).")
        return self.teacher

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev, M = x1.shape[0], x1.device, self.opts.M
        stage = self.stage(step)
        d = teacher_step_size(stage, M)
        t = grid_times(B, M // 2**stage, generator, dev)  # multiples of 2d = 2^stage / M
        x_t = interpolate(x0, x1, t)
        d_query = full(0.0 if self._stage_teacher is None else d, x_t)  # the flow teacher's only query is d = 0
        T = self.current_teacher()
        w = self.opts.cfg_scale if self._stage_teacher is None and self.opts.cfg == "baked" else 1.0
        with torch.no_grad():
            v1 = velocity(T, x_t, t, d_query, y, w, self.null_class)
            v2 = velocity(T, x_t + d * v1, t + d, d_query, y, w, self.null_class)
            target = (v1 + v2) / 2
        return Targets(x_t=x_t, t=t, d=full(2 * d, x_t), y=y, target=target,
                       info={"stage": torch.full((), float(stage), device=dev)})  # not torch.tensor: a blocking copy on CUDA

    def on_step_end(self, step, model, ema) -> None:
        done = step + 1  # steps completed
        if done < self.train_steps and self.stage(done) != self.stage(step):
            self.refresh_teacher(ema if self.opts.refresh_from == "ema" else model)

    def refresh_teacher(self, student: nn.Module) -> None:
        """The next stage's teacher: a frozen copy of the student's weights."""
        if self._stage_teacher is None:
            self._stage_teacher = copy.deepcopy(student)
        self._stage_teacher.load_state_dict(student.state_dict())
        self._stage_teacher.requires_grad_(False).eval()

    def state_dict(self):
        if self._stage_teacher is None:
            return {"stage_teacher": self._pending}
        return {"stage_teacher": self._stage_teacher.state_dict()}

    def load_state_dict(self, state) -> None:
        weights = state.get("stage_teacher")
        if weights is None:
            self._stage_teacher = None
            return
        if self._stage_teacher is None:
            if self.teacher is None:  # e.g. evaluating a checkpoint: the stage teacher is not needed to sample
                self._pending = weights
                return
            self._stage_teacher = copy.deepcopy(self.teacher)
        self._stage_teacher.load_state_dict(weights)
        self._stage_teacher.requires_grad_(False).eval()

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        # baked CFG: stage 1's two teacher queries are guided (2 rows each), in the first 1/num_stages of the steps
        guided = self.opts.cfg == "baked" and self.opts.cfg_scale != 1.0
        return {"forward_rows": batch_size, "backward_rows": batch_size,
                "nograd_rows": 2 * batch_size * (1 + (1 / self.num_stages if guided else 0))}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n = num_sampling_steps
        tt = full(t, x)
        w = 1.0 if self.opts.cfg == "baked" else self.opts.cfg_scale
        v = velocity(model, x, tt, full(1.0 / n, x), y, w, self.null_class)
        return x + v / n

