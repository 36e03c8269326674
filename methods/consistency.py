"""Consistency training and distillation (Song, Dhariwal, Chen, Sutskever, ICML 2023), in flow form.

The consistency function comes from the velocity parameterisation,
  F(x_t, t) = x_t + (1 - t) f(x_t, t, 0, y)   (a prediction of x1; F(x, 1) = x by construction),
queried at d = 0, the flow teacher's query, so a student copied from the teacher starts at the
teacher's denoiser E[x1 | x_t]. Two times on one path, t < t2 = t + delta; the target keeps
F_theta(x_t, t) = sg(F_ema(x_t2, t2)), written as a velocity target for the shared MSE:
  target = (sg(F_ema(x_t2, t2)) - x_t) / (1 - t).
- training (CT): x_t2 = (1 - t2) x0 + t2 x1 with the same x0, x1, t on the grid of multiples of
  delta, delta coarse to fine over train.steps (`schedule`):
  "authors" (kvfrans/shortcut-models, baselines/targets_consistency_training.py): lines 10-12
  `dt_base = floor(train_state.step / (max_steps / log2(M)))`, `dt = 1 / 2**dt_base`: log2(M)
  equal phases, delta = 1, 1/2, ..., 2/M (not 1/M); their step counter starts at 1
  (utils/train_state.py, `create(step=1)`) and runs to max_steps, so our 0-based step s is their
  s + 1 and the very last update alone reaches dt_base = log2(M) (delta = 1/M), kept as they run it.
  The target network is the training EMA (line 29, `train_state.call_model_ema`, updated every step
  with `target_update_rate` 0.999 in train.py): here the trainer's EMA (train.ema_decay);
  "fine" (ours, a named deviation): log2(M) + 1 equal phases ending at delta = 1/M and a target
  network of its own, an EMA of the student with decay target_decay (Song et al.'s CD value 0.95);
  "song" (Song et al. 2023): N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 points,
  s0 = 2, s1 = 150, K = train.steps, and the adaptive target EMA mu(k) = exp(s0 log(mu0) / N(k)),
  mu0 = 0.9. Their N points are spaced in EDM's sigma with rho = 7; here they are spaced evenly in
  t on [0, 1] (delta = 1 / (N(k) - 1)), the grid the authors' phases use (phase p is N = 2^p + 1),
  so the two schedules differ in N(k) and mu(k) only;
  "song" departs from Song et al. in two named, logged ways (deviations()): the grid is even in t, not
  EDM's sigma grid with rho = 7, and the distance is the MSE of the shared trainer, not LPIPS;
- distillation (CD): x_t2 = x_t + delta T(x_t, t, 0) with the flow teacher T, delta = 1/M, t on
  the 1/M grid; the student starts as a copy of the teacher. As the authors' code
  (baselines/targets_consistency_distillation.py): the first step is the teacher's (line 23,
  `train_state_teacher.call_model_ema`: the flow run's EMA, what a teacher is loaded as), x_t2 is
  clipped to [-4, 4] (line 26, `clip`), and the second point is read by the student's own training
  EMA (line 27, `train_state.call_model_ema`, target_update_rate 0.999 in train.py): here the trainer's
  EMA, train.ema_decay (`target = "training_ema"`). `target = "own"` (ours before issue 37, a named
  deviation) keeps a target network of its own, an EMA of the student with decay target_decay (0.95).
  CT does not clip (its x_t2 lies on the noise-data path; targets_consistency_training.py line 27).
Every target query runs the network in eval mode (the authors' train=False: no dropout).
Sampling with n steps (multistep consistency sampling): x1_hat = F(x, t), then
x <- (1 - t') z + t' x1_hat with fresh z ~ N(0, I), t' = t + 1/n; the last step returns x1_hat.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from methods.base import (Batch, Method, MethodOptions, Targets, TeacherOptions, bshape, clip_point, eval_mode, full, grid_times,
                          interpolate, velocity)


def authors_ct_level(step: int, train_steps: int, M: int) -> int:
    """The authors' dt_base at our 0-based `step`: floor((step + 1) log2(M) / train_steps), delta = 2^-dt_base.

    Their expression (targets_consistency_training.py lines 10-11) with their 1-based step, in exact
    integer arithmetic: 0 .. log2(M) - 1 in equal phases, log2(M) at the last step only."""
    K = int(math.log2(M))
    if train_steps <= 0:
        return K - 1
    return (step + 1) * K // train_steps


def ct_phase(step: int, train_steps: int, M: int) -> int:
    """schedule = fine: phase p (0 .. log2 M) of training step `step` (0-based), delta = 2^-p; equal shares of train_steps."""
    K = int(math.log2(M)) + 1
    if train_steps <= 0:
        return K - 1
    return min(step * K // train_steps, K - 1)


def ct_delta(step: int, train_steps: int, M: int) -> float:
    """schedule = fine: delta = 1, 1/2, ..., 1/M in log2(M) + 1 equal phases."""
    return 2.0 ** -ct_phase(step, train_steps, M)


def song_num_points(step: int, train_steps: int, s0: int, s1: int) -> int:
    """Song et al.'s N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1: s0 at k = 0, s1 + 1 at k = K."""
    frac = step / train_steps if train_steps > 0 else 1.0
    return math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def song_target_decay(num_points: int, s0: int, mu0: float) -> float:
    """Song et al.'s adaptive target EMA mu(k) = exp(s0 log(mu0) / N(k))."""
    return math.exp(s0 * math.log(mu0) / num_points)


