"""CFD and RDD: progressive distillation whose chosen stages distil through a frozen classifier.

Both keep progressive distillation's stages, teacher refresh and sampler (methods/progressive.py)
and change the loss of the stages in `loss_stages` (by the student's step count: "4" is the 8 -> 4
stage, the one the released code uses; plain PD elsewhere). From a stage's rows (teacher: two steps
of d, student: one of 2d, t on the 2d grid) the images at t = 1 are
  x1_S = x_t + (1 - t) f(x_t, t, 2d)   (the student's, with gradients),
  x1_T = x_t + (1 - t) v_bar,  v_bar = sg((v1 + v2) / 2)   (the teacher's: PD's target).
A frozen classifier phi (eval mode, no parameter updates, gradients flow through it to the student;
never the FID network, bench/classifiers/) maps an image to logits l, a pooled feature h and a
spatial map m. In those stages the loss is lambda_pd * MSE (the released code: 0) plus
- CFD (Sun et al., arXiv 2211.12039): KL(softmax(h_T / tau) || softmax(h_S)) over the feature
  channels (tau on the teacher only), plus the dataset-oriented term
  beta * (gamma * mean_b H(softmax l_S) + (1 - gamma) * sum_c pbar_c log pbar_c), pbar the batch mean
  of the class probabilities (low entropy per sample, high entropy over the batch);
- RDD (Feng et al., arXiv 2410.07679): CFD's feature KL plus two relational KLs on the L2-normalised
  per-pixel embeddings z of m: (i) sample-to-sample, for every pair (b, b') and pixel i of b the
  softmax over the pixels j of b' of <z_bi, z_b'j> / tau1, teacher against student images;
  (ii) to a memory: a FIFO queue of teacher pixel embeddings (queue_update added per step, one
  pixel each); the student's map passes a trainable 1x1-conv head (conv, BN, ReLU, conv) before its
  similarities; softmax over the anchors of similarity / tau2. `anchors = "fixed"`, as released
  (cantbebetter2/RDD losses/losses.py, Memory_p2p_loss): the queue starts full of random unit
  vectors (lines 102-103, torch.randn then L2-normalised), this step's teacher pixels are pushed
  before the loss (line 166 precedes line 169), and the anchors are num_anchors fixed slots of the
  queue, evenly spaced: round(linspace(0, queue_size - 1, num_anchors)) (lines 106-108, 169).
  `anchors = "drawn"` (ours before, logged as a deviation): the queue starts empty, is pushed after
  the loss, and num_anchors of its filled rows are drawn afresh each step.
  The released code's queue stores scrambled vectors (line 133 views (B, C, H, W) as (C, B H W)) and,
  at the wrap, overwrites its last rows and restarts at 0 (lines 143-145); this one stores whole
  pixel embeddings in an exact ring.
`final_steps` (progressive.py) stops the stages at that student; the stages in `loss_stages` must be among them.
As released, cfd and rdd stop at the 4-step student (final_steps = 4: zju-SWJ/RCFD and cantbebetter2/RDD
distil 8 -> 4 with the classifier, config/CIFAR10_RCFD.txt `--base_ckpt ./logs/CIFAR10/8`, train_rdd.sh
line 3 `--logdir ./logs/8to4/rdd`) and train the classifier stages with their own optimiser
(`stage_optimiser = "released"`): a fresh Adam at lr 5e-5, weight decay 0, cosine to 0 over the stage,
no warm-up, gradient-norm clip 1.0, no EMA (RCFD.py lines 151-152 Adam + CosineAnnealingLR(T_max =
total_steps), line 188 clip_grad_norm_; config/CIFAR10_RCFD.txt --lr=5e-5 --wd=0. --ema_decay=0
--grad_clip=1.0 --warmup=0; RDD's train_rdd.py lines 171, 176, 220 the same). "released_all" steps
every stage so (their PD.py lines 122-156 train the plain PD stages alike); "profile" (train.*'s
optimiser and EMA, ours before issue 37) is a named deviation. Here the stretch is the stage's
equal share of train.steps (the release: 10k steps per stage, 20k for RDD); RDD's head steps at a
constant stage_lr outside the clip, as its own Adam does in train_rdd.py (lines 173, 220, 223).
The feature temperature: CFD 0.95, the paper's ResNet-18 setting (RCFD.py line 55 defaults to 0.9, its
DenseNet-201 setting); RDD 0.9 (train_rdd.sh line 7 `--temperature 0.9`, read at diffusion.py line 330).
Every KL is KL(teacher || student), summed over its softmax axis and averaged over its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError
from methods.base import Batch, StageOptimiser, Targets, bshape, full
from methods.progressive import Progressive, ProgressiveOptions, legacy_progressive_options, num_stages, stage_bounds, stage_of_step

# the released stage optimiser (RCFD.py lines 151-152, 188; config/CIFAR10_RCFD.txt): Adam, lr 5e-5, weight
# decay 0, cosine to 0 over the stage, no warm-up, gradient-norm clip 1.0, EMA decay 0 (no EMA)
RELEASED_STAGE_LR = 5e-5
RELEASED_GRAD_CLIP = 1.0
STAGE_OPTIMISERS = ("released", "released_all", "profile")
CLASSIFIERS = ("auto", "digits-probe", "resnet18")

# ----------------------------------------------------------------------------- the losses


def kl_rows(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(softmax(teacher) || softmax(student)) over the last axis, averaged over every other axis."""
    p = F.softmax(teacher_logits, -1)
    return (p * (F.log_softmax(teacher_logits, -1) - F.log_softmax(student_logits, -1))).sum(-1).mean()


