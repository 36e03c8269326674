"""The one training loop. It never asks which method it runs: the method builds targets,
the loop predicts, takes an MSE, steps AdamW, updates the EMA and calls on_step_end."""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench import checkpoint
from bench.config import Config
from bench.data import Dataset
from bench.errors import NonFiniteLoss
from methods.base import Batch, Method


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from bench.errors import BenchError

        raise BenchError(f"train.device = {name} but no CUDA device is available; use auto or cpu.")
    return dev


def _gen_state(g: torch.Generator) -> Tensor:
    return g.get_state()


class Trainer:
    """Holds model, EMA, optimiser, step and random state; `fit()` runs to `train.steps`.

    log(metrics, step): receives train/* scalars every `train.log_every` steps.
    on_checkpoint(path, step): called after each atomic checkpoint write.
    evaluate(step): called every `train.eval_every` steps (0 = never during training).
    checkpoint_extra(): extra entries stored in every checkpoint (e.g. the MLflow run id).
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
    ):
        tc = cfg.train
        self.cfg, self.method, self.data, self.device = cfg, method, data, device
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()  # exact copy at step 0
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
            fused=device.type == "cuda",
        )
        # compiled views share parameters with the eager modules (checkpoints hold the eager ones)
        self.fmodel = torch.compile(self.model) if tc.compile else self.model
        self.fema = torch.compile(self.ema) if tc.compile else self.ema
        self.step = 0
        self.gen = torch.Generator(device).manual_seed(cfg.seed)  # noise, times, label dropout
        self.data_gen = torch.Generator().manual_seed(cfg.seed + 1)  # data order
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.log = log or (lambda metrics, step: None)
        self.evaluate = evaluate
        self.checkpoint_extra = checkpoint_extra or dict
        self.progress = progress
        self.null_class = data.num_classes
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else contextlib.nullcontext()
        )
        self._reset_accumulators()

    # -- one step -------------------------------------------------------------------
    def prepare_batch(self) -> Batch:
        """Random rows (with replacement, from data_gen), noise and label dropout (shared by all methods)."""
        B = self.cfg.train.batch_size
        idx = torch.randint(len(self.data), (B,), generator=self.data_gen)
        x1, y = self.data.get(idx)
        x1 = x1.to(self.device, non_blocking=True)
        if y is None:
            y = torch.full((B,), self.null_class, dtype=torch.long, device=self.device)
        else:
            y = y.to(self.device, non_blocking=True)
            if self.cfg.train.label_dropout > 0:
                drop = torch.rand(B, generator=self.gen, device=self.device) < self.cfg.train.label_dropout
                y = torch.where(drop, torch.full_like(y, self.null_class), y)
        x0 = torch.randn(x1.shape, generator=self.gen, device=self.device, dtype=x1.dtype)
        return Batch(x1=x1, x0=x0, y=y, null_class=self.null_class)

    def train_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step; returns the loss and per-row-group losses as tensors (no host sync)."""
        batch = self.prepare_batch()
        with self.autocast:
            tg = self.method.targets(self.fmodel, self.fema, batch, self.step, self.gen)
            pred = self.fmodel(tg.x_t, tg.t, tg.d, tg.y)
        per_row = (pred.float() - tg.target.float()).pow(2).flatten(1).mean(1)
        loss = per_row.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self._update_ema()
        self.method.on_step_end(self.step, self.model, self.ema)
        parts = {
            "loss_" + k.split("/", 1)[1]: (per_row.detach() * m).sum() / m.sum().clamp(min=1)
            for k, m in tg.info.items()
            if k.startswith("row_group/")
        }
        parts.update({k: v.detach().float() for k, v in tg.info.items() if not k.startswith("row_group/")})
        return loss.detach(), parts

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.train.ema_decay
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1.0 - decay)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    # -- the loop -------------------------------------------------------------------
    def _reset_accumulators(self) -> None:
        self._acc: dict[str, Tensor] = {}
        self._acc_n = 0
        self._bad_step = torch.tensor(-1, device=self.device)
        self._bad_loss = torch.tensor(0.0, device=self.device)

    def _accumulate(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        for k, v in {"loss": loss, **parts}.items():
            self._acc[k] = self._acc.get(k, torch.zeros((), device=self.device)) + v
        self._acc_n += 1
        first_bad = (self._bad_step < 0) & ~torch.isfinite(loss)
        self._bad_step = torch.where(first_bad, torch.tensor(self.step, device=self.device), self._bad_step)
        self._bad_loss = torch.where(first_bad, loss, self._bad_loss)

    def _flush(self) -> None:
        """Host sync point: non-finite check, then the interval's mean losses to the logger."""
        if not self._acc_n:
            return
        means = {k: (v / self._acc_n).item() for k, v in self._acc.items()}
        bad = int(self._bad_step.item())
        if bad >= 0:
            parts = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
            raise NonFiniteLoss(
                f"Training loss became non-finite ({self._bad_loss.item()}) at step {bad}; "
                f"mean loss parts over steps {self.step - self._acc_n + 1}-{self.step}: {parts}. "
                f"The last good checkpoint is kept."
            )
        self.log({f"train/{k}": v for k, v in means.items()}, self.step)
        self._acc, self._acc_n = {}, 0
        self._last_means = means

    def fit(self) -> dict[str, float]:
        """Train from self.step to train.steps; checkpoints every train.checkpoint_every and at the end."""
        from tqdm import tqdm

        tc = self.cfg.train
        self.model.train()
        bar = tqdm(total=tc.steps, initial=self.step, desc=f"train {self.method.name}", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=0.5)
        self._last_means: dict[str, float] = {}
        t0, s0 = time.perf_counter(), self.step
        while self.step < tc.steps:
            loss, parts = self.train_step()
            self.step += 1
            self._accumulate(loss, parts)
            last = self.step == tc.steps
            if self.step % tc.log_every == 0 or last:
                self._flush()
                rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{self._last_means.get('loss', float('nan')):.4f}", steps_s=f"{rate:.1f}")
            if self.checkpoint_path and (self.step % tc.checkpoint_every == 0 or last):
                self._flush()
                self.save(self.checkpoint_path)
            if self.evaluate and tc.eval_every and self.step % tc.eval_every == 0 and not last:
                self._flush()
                self.evaluate(self.step)
                self.model.train()
            bar.update(1)
        bar.close()
        self._flush()
        return self._last_means

    # -- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": _gen_state(self.gen),
            "data_gen": _gen_state(self.data_gen),
            "method": self.method.state_dict(),
            "config": self.cfg.to_dict(),
            **self.checkpoint_extra(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.data_gen.set_state(state["data_gen"])
        self.method.load_state_dict(state["method"])
        self.step = int(state["step"])
        self._reset_accumulators()

    def save(self, path: Path) -> Path:
        checkpoint.save(self.state_dict(), path)
        return path