@dataclass
class ConsistencyOptions(MethodOptions):
    target_decay: float = 0.95  # EMA decay mu of the target network theta^- (Song et al.'s CD: 0.95); 0 = the live weights (as iCT); CT: schedule = fine only

    def validate(self) -> None:
        if not 0.0 <= self.target_decay < 1.0:
            raise BenchError(f"method.target_decay must be in [0, 1), got {self.target_decay}.")


@dataclass
class ConsistencyTrainingOptions(ConsistencyOptions):
    # delta curriculum and target network: "authors" (their targets_consistency_training.py: delta 1, 1/2, ...,
    # 2/M in log2(M) equal phases, the training EMA train.ema_decay as target), "song" (N(k) from s0 to s1,
    # adaptive mu(k) from mu0) or "fine" (ours, logged as a deviation: log2(M) + 1 phases down to 1/M, a
    # target network of its own with EMA target_decay)
    schedule: str = "authors"
    s0: int = 2  # song: N(0) = s0, the first number of points
    s1: int = 150  # song: N(K) = s1 + 1, the last
    mu0: float = 0.9  # song: the target EMA at N = s0

    def validate(self) -> None:
        super().validate()
        if self.schedule not in ("authors", "song", "fine"):
            raise BenchError(f"method.schedule must be authors, song or fine, got {self.schedule!r}.")
        if self.schedule != "fine" and self.target_decay != ConsistencyTrainingOptions.target_decay:
            raise BenchError(f"method.target_decay is read by schedule = fine only (authors: the training EMA, "
                             f"train.ema_decay; song: mu(k)); got {self.target_decay} with schedule = {self.schedule}.")
        if not 2 <= self.s0 <= self.s1:
            raise BenchError(f"method.s0 and method.s1 need 2 <= s0 <= s1, got s0 = {self.s0}, s1 = {self.s1}.")
        if not 0.0 < self.mu0 < 1.0:
            raise BenchError(f"method.mu0 must be in (0, 1), got {self.mu0}.")

    def deviations(self) -> dict[str, object]:
        # "authors" is published as run; "song" is Song et al.'s N(k) and mu(k) on this harness's grid and loss;
        # "fine" (down to delta = 1/M, a target network of its own) is ours
        if self.schedule == "fine":
            return {"schedule": self.schedule, "target_decay": self.target_decay}
        if self.schedule == "song":
            return {"schedule": "song", "song_grid": "even in t (Song et al.: EDM sigma, rho 7)", "song_loss": "mse (Song et al.: LPIPS)"}
        return {}


