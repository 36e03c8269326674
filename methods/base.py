"""The method interface: what the one trainer and the one sampler call.

Conventions (../shared/METHODS.md): time runs from noise (t = 0, x0 ~ N(0, I)) to data
(t = 1, x1); x_t = (1 - t) x0 + t x1; the network f(x, t, d, y) is the direction such that
x_t + d f lands at x_{t+d}; y = null (index num_classes) is the unconditional token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from bench.errors import BenchError


@dataclass
class Batch:
    """One training batch after the shared preparation (label dropout already applied).

    x1: (B, *shape) data; x0: (B, *shape) noise; y: (B,) long labels, null_class where dropped
    or unconditional; y_kept: (B,) the labels before dropout (None: no dropout, the same as y).
    """

    x1: Tensor
    x0: Tensor
    y: Tensor
    null_class: int
    y_kept: Tensor | None = None

    def labels_kept(self) -> Tensor:
        """(B,) labels without label dropout, for rows a method exempts from it."""
        return self.y if self.y_kept is None else self.y_kept


@dataclass
class Targets:
    """What the trainer regresses: model(x_t, t, d, y) ~ target (MSE, each row times its weight).

    x_t: (B, *shape); t, d: (B,) float; y: (B,) long; target: (B, *shape).
    info: scalar diagnostics (loss split, magnitudes), detached; a (B,) bool mask under
      `row_group/NAME` makes the trainer log the mean loss of those rows as `train/loss_NAME`
      (groups may overlap; Method.loss_ladder orders some of them for the level pictures).
    weight: (B,) loss weight per row, None = 1 (the plain mean).
    time: (B,) each row's time on the path in [0, 1] where the network's t input is scaled
      (MeanFlow feeds 0.01 t); None = t. The trainer bins the loss by it (Trainer.loss_by_t).
    """

    x_t: Tensor
    t: Tensor
    d: Tensor
    y: Tensor
    target: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)
    weight: Tensor | None = None
    time: Tensor | None = None


@dataclass(frozen=True)
class LossLadder:
    """Row groups of a method's targets (Targets.info `row_group/NAME`) that form a ladder: levels
    each trained from the one below it (the shortcut's d = 1, 1/2, ..., 2/M from the flow rows).
    groups: the names, top level first; labels: how a picture names each; base: the group the
    others bootstrap from (the flow rows). The harness draws them as heat maps and warns when a
    group's loss keeps rising while the base's falls; it never reads the names."""

    groups: tuple[str, ...]
    labels: tuple[str, ...]
    base: str
    title: str = ""


@dataclass(frozen=True)
class StageOptimiser:
    """How the trainer steps the optimiser in one stretch of training, where a method sets it apart from
    train.* (CFD's and RDD's released stage optimiser). The schedule runs over [first, first + count);
    lr_schedule and lr_warmup as train.*; ema_decay 0 makes the EMA the live weights (no EMA);
    fresh_state: the optimiser's moments start from zero at `first` (a new Adam per stage);
    modules_lr: a constant lr for the modules the method trains beside the model (None: the schedule's);
    clip_modules: whether the gradient clip's norm covers those modules too."""

    first: int
    count: int
    lr: float
    lr_schedule: str = "cosine"
    lr_warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    fresh_state: bool = True
    modules_lr: float | None = None
    clip_modules: bool = True


@dataclass
class MethodOptions:
    """Options every method has. Subclasses add their own keys (config section `method`)."""

    M: int = 128  # smallest step unit: d in {1, 1/2, ..., 1/M}; a power of two (the paper's 128); evaluation at n = 1, 2, 4, ..., M
    cfg_scale: float = 1.0  # classifier-free guidance scale w (1 = none); see each method for when it applies

    def validate(self) -> None:
        """Raise BenchError for values this method cannot use."""

    def deviations(self) -> dict[str, object]:
        """Knobs set away from the method's published recipe (by a profile or --set): tagged on the
        run (`method.deviations`) and printed when it starts. None unless a method names them."""
        return {}


@dataclass
class TeacherOptions(MethodOptions):
    """Options of a method that needs a teacher (Method.needs_teacher): where it comes from."""

    teacher: str = ""  # finished flow-matching run id or checkpoint path ("" = train one first with the same profile, as a nested run)


class Method:
    """Base class. A method builds training targets and takes one of n sampling steps.

    Every method trains ONE network with MSE against `targets(...)`; it never loads files:
    a teacher, when it needs one, is handed over as a frozen module, and so is a classifier
    (classifier_request, setup).
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = False  # a frozen flow-matching teacher in `teacher=`
    family: ClassVar[str] = "other"  # the report's panel: flow and diffusion | distillation | consistency | shortcut and MeanFlow
    stochastic_sampler: ClassVar[bool] = False  # sample_step draws fresh noise
    # Options fields only sampling reads: a sweep over them evaluates one trained model per
    # training configuration instead of retraining (default: none, every option is training-time)
    sampling_time_options: ClassVar[frozenset[str]] = frozenset()

    init_from_teacher: ClassVar[bool] = False  # the student starts as a copy of the teacher's weights

    @classmethod
    def is_sampling_time(cls, name: str, options: MethodOptions) -> bool:
        """Whether option `name` is read only when sampling, under these resolved options (sweeps ask)."""
        return name in cls.sampling_time_options

    @classmethod
    def trains_on_M(cls, options: MethodOptions) -> bool:
        """Whether training reads M (time grid, step levels, stages) under these options; when it does not, M
        only sets the evaluated n = 1, 2, ..., M and a sweep over M is refused (it would retrain one model)."""
        return True

    def __init__(self, opts: MethodOptions, num_classes: int, teacher: nn.Module | None = None, train_steps: int = 0):
        self.opts = opts
        self.num_classes = num_classes
        self.null_class = num_classes  # the CFG token
        self.teacher = teacher
        self.train_steps = train_steps  # train.steps: curricula and stages are pure functions of (step, train_steps)

    def eval_precision(self, precision: str) -> str:
        """The sampling precision this method is evaluated in, given what eval.precision resolved to
        ("bf16", "fp32-tf32" or "fp32"); a sampler that amplifies rounding errors asks for "fp32"."""
        return precision

    @property
    def eval_weights(self) -> str:
        """The weights evaluation samples with: "ema" (the default) or "live" (the trained model itself)."""
        return "ema"

    # -- training -------------------------------------------------------------------
    def targets(self, model: nn.Module, ema: nn.Module, batch: Batch, step: int, generator: torch.Generator) -> Targets:
        raise NotImplementedError

    def on_step_end(self, step: int, model: nn.Module, ema: nn.Module) -> None:
        """Called after the optimiser and EMA update of `step` (teacher refresh, curricula)."""

    def lr_span(self, step: int, train_steps: int) -> tuple[int, int]:
        """(first step, step count) of the stretch that train.lr_schedule runs over at `step`:
        the whole run by default; progressive distillation restarts it at every stage."""
        return 0, train_steps

    def stage_optimiser(self, step: int, train_steps: int) -> StageOptimiser | None:
        """The optimiser settings of `step` when the method sets them apart from train.* (None: train.*'s)."""
        return None

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        """Rows through the network per training step: forward with grad, backward, and no-grad (priced by step_cost)."""
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": 0}

    def state_dict(self) -> dict[str, Any]:
        """Method state that a checkpoint must carry (stage, teacher copy, trainable_modules' weights, buffers, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # the trainer's (maybe compiled) views -> the eager modules behind them; see eager()
    _eager_views: dict[int, nn.Module] = {}

    def bind_eager(self, views: dict[nn.Module, nn.Module]) -> None:
        """The trainer says which eager module each view it passes to `targets` stands for."""
        self._eager_views = {id(view): module for view, module in views.items()}

    def eager(self, net: nn.Module) -> nn.Module:
        """The eager module behind a view `targets` was given (copies and JVPs need the module, not a compiled wrapper)."""
        return self._eager_views.get(id(net), net)

    # -- optional: data-dependent parts and an auxiliary loss (CFD, RDD) ------------------
    def classifier_request(self) -> tuple[str, str] | None:
        """The frozen image classifier the method distils through, as (choice, weights file): choice "auto"
        (the one the dataset declares) or a name the harness knows, weights "" for its default file. The
        harness loads it for the data (bench.classifiers.classifier_for) and hands it to setup(), or says in
        one sentence why it cannot (points are not images). None (the default): the method uses none."""
        return None

    def setup(self, data, device: torch.device, classifier: nn.Module | None = None) -> None:
        """Check that the method can train on `data` (a bench.data.Dataset) and build what it owns
        (trainable heads) on `device`; BenchError in one sentence if it cannot. `classifier`: the frozen
        classifier of classifier_request(), on `device` (images (B, C, H, W) in [-1, 1] -> .logits (B, K),
        pooled feature .h (B, C'), map .m (B, C', H', W'); .name and .sha256 identify its weights), None
        when the method requests none. Called once the data are known, before any run is written; a second
        call changes nothing."""

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules the method owns that the trainer optimises beside the model (e.g. RDD's head);
        their weights and buffers travel in state_dict(), their optimiser state in the trainer's."""
        return {}

    def extra_loss(self, pred: Tensor, tg: Targets, batch: Batch, step: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
        """Auxiliary losses on the regressed prediction pred = model(tg.x_t, tg.t, tg.d, tg.y)
        (B, *shape), with gradients: name -> scalar, each added to the MSE. {} = none (the default)."""
        return {}

    def loss_ladder(self) -> LossLadder | None:
        """The row groups the level pictures and the divergence warning watch (None: none)."""
        return None

    def run_params(self, batch_size: int) -> dict[str, Any]:
        """Params a run records beside its resolved config: derived values (the shortcut's level shares at
        batch_size, the rows per process and step) and what the method loaded (a classifier, by its hash)."""
        return {}

    # -- sampling -------------------------------------------------------------------
    def sample_step(
        self, model: nn.Module, x: Tensor, t: float, num_sampling_steps: int, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """One of the n Euler steps from time t to t + 1/n; returns the new x (same shape)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- shared math


def bshape(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) so it broadcasts against `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """The linear path x_t = (1 - t) x0 + t x1, t: (B,)."""
    tb = bshape(t, x0)
    return (1 - tb) * x0 + tb * x1


def grid_times(batch_size: int, num_cells: Tensor | int, generator: torch.Generator, device) -> Tensor:
    """t uniform on {0, 1/c, ..., (c-1)/c} per row, c = num_cells (int or (B,) long)."""
    u = torch.rand(batch_size, generator=generator, device=device)
    # an int stays a Python number: torch.as_tensor(int, device="cuda") is a blocking host-to-device copy
    return torch.floor(u * num_cells) / num_cells


def velocity(model: nn.Module, x: Tensor, t: Tensor, d: Tensor, y: Tensor, cfg_scale: float, null_class: int) -> Tensor:
    """f(x, t, d, y), guided as v_u + w (v_c - v_u) when w != 1 (one batched call on 2B rows)."""
    if cfg_scale == 1.0:
        return model(x, t, d, y)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([d, d]), torch.cat([y, torch.full_like(y, null_class)]))
    v_c, v_u = both.chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """`net` in eval mode (dropout off) for a target or roll-out query, its mode restored after: the authors
    query every target with train=False (kvfrans/shortcut-models targets_shortcut.py, baselines/*.py)."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def clip_point(x: Tensor, bound: float) -> Tensor:
    """x clamped to [-bound, bound] (0 = no clip): the authors' jnp.clip(x_t2, -4, 4) on the second query point."""
    return x.clamp(-bound, bound) if bound > 0 else x


def full(value: float, like: Tensor) -> Tensor:
    """(B,) tensor of `value` on like's device."""
    return torch.full((like.shape[0],), float(value), device=like.device, dtype=like.dtype)


def check_fraction(name: str, value: float, low_open: bool = True) -> None:
    if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):
        raise BenchError(f"{name} must be in {'(0, 1)' if low_open else '[0, 1)'}, got {value}.")


def euler(x: Tensor, v: Callable[[Tensor, Tensor], Tensor], n: int) -> Tensor:
    """n Euler steps of dx/dt = v(x, t) from t = 0 to 1 (t as a (B,) tensor)."""
    for i in range(n):
        x = x + v(x, full(i / n, x)) / n
    return x


# the cost model of `bench speed` and `bench report`: a backward costs two forwards, a no-grad row one
PASS_COST = {"forward_rows": 1.0, "backward_rows": 2.0, "nograd_rows": 1.0}


def step_cost(passes: dict[str, float]) -> float:
    """Cost of one training step in no-grad forward rows (forward 1, backward 2, no-grad 1)."""
    return sum(PASS_COST.get(k, 0.0) * float(v) for k, v in passes.items())
