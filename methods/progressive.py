"""Progressive distillation (Salimans and Ho, ICLR 2022), in flow form.

log2(M / final_steps) stages, each an equal share of train.steps (final_steps = 1: down to a
one-step student; 4: the 4-step student the PD, CFD and RDD papers compare, two stages fewer).
At stage i the teacher takes two steps of size d = 2^(i-1) / M and the student learns one step
of size 2d:
  target = sg((v1 + v2) / 2), v1 = T(x_t, t, d), v2 = T(x_t + d v1, t + d, d),
with t on the grid of multiples of 2d and the student queried at (x_t, t, 2d). Stage 1's teacher
is the flow-matching teacher (queried at d = 0, its only query); after each stage the teacher
becomes a frozen copy of the student. The student starts as a copy of the flow teacher.
As the authors' code runs it (kvfrans/shortcut-models at 6010043; each a named, logged deviation
when set otherwise, `deviations()`):
- clip = 4: the teacher's second query point x_t + d v1 is clipped to [-4, 4]
  (baselines/targets_progressive.py lines 34 and 49, `jnp.clip(x_t2, -4, 4)`);
- student_d = "zero": PD's network ignores d (train.py line 140, `ignore_dt` for every train_type but
  shortcut and livereflow; model.py lines 249-250 zero it), so every query, teacher, student and
  sampler alike, is fed d = 0; "step" feeds the teacher d and the student 2d (ours before issue 37);
- dropout_rows = "none": label dropout lives in targets_naive.py and targets_shortcut.py only (the
  DiT's LabelEmbedder, model.py lines 101-105, drops nothing), so PD's rows keep their labels;
- lr_per_stage = false: one optimiser and one learning-rate schedule for the whole run (train.py lines
  146-153: constant lr, no warm-up by default; lines 309-312 refresh only the teacher); true restarts
  train.lr_schedule and its warm-up at every stage (ours before issue 37).
CFG (`cfg`, when cfg_scale = w != 1): "baked" guides stage 1's teacher, v = v_u + w (v_c - v_u), so every
stage inherits the guidance and sampling takes one unguided pass per step (targets_progressive.py
line 29 guides while dt_base == log2(M) - 1, under `bootstrap_cfg` 1, as their ImageNet command sets it
for the shortcut); "sampling" keeps the targets unguided and guides every sampling step at scale w
(train.py line 62, `bootstrap_cfg` 0, their default). Both are the authors' options; neither is a
deviation; the run's params say which ran.
Sampling: Euler with d = 1/n (student_d = "step") or d = 0 (student_d = "zero"). `reading` picks the
network for n steps: "final" (the authors' evaluation, helper_eval.py: the final student at every n)
or "per_stage" (Salimans and Ho's Table 1: at each n the student of the stage that distilled to n
steps, kept at that stage's end; n = M the flow teacher; n below final_steps the final student).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from bench.errors import BenchError
from methods.base import Batch, Method, Targets, TeacherOptions, clip_point, eval_mode, full, grid_times, interpolate, velocity


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
    refresh_from: str = "ema"  # student weights that become the next stage's teacher: "ema" (authors' bootstrap_ema 1) or "model" (their 0)
    # where guidance at cfg_scale != 1 goes: "baked" (stage 1's teacher targets guided, the student samples unguided:
    # targets_progressive.py with bootstrap_cfg 1) or "sampling" (CFG at every sampling step: bootstrap_cfg 0, their
    # default); both the authors' options. At cfg_scale = 1 the two are the same
    cfg: str = "baked"
    # the student's step count the stages stop at: 1 (distil to one step) or e.g. 4 (log2(M / 4) stages, the 4-step
    # student the PD / CFD / RDD papers compare; stages stay equal shares of train.steps)
    final_steps: int = 1
    clip: float = 4.0  # clip the teacher's second query point to [-clip, clip] (authors: targets_progressive.py lines 34, 49); 0 = off
    student_d: str = "zero"  # d fed to PD's queries: "zero" (authors: the network ignores d, train.py line 140) or "step" (teacher d, student 2d)
    dropout_rows: str = "none"  # rows train.label_dropout may drop: "none" (authors: PD's targets keep every label) or "all"
    lr_per_stage: bool = False  # restart train.lr_schedule and its warm-up every stage (authors: one schedule for the run)
    # the network sampled at n steps: "final" (authors' evaluation: the final student at every n) or "per_stage"
    # (Salimans and Ho: the student distilled to n steps; n = M the teacher); read only when sampling
    reading: str = "final"

    # the authors' values of the knobs above; another value is a named deviation
    AUTHORS = {"clip": 4.0, "student_d": "zero", "dropout_rows": "none", "lr_per_stage": False}

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
        if self.clip < 0:
            raise BenchError(f"method.clip must be >= 0 (0 = off), got {self.clip}.")
        if self.student_d not in ("zero", "step"):
            raise BenchError(f"method.student_d must be zero or step, got {self.student_d!r}.")
        if self.dropout_rows not in ("none", "all"):
            raise BenchError(f"method.dropout_rows must be none or all, got {self.dropout_rows!r}.")
        if self.reading not in ("final", "per_stage"):
            raise BenchError(f"method.reading must be final or per_stage, got {self.reading!r}.")

    def deviations(self) -> dict[str, object]:
        # cfg (baked or sampling), refresh_from (bootstrap_ema 1 or 0) and reading are the authors' or the paper's choices
        return {k: getattr(self, k) for k, v in self.AUTHORS.items() if getattr(self, k) != v}


# what a PD run stored before issue 37 ran with: the knobs did not exist
LEGACY_PROGRESSIVE = {"clip": 0.0, "student_d": "step", "dropout_rows": "all", "lr_per_stage": True, "reading": "final"}


def legacy_progressive_options(options: dict) -> dict:
    """Options of a PD (or CFD, RDD) run stored before the authors' knobs existed: the values it ran with."""
    if "student_d" in options:
        return options
    return {**LEGACY_PROGRESSIVE, **options}


