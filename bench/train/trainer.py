"""The one training loop. It never asks which method it runs: the method builds targets,
the loop predicts, takes an MSE, steps AdamW, updates the EMA and calls on_step_end."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bench.files import checkpoint
from bench.config import Config, TrainConfig
from bench.data import Dataset
from bench.data.dataset import flip_rows
from bench.errors import BenchError, NonFiniteLoss
from bench.phases import span
from methods.base import Batch, Method


class _CloneOutput(nn.Module):
    """A CUDA-graph module's output is overwritten by its next replay; methods keep outputs across calls."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    @property
    def _orig_mod(self) -> nn.Module:  # the eager module, where torch.compile's wrapper exposes it
        return self.fn._orig_mod

    def forward(self, *args):
        return self.fn(*args).clone()


def compiled(module: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile(module, mode); "reduce-overhead" (CUDA graphs: small, launch-bound models) clones outputs."""
    fn = torch.compile(module, mode=mode)
    return _CloneOutput(fn) if mode == "reduce-overhead" else fn


def lr_at(step: int, tc: TrainConfig, span: tuple[int, int] | None = None) -> float:
    """Learning rate of optimiser step `step` (0-based) in the stretch span = (first step, step count),
    the whole run by default: linear warm-up over its first lr_warmup steps, then train.lr_schedule
    ("constant", or "cosine": lr * (1 + cos(pi * s / S)) / 2 over the remaining S steps)."""
    first, count = span if span is not None else (0, tc.steps)
    s = step - first
    if s < tc.lr_warmup:
        return tc.lr * (s + 1) / tc.lr_warmup
    if tc.lr_schedule == "cosine":
        S = max(count - tc.lr_warmup, 1)
        return tc.lr * 0.5 * (1.0 + math.cos(math.pi * min(s - tc.lr_warmup, S) / S))
    return tc.lr


# the training loss per t of every row group (Trainer.loss_by_t): bins of the path time over the
# rows of the last LOSS_BY_T_SHARE of the steps (the end of training, where the pictures look)
LOSS_BY_T_BINS = 32
LOSS_BY_T_SHARE = 0.2


def _gen_state(g: torch.Generator) -> Tensor:
    return g.get_state()


class Trainer:
    """Holds model, EMA, optimiser, step and random state; `fit()` runs to `train.steps`.

    log(metrics, step): receives train/* scalars every `train.log_every` steps.
    evaluate(step): called every `train.eval_every` steps (0 = never during training).
    checkpoint_extra(): extra entries stored in every checkpoint (e.g. the MLflow run id).
    distributed: data parallel over the initialised torch.distributed group: every rank builds a
      Trainer from the same state and takes batch_size / world_size rows per step from its own
      random streams (seed + rank); the regressed forward runs through DistributedDataParallel;
      logged losses are means over ranks. Only rank 0 should get checkpoint_path, log and evaluate.
    """

    def __init__(
        self,
        cfg: Config,
        method: Method,
        model: nn.Module,
        data: Dataset,
        device: torch.device,
        checkpoint_path: Path | None = None,
        log: Callable[[dict[str, float], int], None] | None = None,
        evaluate: Callable[[int], None] | None = None,
        checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
        progress: bool = True,
        distributed: bool = False,
    ):
        tc = cfg.train
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if tc.batch_size % self.world_size:
            raise BenchError(f"train.batch_size = {tc.batch_size} does not divide into {self.world_size} data-parallel ranks.")
        self.local_batch_size = tc.batch_size // self.world_size  # train.batch_size is the global batch
        if cfg.data.augment != "none" and (data.kind != "images" or data.latent):
            raise BenchError(f"data.augment = {cfg.data.augment} flips images; {data.name} holds {'latents' if data.latent else data.kind}.")
        self.cfg, self.method, self.data, self.device = cfg, method, data, device
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()  # exact copy at step 0
        method.setup(data, device)  # idempotent (run.prepare calls it first): builds what the method owns before the optimiser
        # modules the method owns (e.g. a head) train beside the model, in a second parameter group
        self.method_params = [p for m in method.trainable_modules().values() for p in m.parameters()]
        groups = [{"params": list(self.model.parameters())}] + ([{"params": self.method_params}] if self.method_params else [])
        self.opt = torch.optim.AdamW(
            groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
            fused=device.type == "cuda",
        )
        # compiled views share parameters with the eager modules (checkpoints hold the eager ones)
        self.cuda_graphs = tc.compile and tc.compile_mode == "reduce-overhead" and device.type == "cuda"
        self.fmodel = compiled(self.model, tc.compile_mode) if tc.compile else self.model
        self.fema = compiled(self.ema, tc.compile_mode) if tc.compile else self.ema
        # the regressed forward; under DDP its backward averages the gradients over ranks (methods
        # build targets without gradients from the bare module, so they never see the wrapper)
        self.ftrain = self.fmodel
        method.bind_eager({self.fmodel: self.model, self.fema: self.ema})  # what a method copies or differentiates
        if distributed:
            ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self.ftrain = compiled(ddp, tc.compile_mode) if tc.compile else ddp
        self.step = 0
        rank_offset = self.rank * 1_000_003  # per-rank random streams; rank 0 draws what a single process draws
        self.gen = torch.Generator(device).manual_seed(cfg.seed + rank_offset)  # noise, times, label dropout
        self.data_gen = torch.Generator().manual_seed(cfg.seed + 1 + rank_offset)  # data order
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.log = log or (lambda metrics, step: None)
        self.evaluate = evaluate
        self.checkpoint_extra = checkpoint_extra or dict
        self.progress = progress
        self.null_class = data.num_classes
        self.loss_by_t_from = tc.steps - int(round(tc.steps * LOSS_BY_T_SHARE))  # first step binned by t
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else contextlib.nullcontext()
        )
        self._reset_accumulators()

    # -- one step -------------------------------------------------------------------
    def prepare_batch(self) -> Batch:
        """Random rows (with replacement, from data_gen), noise and label dropout (shared by all methods)."""
        B = self.local_batch_size
        idx = torch.randint(len(self.data), (B,), generator=self.data_gen)
        x1, y = self.data.get(idx)
        if self.cfg.data.augment == "flip":  # training only: the data's reference set stays as it is
            x1 = flip_rows(x1, self.data_gen)
        x1 = x1.to(self.device, non_blocking=True)
        if y is None:
            y = y_kept = torch.full((B,), self.null_class, dtype=torch.long, device=self.device)
        else:
            y = y_kept = y.to(self.device, non_blocking=True)  # a method may exempt rows from dropout (Batch.labels_kept)
            if self.cfg.train.label_dropout > 0:
                drop = torch.rand(B, generator=self.gen, device=self.device) < self.cfg.train.label_dropout
                y = torch.where(drop, torch.full_like(y, self.null_class), y)
        x0 = torch.randn(x1.shape, generator=self.gen, device=self.device, dtype=x1.dtype)
        return Batch(x1=x1, x0=x0, y=y, null_class=self.null_class, y_kept=y_kept)

    def train_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step; returns the loss and per-row-group losses as tensors (no host sync)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused
        batch = self.prepare_batch()
        with self.autocast:
            tg = self.method.targets(self.fmodel, self.fema, batch, self.step, self.gen)
            pred = self.ftrain(tg.x_t, tg.t, tg.d, tg.y)
            extra = self.method.extra_loss(pred, tg, batch, self.step, self.gen)
        per_row = (pred.float() - tg.target.float()).pow(2).flatten(1).mean(1)
        loss = per_row.mean() if tg.weight is None else (per_row * tg.weight).mean()
        for v in extra.values():
            loss = loss + v.float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1 and self.method_params:  # DDP averages the model's gradients only
            for p in self.method_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        tc, span = self.cfg.train, self.method.lr_span(self.step, self.cfg.train.steps)
        stage = self.method.stage_optimiser(self.step, tc.steps)  # a stretch the method steps apart from train.*
        clip, weight_decay, ema_decay = tc.grad_clip, tc.weight_decay, tc.ema_decay
        if stage is not None:
            if stage.fresh_state and self.step == stage.first:
                self.opt.state.clear()  # a new optimiser for the stretch: moments from zero
            tc = dataclasses.replace(tc, lr=stage.lr, lr_schedule=stage.lr_schedule, lr_warmup=stage.lr_warmup)
            span, clip, weight_decay, ema_decay = (stage.first, stage.count), stage.grad_clip, stage.weight_decay, stage.ema_decay
        if clip > 0:
            # one norm over everything the optimiser steps: the model and the method's modules (RDD's head), unless the stretch says
            modules = self.method_params if stage is None or stage.clip_modules else []
            torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + modules, clip)
        lr = lr_at(self.step, tc, span)
        for i, g in enumerate(self.opt.param_groups):  # constant: train.lr, the value the groups already hold
            g["lr"] = stage.modules_lr if i > 0 and stage is not None and stage.modules_lr is not None else lr
            g["weight_decay"] = weight_decay
        self.opt.step()
        self._update_ema(ema_decay)
        self.method.on_step_end(self.step, self.model, self.ema)
        groups = {k.split("/", 1)[1]: m for k, m in tg.info.items() if k.startswith("row_group/")}
        # a group without rows in this step is nan (0 / 0): the log interval's mean skips it
        parts = {"loss_" + k: (per_row.detach() * m).sum() / m.sum() for k, m in groups.items()}
        if groups:  # each group's target second moment: the scale its loss is read against (the failure rule's)
            target2 = tg.target.detach().float().pow(2).flatten(1).mean(1)
            parts.update({"target2_" + k: (target2 * m).sum() / m.sum() for k, m in groups.items()})
        if groups and self.step >= self.loss_by_t_from:
            self._bin_by_t(per_row.detach(), tg.t if tg.time is None else tg.time, groups)
        parts.update({k: v.detach().float() for k, v in tg.info.items() if not k.startswith("row_group/")})
        parts.update({f"loss_{k}": v.detach().float() for k, v in extra.items()})
        return loss.detach(), parts

    def _bin_by_t(self, per_row: Tensor, time: Tensor, groups: dict[str, Tensor]) -> None:
        """Adds this step's per-row losses to the (group, t bin) sums and row counts (Trainer.loss_by_t)."""
        bins = (time.detach().float() * LOSS_BY_T_BINS).floor().clamp(0, LOSS_BY_T_BINS - 1).long()
        onehot = torch.nn.functional.one_hot(bins, LOSS_BY_T_BINS).float()  # (B, T)
        masks = torch.stack(list(groups.values())).float()  # (G, B)
        sums, counts = masks @ (onehot * per_row.float()[:, None]), masks @ onehot
        for name, s_, c_ in zip(groups, sums, counts):
            old = self._by_t.get(name)
            self._by_t[name] = (s_, c_) if old is None else (old[0] + s_, old[1] + c_)

    def loss_by_t(self) -> dict[str, tuple[list[float], list[int]]]:
        """Per row group: (summed loss, rows) in each of LOSS_BY_T_BINS bins of the path time t over the
        rows of the last LOSS_BY_T_SHARE of training (the training loss per t at each level, as the
        authors' "Training Loss per T"); data parallel: over every rank's rows (a collective)."""
        out = {}
        for name in sorted(self._by_t):
            s_, c_ = self._by_t[name]
            if self.world_size > 1:
                both = torch.stack([s_, c_])
                dist.all_reduce(both)
                s_, c_ = both
            out[name] = (s_.tolist(), [int(round(v)) for v in c_.tolist()])
        return out

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        """EMA <- decay EMA + (1 - decay) model; decay 0: the EMA is the live weights."""
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1.0 - decay)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    # -- the loop -------------------------------------------------------------------
    def _reset_accumulators(self) -> None:
        self._acc: dict[str, Tensor] = {}
        self._acc_cnt: dict[str, Tensor] = {}  # per key: the steps where it was finite (a group with rows)
        self._acc_n = 0
        self._by_t: dict[str, tuple[Tensor, Tensor]] = {}
        self._bad_step = torch.tensor(-1, device=self.device)
        self._bad_loss = torch.tensor(0.0, device=self.device)

    def _accumulate(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        for k, v in parts.items():
            ok = torch.isfinite(v)
            self._acc[k] = self._acc.get(k, torch.zeros((), device=self.device)) + torch.where(ok, v, 0.0)
            self._acc_cnt[k] = self._acc_cnt.get(k, torch.zeros((), device=self.device)) + ok
        self._acc["loss"] = self._acc.get("loss", torch.zeros((), device=self.device)) + loss
        self._acc_n += 1
        first_bad = (self._bad_step < 0) & ~torch.isfinite(loss)
        # torch.full, not torch.tensor: a tensor from host data is a blocking copy to the GPU
        self._bad_step = torch.where(first_bad, torch.full((), self.step, device=self.device), self._bad_step)
        self._bad_loss = torch.where(first_bad, loss, self._bad_loss)

    def _flush(self) -> None:
        """Host sync point: non-finite check, then the interval's mean losses to the logger."""
        if not self._acc_n:
            return
        # each part over the steps where it had rows (nan where it had none in the whole interval)
        sums = torch.stack(list(self._acc.values()))
        counts = torch.stack([self._acc_cnt[k].float() if k in self._acc_cnt else torch.full((), float(self._acc_n), device=self.device)
                              for k in self._acc])
        bad_step, bad_loss = self._bad_step, self._bad_loss
        if self.world_size > 1:  # every rank logs and checks the same numbers: means over ranks, first bad step
            both = torch.stack([sums, counts])
            dist.all_reduce(both)
            sums, counts = both
            never = torch.iinfo(torch.long).max
            first = torch.where(bad_step < 0, never, bad_step)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            bad_loss = torch.where(first == bad_step, bad_loss, torch.nan)  # nan: the value is on another rank
            bad_step = torch.where(first == never, -1, first)
        mean_values = sums / counts
        every = dict(zip(self._acc, mean_values.tolist()))
        means = {k: v for k, v in every.items() if math.isfinite(v) or k == "loss"}  # a group without rows: no point
        bad = int(bad_step.item())
        if bad >= 0:
            parts = ", ".join(f"{k} {v:.4g}" for k, v in every.items())
            raise NonFiniteLoss(
                f"Training loss became non-finite ({bad_loss.item()}) at step {bad}; "
                f"mean loss parts over steps {self.step - self._acc_n + 1}-{self.step}: {parts}. "
                f"The last good checkpoint is kept.",
                step=bad,
            )
        with span("train_logging"):
            self.log({f"train/{k}": v for k, v in means.items()}, self.step)
        self._acc, self._acc_cnt, self._acc_n = {}, {}, 0
        self._last_means = means

    def run_steps(self, k: int) -> None:
        """k optimiser steps as fit takes them: losses accumulate on the device, no host sync (`bench speed` times this)."""
        for _ in range(k):
            loss, parts = self.train_step()
            self.step += 1
            self._accumulate(loss, parts)

    def discard_losses(self) -> None:
        """Forget the losses accumulated since the last log (steps that were only timed)."""
        self._acc, self._acc_cnt, self._acc_n = {}, {}, 0
        self._by_t = {}

    def fit(self) -> dict[str, float]:
        """Train from self.step to train.steps; checkpoints every train.checkpoint_every and at the end."""
        from tqdm import tqdm

        tc = self.cfg.train
        self.model.train()
        bar = tqdm(total=tc.steps, initial=self.step, desc=f"train {self.method.name}", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=0.5)
        self._last_means: dict[str, float] = {}
        t0, s0 = time.perf_counter(), self.step
        with span("train_steps"):
            self._loop(bar, t0, s0)
        bar.close()
        self._flush()
        return self._last_means

    def _loop(self, bar, t0: float, s0: int) -> None:
        tc = self.cfg.train
        while self.step < tc.steps:
            self.run_steps(1)
            last = self.step == tc.steps
            if self.step % tc.log_every == 0 or last:
                self._flush()
                rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{self._last_means.get('loss', float('nan')):.4f}", steps_s=f"{rate:.1f}")
            if (self.checkpoint_path or self.world_size > 1) and (self.step % tc.checkpoint_every == 0 or last):
                self._flush()
                rank_rng = self._gather_rank_rng() if self.world_size > 1 else None  # collective: all ranks take part
                if self.checkpoint_path:
                    with span("checkpoints"):
                        checkpoint.save_rotating(self.state_dict(rank_rng), self.checkpoint_path)
            if (self.evaluate or self.world_size > 1) and tc.eval_every and self.step % tc.eval_every == 0 and not last:
                self._flush()  # under DDP a collective: ranks without the evaluate hook flush here too
                if self.evaluate:
                    with span("eval_during"):
                        self.evaluate(self.step)  # the other ranks wait at their next collective
                    self.model.train()
            bar.update(1)

    # -- checkpoints ----------------------------------------------------------------
    def _gather_rank_rng(self) -> list[tuple[Tensor, Tensor]]:
        """(gen, data_gen) states of every rank, in rank order (a checkpoint resumes each rank's streams)."""
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, (_gen_state(self.gen), _gen_state(self.data_gen)))
        return states

    def state_dict(self, rank_rng: list[tuple[Tensor, Tensor]] | None = None) -> dict[str, Any]:
        """rank_rng: every rank's random state (data parallel), from _gather_rank_rng."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": _gen_state(self.gen),
            "data_gen": _gen_state(self.data_gen),
            "method": self.method.state_dict(),
            "config": self.cfg.to_dict(),
            "loss_by_t": {k: [s_, c_] for k, (s_, c_) in self._by_t.items()},
            **({"rank_rng": rank_rng} if rank_rng else {}),
            **self.checkpoint_extra(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        gen, data_gen = state["gen"], state["data_gen"]
        if self.world_size > 1:
            ranks = state.get("rank_rng") or []
            if len(ranks) != self.world_size:
                raise BenchError(f"The checkpoint holds the random state of {len(ranks) or 1} rank(s); "
                                 f"this run has {self.world_size}.")
            gen, data_gen = ranks[self.rank]
        self.gen.set_state(gen)
        self.data_gen.set_state(data_gen)
        self.method.load_state_dict(state["method"])
        self.step = int(state["step"])
        self._reset_accumulators()
        if self.rank == 0:  # rank 0 saved its own rows' bins; the other ranks' since the checkpoint add to them
            self._by_t = {k: (v[0].to(self.device), v[1].to(self.device)) for k, v in state.get("loss_by_t", {}).items()}