def feature_kl(h_teacher: Tensor, h_student: Tensor, temperature: float) -> Tensor:
    """CFD's KL(softmax(h_T / tau) || softmax(h_S)) over the channels of (B, C) features."""
    return kl_rows(h_teacher.float() / temperature, h_student.float())


def dataset_term(logits: Tensor, gamma: float) -> Tensor:
    """gamma * mean_b H(p_b) + (1 - gamma) * sum_c pbar_c log pbar_c, p_b = softmax(logits_b)."""
    logp = F.log_softmax(logits.float(), -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1).mean()
    pbar = p.mean(0)
    return gamma * entropy + (1 - gamma) * (pbar * pbar.clamp_min(1e-12).log()).sum()


def pixel_embeddings(m: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, H*W, C) per-pixel embeddings, L2-normalised over C."""
    return F.normalize(m.float().flatten(2).transpose(1, 2), dim=-1)


def pair_relation_kl(z_teacher: Tensor, z_student: Tensor, temperature: float) -> Tensor:
    """RDD (i): for every (b, i, b'), softmax over pixels j of <z_bi, z_b'j> / tau; z: (B, P, C)."""
    s_t = torch.einsum("bic,djc->bidj", z_teacher, z_teacher) / temperature
    s_s = torch.einsum("bic,djc->bidj", z_student, z_student) / temperature
    return kl_rows(s_t, s_s)


def memory_relation_kl(z_teacher: Tensor, z_student: Tensor, anchors: Tensor, temperature: float) -> Tensor:
    """RDD (ii): per pixel, softmax over the anchors (A, C) of similarity / tau; z: (N, C) normalised."""
    return kl_rows(z_teacher @ anchors.T / temperature, z_student @ anchors.T / temperature)


class PixelQueue:
    """A FIFO memory of `size` embeddings of `dim` channels: push overwrites the oldest first."""

    def __init__(self, size: int, dim: int, device):
        self.data = torch.zeros(size, dim, device=device)
        self.ptr, self.count = 0, 0

    def push(self, rows: Tensor) -> None:
        """rows (k, dim), k <= size, appended in order."""
        k, size = rows.shape[0], self.data.shape[0]
        idx = (self.ptr + torch.arange(k, device=self.data.device)) % size
        self.data[idx] = rows.detach().to(self.data.dtype)
        self.ptr, self.count = (self.ptr + k) % size, min(self.count + k, size)

    def contents(self) -> Tensor:
        """The filled rows, oldest first (a copy: later pushes must not touch a graph that used them)."""
        if self.count < self.data.shape[0]:
            return self.data[: self.count].clone()
        return torch.cat([self.data[self.ptr:], self.data[: self.ptr]])

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data.clone(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["data"].shape) != tuple(self.data.shape):
            raise BenchError(f"The checkpoint's RDD queue has shape {tuple(state['data'].shape)}, this run's {tuple(self.data.shape)}.")
        self.data.copy_(state["data"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


# ----------------------------------------------------------------------------- the methods


def legacy_pd_variant_options(options: dict) -> dict:
    """Options of a CFD or RDD run stored before issue 37: PD's knobs as they ran, the stages on train.*'s optimiser."""
    if "stage_optimiser" in options:
        return options
    return {**legacy_progressive_options(options), "stage_optimiser": "profile", **options}


@dataclass
class CFDOptions(ProgressiveOptions):
    final_steps: int = 4  # as released: the 8 -> 4 stage is the last (progressive's default is 1)
    # the optimiser of the classifier stages: "released" (see the module docstring), "released_all" (every stage) or
    # "profile" (train.*'s optimiser and EMA; a deviation)
    stage_optimiser: str = "released"
    stage_lr: float = RELEASED_STAGE_LR  # peak lr of the released stage optimiser (cosine to 0 over each stage)
    loss_stages: str = "4"  # student step counts of the stages with this loss ("4": the 8 -> 4 stage, as released), comma list or "all"
    lambda_pd: float = 0.0  # weight of PD's MSE in those stages (the released code has none); 1 elsewhere
    feature_temperature: float = 0.95  # tau on the teacher's feature softmax (CFD: 0.95 with ResNet-18, 0.9 with DenseNet-201)
    beta: float = 0.003  # weight of the dataset-oriented term (CFD, ResNet-18 setting)
    gamma: float = 0.75  # its split between the per-sample entropy and the batch's negative entropy
    classifier: str = "auto"  # auto (the dataset's own: digits-probe on digits, resnet18 on other images) | digits-probe | resnet18
    classifier_weights: str = ""  # a local weights file ("" = the shipped probe, or $BENCH_CLASSIFIER_WEIGHTS / torch's hub cache)

    def validate(self) -> None:
        super().validate()
        self.student_steps()
        if self.lambda_pd < 0 or self.beta < 0:
            raise BenchError(f"method.lambda_pd and method.beta must be >= 0, got {self.lambda_pd} and {self.beta}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise BenchError(f"method.gamma must be in [0, 1], got {self.gamma}.")
        if not self.feature_temperature > 0:
            raise BenchError(f"method.feature_temperature must be > 0, got {self.feature_temperature}.")
        if self.classifier not in CLASSIFIERS:
            raise BenchError(f"method.classifier must be auto, digits-probe or resnet18, got {self.classifier!r}.")
        if self.stage_optimiser not in STAGE_OPTIMISERS:
            raise BenchError(f"method.stage_optimiser must be {', '.join(STAGE_OPTIMISERS)}, got {self.stage_optimiser!r}.")
        if not self.stage_lr > 0:
            raise BenchError(f"method.stage_lr must be > 0, got {self.stage_lr}.")

    # the released temperature of the feature softmax (RDD overrides it)
    RELEASED_TEMPERATURE = 0.95

    def deviations(self) -> dict[str, object]:
        out = super().deviations()
        if self.stage_optimiser == "profile":
            out["stage_optimiser"] = "profile"
        elif self.stage_lr != RELEASED_STAGE_LR:
            out["stage_lr"] = self.stage_lr
        if self.feature_temperature != self.RELEASED_TEMPERATURE:
            out["feature_temperature"] = self.feature_temperature
        if self.classifier == "resnet18":  # the releases distil through a classifier trained on CIFAR-10 at 32 px
            out["classifier"] = "resnet18 (ImageNet weights at 224 px; released: DenseNet-201 / ResNet-18 trained on CIFAR-10)"
        return out

    def student_steps(self) -> set[int]:
        """The stages of loss_stages as the student's step counts (M/2, ..., final_steps)."""
        valid = [self.M >> i for i in range(1, num_stages(self.M, self.final_steps) + 1)]
        if self.loss_stages.strip() == "all":
            return set(valid)
        try:
            chosen = {int(s) for s in self.loss_stages.split(",") if s.strip()}
        except ValueError:
            chosen = {-1}
        if not chosen or not chosen <= set(valid):
            raise BenchError(f"method.loss_stages must be 'all' or a comma list of the students' step counts "
                             f"{', '.join(map(str, valid))} (M = {self.M}), got {self.loss_stages!r}.")
        return chosen


@dataclass
class RDDOptions(CFDOptions):
    beta: float = 0.0  # RDD keeps CFD's feature KL only, not its dataset term
    feature_temperature: float = 0.9  # as released (train_rdd.sh line 7, --temperature 0.9; diffusion.py line 330)
    pair_weight: float = 1.0  # (i) sample-to-sample pixel relations
    pair_temperature: float = 1.0  # tau1
    memory_weight: float = 0.1  # (ii) relations to the FIFO queue of teacher pixel embeddings
    memory_temperature: float = 0.1  # tau2
    queue_size: int = 20_000  # teacher pixel embeddings kept
    queue_update: int = 128  # pixels pushed per step (drawn from the batch's teacher maps)
    num_anchors: int = 4096  # queue entries each step's relations use
    anchors: str = "fixed"  # "fixed" (released: random initial queue, push before the loss, evenly spaced slots) or "drawn"
    head_width: int = 0  # hidden channels of the student's 1x1-conv head (0: the map's channels)

    def validate(self) -> None:
        super().validate()
        if self.pair_weight < 0 or self.memory_weight < 0:
            raise BenchError(f"method.pair_weight and memory_weight must be >= 0, got {self.pair_weight} and {self.memory_weight}.")
        if not (self.pair_temperature > 0 and self.memory_temperature > 0):
            raise BenchError("method.pair_temperature and memory_temperature must be > 0.")
        if not 1 <= self.queue_update <= self.queue_size or self.num_anchors < 1 or self.head_width < 0:
            raise BenchError(f"RDD needs 1 <= queue_update <= queue_size, num_anchors >= 1 and head_width >= 0, got "
                             f"{self.queue_update}, {self.queue_size}, {self.num_anchors}, {self.head_width}.")
        if self.anchors not in ("fixed", "drawn"):
            raise BenchError(f"method.anchors must be fixed or drawn, got {self.anchors!r}.")
        if self.anchors == "fixed" and self.num_anchors > self.queue_size:
            raise BenchError(f"method.num_anchors ({self.num_anchors}) must not exceed queue_size ({self.queue_size}) "
                             f"with fixed anchors (evenly spaced slots of the queue).")

    RELEASED_TEMPERATURE = 0.9

    def deviations(self) -> dict[str, object]:
        return {**super().deviations(), **({"anchors": self.anchors} if self.anchors != "fixed" else {})}


def fixed_anchor_slots(queue_size: int, num_anchors: int) -> Tensor:
    """The released code's anchor slots: round(linspace(0, queue_size - 1, num_anchors)), (num_anchors,) long."""
    return torch.round(torch.linspace(0, queue_size - 1, num_anchors)).long()


class ClassifierDistillation(Progressive):
    """Progressive distillation with CFD's classifier-feature loss in the chosen stages."""

    name = "cfd"
    family = "distillation"
    Options = CFDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.classifier = None  # handed to setup() by the harness, which loads what classifier_request() names
        self._steps = self.opts.student_steps()

    def classifier_request(self) -> tuple[str, str]:
        return self.opts.classifier, self.opts.classifier_weights

    def setup(self, data, device, classifier=None) -> None:
        if self.classifier is None:
            if classifier is None:
                raise BenchError(f"{self.name} distils through a frozen classifier and setup() was handed none "
                                 f"(the harness loads it: bench.classifiers.classifier_for).")
            self.classifier = classifier

    def run_params(self, batch_size: int) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        return {"classifier.name": self.classifier.name, "classifier.sha256": self.classifier.sha256}

    def uses_classifier(self, stage: int) -> bool:
        return self.opts.M >> stage in self._steps

    def stage_optimiser(self, step: int, train_steps: int) -> StageOptimiser | None:
        """The released optimiser over the stage of `step` (each stage a fresh Adam), or None (train.*'s)."""
        o = self.opts
        stage = stage_of_step(step, train_steps, o.M, o.final_steps)
        if o.stage_optimiser == "profile" or (o.stage_optimiser == "released" and not self.uses_classifier(stage)):
            return None
        first, end = stage_bounds(stage, train_steps, o.M, o.final_steps)
        # RDD's head (trainable_modules): its own Adam at a constant lr, outside the clip (train_rdd.py lines 173, 220, 223)
        return StageOptimiser(first=first, count=end - first, lr=o.stage_lr, lr_schedule="cosine", lr_warmup=0,
                              weight_decay=0.0, grad_clip=RELEASED_GRAD_CLIP, ema_decay=0.0, fresh_state=True,
                              modules_lr=o.stage_lr, clip_modules=False)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        tg = super().targets(model, ema, batch, step, generator)
        if self.uses_classifier(self.stage(step)):
            tg.weight = full(self.opts.lambda_pd, tg.t)
        return tg

    def images(self, pred: Tensor, tg: Targets) -> tuple[Tensor, Tensor]:
        """x1_S (with gradients through pred) and x1_T (PD's target, no gradients), both (B, *shape)."""
        s = bshape(1 - tg.t, tg.x_t)
        return tg.x_t + s * pred, (tg.x_t + s * tg.target).detach()

    def classify(self, pred: Tensor, tg: Targets):
        if self.classifier is None:
            raise BenchError(f"{self.name} has no classifier: call setup(data, device) first.")
        x1_s, x1_t = self.images(pred, tg)
        with torch.no_grad():
            out_t = self.classifier(x1_t)
        return out_t, self.classifier(x1_s)

    def extra_loss(self, pred, tg, batch, step, generator) -> dict[str, Tensor]:
        if not self.uses_classifier(self.stage(step)):
            return {}
        out_t, out_s = self.classify(pred, tg)
        losses = {"feature_kl": feature_kl(out_t.h, out_s.h, self.opts.feature_temperature)}
        if self.opts.beta > 0:
            losses["dataset"] = self.opts.beta * dataset_term(out_s.logits, self.opts.gamma)
        return losses

    def classifier_share(self) -> float:
        """Share of the training steps in stages with the classifier loss (stages are equal shares)."""
        return len(self._steps) / self.num_stages

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        f = self.classifier_share() * batch_size  # rows through the classifier: student images with grad, teacher's without
        return {**super().passes_per_step(batch_size), "classifier_forward_rows": f, "classifier_backward_rows": f,
                "classifier_nograd_rows": f}


class RelationalDistillation(ClassifierDistillation):
    """Progressive distillation with RDD's feature and relational (pixel pair, pixel memory) losses in the chosen stages."""

    name = "rdd"
    family = "distillation"
    Options = RDDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head: nn.Module | None = None
        self.queue: PixelQueue | None = None
        self._pending_rdd: dict | None = None  # head and queue from a checkpoint loaded before setup()

    def setup(self, data, device, classifier=None) -> None:
        if self.head is not None:
            return
        super().setup(data, device, classifier)
        with torch.no_grad():
            channels = self.classifier(torch.zeros(2, *data.shape, device=device)).m.shape[1]
        width = self.opts.head_width or channels
        self.head = nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, channels, 1)).to(device)
        self.queue = PixelQueue(self.opts.queue_size, channels, device)
        if self.opts.anchors == "fixed":  # as released: full of random unit vectors from the start (a fixed seed: reproducible)
            g = torch.Generator().manual_seed(0)
            self.queue.data.copy_(F.normalize(torch.randn(self.queue.data.shape, generator=g), dim=1))
            self.queue.count = self.opts.queue_size
            self._anchor_slots = fixed_anchor_slots(self.opts.queue_size, self.opts.num_anchors).to(device)
        if self._pending_rdd is not None:
            self._load_rdd(self._pending_rdd)
            self._pending_rdd = None

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head} if self.head is not None else {}

    def extra_loss(self, pred, tg, batch, step, generator) -> dict[str, Tensor]:
        if not self.uses_classifier(self.stage(step)):
            return {}
        o = self.opts
        out_t, out_s = self.classify(pred, tg)
        losses = {"feature_kl": feature_kl(out_t.h, out_s.h, o.feature_temperature)}
        if o.beta > 0:
            losses["dataset"] = o.beta * dataset_term(out_s.logits, o.gamma)
        z_t = pixel_embeddings(out_t.m)  # (B, P, C)
        if o.pair_weight > 0:
            losses["pair_kl"] = o.pair_weight * pair_relation_kl(z_t, pixel_embeddings(out_s.m), o.pair_temperature)
        flat_t = z_t.reshape(-1, z_t.shape[-1])
        fixed = o.anchors == "fixed"
        if fixed:  # as released: this step's pixels enter the queue before the loss reads its anchors
            self._push(flat_t, generator)
        if o.memory_weight > 0 and self.queue.count > 0:
            if fixed:
                memory = self.queue.data[self._anchor_slots].clone()  # later pushes must not touch this graph's copy
            else:
                memory = self.queue.contents()
                if memory.shape[0] > o.num_anchors:
                    memory = memory[torch.randperm(memory.shape[0], generator=generator, device=generator.device)[: o.num_anchors].to(memory.device)]
            q_s = pixel_embeddings(self.head(out_s.m))
            losses["memory_kl"] = o.memory_weight * memory_relation_kl(flat_t, q_s.reshape(-1, q_s.shape[-1]), memory,
                                                                       o.memory_temperature)
        if not fixed:  # after the loss: the current batch is never its own memory
            self._push(flat_t, generator)
        return losses

    def _push(self, flat_t: Tensor, generator: torch.Generator) -> None:
        """queue_update of this step's teacher pixel embeddings (N, C), drawn without replacement, into the queue."""
        pick = torch.randperm(flat_t.shape[0], generator=generator, device=generator.device)[: self.opts.queue_update]
        self.queue.push(flat_t[pick.to(flat_t.device)])

    def state_dict(self):
        state = super().state_dict()
        if self.head is None:
            return {**state, **(self._pending_rdd or {})}
        return {**state, "head": self.head.state_dict(), "queue": self.queue.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "head" not in state:
            return
        if self.head is None:
            self._pending_rdd = {"head": state["head"], "queue": state["queue"]}
        else:
            self._load_rdd(state)

    def _load_rdd(self, state) -> None:
        self.head.load_state_dict(state["head"])
        self.queue.load_state_dict(state["queue"])