@dataclass
class ConsistencyDistillationOptions(ConsistencyOptions, TeacherOptions):
    # the network that reads the second point: "training_ema" (authors: the student's training EMA, train.ema_decay)
    # or "own" (a target network of its own, EMA target_decay from the teacher's weights; a deviation)
    target: str = "training_ema"
    clip: float = 4.0  # clip x_t2 to [-clip, clip] (authors: targets_consistency_distillation.py line 26); 0 = off

    def validate(self) -> None:
        super().validate()
        if self.target not in ("training_ema", "own"):
            raise BenchError(f"method.target must be training_ema or own, got {self.target!r}.")
        if self.target == "training_ema" and self.target_decay != ConsistencyDistillationOptions.target_decay:
            raise BenchError(f"method.target_decay is read by target = own only (training_ema: train.ema_decay); "
                             f"got {self.target_decay} with target = training_ema.")
        if self.clip < 0:
            raise BenchError(f"method.clip must be >= 0 (0 = off), got {self.clip}.")

    def deviations(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.target != "training_ema":
            out.update(target=self.target, target_decay=self.target_decay)
        if self.clip != 4.0:
            out["clip"] = self.clip
        return out


def legacy_cd_options(options: dict) -> dict:
    """Options of a CD run stored before issue 37: a target network of its own, no clip."""
    if "target" in options:
        return options
    return {"target": "own", "clip": 0.0, **options}


class _Consistency(Method):
    """Shared by CT and CD: the consistency function, the target network, the target and multistep sampling."""

    stochastic_sampler = True
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._target_net: torch.nn.Module | None = None  # theta^-: an EMA of the student with decay target_decay
        self._pending: dict | None = None  # its weights from a checkpoint, until the student's shape is known

    def consistency_fn(self, net, x, t, y, cfg_scale: float = 1.0):
        """F(x, t) = x + (1 - t) f(x, t, 0, y), t: (B,)."""
        v = velocity(net, x, t, torch.zeros_like(t), y, cfg_scale, self.null_class)
        return x + bshape(1 - t, x) * v

    def target_decay(self, step: int) -> float:
        """mu: the EMA decay of the target network after training step `step`."""
        return self.opts.target_decay

    @property
    def live_target(self) -> bool:
        """theta^- is the student itself (mu = 0, as iCT)."""
        return self.opts.target_decay == 0.0

    @property
    def training_ema_target(self) -> bool:
        """theta^- is the trainer's EMA (train.ema_decay), as the authors' CT; else a network of the method's own."""
        return False

    def target_net(self, model, ema=None):
        """theta^-: the training EMA, the live student, or a copy of the student (the teacher's weights
        for CD) that then follows it as an EMA with decay target_decay."""
        if self.training_ema_target:
            if ema is None:
                raise BenchError(f"{self.name} with the training EMA as its target needs the EMA model.")
            return ema
        if self.live_target:
            return model
        if self._target_net is None:
            self._target_net = copy.deepcopy(self.eager(model)).requires_grad_(False).eval()
            if self._pending is not None:
                self._target_net.load_state_dict(self._pending)
                self._pending = None
        return self._target_net

    def on_step_end(self, step, model, ema) -> None:
        if self._target_net is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self._target_net.parameters()), [p.detach() for p in model.parameters()],
                                     1.0 - self.target_decay(step))

    def state_dict(self):
        return {"target_net": self._target_net.state_dict() if self._target_net is not None else self._pending}

    def load_state_dict(self, state) -> None:
        weights = state.get("target_net")
        if self._target_net is not None and weights is not None:
            self._target_net.load_state_dict(weights)
        else:
            self._pending = weights

    def _target(self, model, ema, x_t, t, x_t2, t2, y):
        net = self.target_net(model, ema)
        with torch.no_grad(), eval_mode(net):  # the live student as target (target_decay 0) too: no dropout
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
    """Consistency training from data alone, delta curriculum coarse to fine (`schedule`); multistep consistency sampling."""

    name = "consistency_training"
    family = "consistency"
    Options = ConsistencyTrainingOptions

    def num_cells(self, step: int) -> int:
        """1 / delta at training step `step`: the number of grid cells on [0, 1]."""
        o = self.opts
        if o.schedule == "song":
            return song_num_points(step, self.train_steps, o.s0, o.s1) - 1
        if o.schedule == "authors":
            return 2 ** authors_ct_level(step, self.train_steps, o.M)
        return 2 ** ct_phase(step, self.train_steps, o.M)

    def delta(self, step: int) -> float:
        return 1.0 / self.num_cells(step)

    def target_decay(self, step: int) -> float:
        """mu of the method's own target network (song, fine); schedule = authors has none (the trainer's EMA)."""
        o = self.opts
        if o.schedule == "song":
            return song_target_decay(song_num_points(step, self.train_steps, o.s0, o.s1), o.s0, o.mu0)
        return o.target_decay

    @property
    def training_ema_target(self) -> bool:
        return self.opts.schedule == "authors"

    @property
    def live_target(self) -> bool:
        return self.opts.schedule == "fine" and self.opts.target_decay == 0.0

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev = x1.shape[0], x1.device
        cells = self.num_cells(step)
        delta = 1.0 / cells
        t = grid_times(B, cells, generator, dev)
        t2 = (torch.round(t * cells) + 1) / cells  # the next grid point, exactly 1 at the last cell
        x_t, x_t2 = interpolate(x0, x1, t), interpolate(x0, x1, t2)
        target = self._target(model, ema, x_t, t, x_t2, t2, y)
        info = {"delta": torch.full((), delta, device=dev)}  # not torch.tensor: a blocking copy on CUDA
        if not self.training_ema_target:
            info["target_decay"] = torch.full((), self.target_decay(step), device=dev)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=y, target=target, info=info)

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": batch_size}


class ConsistencyDistillation(_Consistency):
    """Consistency distillation of a flow teacher (one Euler step of 1/M); multistep consistency sampling."""

    name = "consistency_distillation"
    family = "consistency"
    Options = ConsistencyDistillationOptions
    needs_teacher = True
    init_from_teacher = True

    @property
    def training_ema_target(self) -> bool:
        return self.opts.target == "training_ema"

    @property
    def live_target(self) -> bool:
        return self.opts.target == "own" and self.opts.target_decay == 0.0

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev, M = x1.shape[0], x1.device, self.opts.M
        if self.teacher is None:
            raise BenchError("consistency distillation needs a teacher (set teacher=RUN_ID or a checkpoint path).")
        delta = 1.0 / M
        t = grid_times(B, M, generator, dev)
        t2 = t + delta
        x_t = interpolate(x0, x1, t)
        with torch.no_grad(), eval_mode(self.teacher):
            x_t2 = clip_point(x_t + delta * self.teacher(x_t, t, torch.zeros_like(t), y), self.opts.clip)
        target = self._target(model, ema, x_t, t, x_t2, t2, y)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=y, target=target)

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": 2 * batch_size}