class Progressive(Method):
    """Progressive distillation of a flow teacher into a final_steps-step model over log2(M / final_steps) stages."""

    name = "progressive"
    family = "distillation"
    Options = ProgressiveOptions
    needs_teacher = True
    init_from_teacher = True

    # with cfg = sampling the targets are unguided (baked: see is_sampling_time); every stage student is kept for either reading
    sampling_time_options = frozenset({"cfg_scale", "reading"})

    @classmethod
    def is_sampling_time(cls, name: str, options) -> bool:
        return super().is_sampling_time(name, options) and not (name == "cfg_scale" and options.cfg == "baked")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stage_teacher: nn.Module | None = None  # frozen copy of the student; None while stage 1's teacher is in use
        self._pending: dict | None = None  # stage-teacher weights loaded before any teacher module exists (sampling only)
        self._stage_students: dict[int, dict] = {}  # step count n -> the weights (CPU) of the student distilled to n steps
        self._stage_nets: dict[int, list] = {}  # those weights on the sampled network's device (reading = per_stage)
        self._network: tuple[nn.Module, nn.Module] | None = None  # (sampled model, the network inside it) last found

    @property
    def num_stages(self) -> int:
        return num_stages(self.opts.M, self.opts.final_steps)

    def stage(self, step: int) -> int:
        return stage_of_step(step, self.train_steps, self.opts.M, self.opts.final_steps)

    def lr_span(self, step: int, train_steps: int) -> tuple[int, int]:
        """One schedule for the run (the authors'), or each stage its own with lr_per_stage."""
        o = self.opts
        if not o.lr_per_stage:
            return 0, train_steps
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
        feed_d = self.opts.student_d == "step"
        # the flow teacher's only query is d = 0; the authors' PD network ignores d altogether
        d_query = full(d if feed_d and self._stage_teacher is not None else 0.0, x_t)
        if self.opts.dropout_rows == "none":  # the authors' PD rows keep their labels
            y = batch.labels_kept()
        T = self.current_teacher()
        w = self.opts.cfg_scale if self._stage_teacher is None and self.opts.cfg == "baked" else 1.0
        with torch.no_grad(), eval_mode(T):  # the authors' train=False: no dropout in the targets
            v1 = velocity(T, x_t, t, d_query, y, w, self.null_class)
            x_t2 = clip_point(x_t + d * v1, self.opts.clip)
            v2 = velocity(T, x_t2, t + d, d_query, y, w, self.null_class)
            target = (v1 + v2) / 2
        return Targets(x_t=x_t, t=t, d=full(2 * d if feed_d else 0.0, x_t), y=y, target=target,
                       info={"stage": torch.full((), float(stage), device=dev)})  # not torch.tensor: a blocking copy on CUDA

    def on_step_end(self, step, model, ema) -> None:
        done = step + 1  # steps completed
        if done < self.train_steps and self.stage(done) != self.stage(step):
            student = ema if self.opts.refresh_from == "ema" else model
            if self.opts.M not in self._stage_students and self.teacher is not None:  # n = M: the flow teacher, for a
                self.keep_stage_student(self.opts.M, self.teacher)  # checkpoint evaluated later without one
            self.keep_stage_student(self.opts.M >> self.stage(step), student)
            self.refresh_teacher(student)

    def keep_stage_student(self, num_steps: int, student: nn.Module) -> None:
        """The stage's student, distilled to num_steps steps, for reading = per_stage (weights on the CPU)."""
        self._stage_students[num_steps] = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
        self._stage_nets.pop(num_steps, None)

    def refresh_teacher(self, student: nn.Module) -> None:
        """The next stage's teacher: a frozen copy of the student's weights."""
        if self._stage_teacher is None:
            self._stage_teacher = copy.deepcopy(student)
        self._stage_teacher.load_state_dict(student.state_dict())
        self._stage_teacher.requires_grad_(False).eval()

    def state_dict(self):
        kept = {"stage_students": dict(self._stage_students)}
        if self._stage_teacher is None:
            return {"stage_teacher": self._pending, **kept}
        return {"stage_teacher": self._stage_teacher.state_dict(), **kept}

    def load_state_dict(self, state) -> None:
        self._stage_students = dict(state.get("stage_students") or {})
        self._stage_nets = {}
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

    @contextlib.contextmanager
    def sampled_net(self, model: nn.Module, num_sampling_steps: int) -> Iterator[tuple[nn.Module, bool]]:
        """(network, is it the flow teacher) to sample n steps with: the final student (`model`) unless reading =
        per_stage. A stage student's weights are copied into `model`'s network for the call and copied back after,
        so whatever wraps the network (the evaluator's precision, an NFE counter, a compiled graph) wraps them too.
        n = M: the flow teacher's weights, kept at stage 1's end; a student not distilled yet (an evaluation during
        training): the current model."""
        n, o = num_sampling_steps, self.opts
        weights = self._stage_students.get(n) if o.reading == "per_stage" and n > o.final_steps else None
        if weights is None and o.reading == "per_stage" and n >= o.M and self.teacher is not None:
            yield self.teacher, True  # stage 1 has not ended yet: no copy of the teacher's weights
            return
        if weights is None:
            yield model, False
            return
        own = self._network_in(model, weights).state_dict(keep_vars=True)
        dst = [own[k].detach() for k in weights]
        if n not in self._stage_nets:  # the student's weights on the network's device, once
            self._stage_nets[n] = [weights[k].to(device=d.device, dtype=d.dtype) for k, d in zip(weights, dst)]
        backup = [d.clone() for d in dst]
        for d, w in zip(dst, self._stage_nets[n]):
            d.copy_(w)
        try:
            yield model, n >= o.M
        finally:
            for d, w in zip(dst, backup):
                d.copy_(w)

    def _network_in(self, model: nn.Module, weights: dict) -> nn.Module:
        """The submodule of `model` whose state_dict has exactly the keys of `weights` (the network inside any wrapper)."""
        if self._network is not None and self._network[0] is model:
            return self._network[1]
        keys = set(weights)
        inner = next((m for m in model.modules() if set(m.state_dict()) == keys), None)
        if inner is None:
            raise BenchError("reading = per_stage could not find the student's network inside the sampled model.")
        self._network = (model, inner)
        return inner

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n = num_sampling_steps
        tt = full(t, x)
        with self.sampled_net(model, n) as (net, is_teacher):
            w = self.opts.cfg_scale if is_teacher or self.opts.cfg == "sampling" else 1.0
            d = 0.0 if is_teacher or self.opts.student_d == "zero" else 1.0 / n
            v = velocity(net, x, tt, full(d, x), y, w, self.null_class)
        return x + v / n

