"""The generic n-step sampler and NFE counting. Which d, CFG or update a step uses is the method's."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from methods.base import Method


class NFECounter(nn.Module):
    """Wraps a model; counts network evaluations per sample (rows evaluated / batch rows)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x, t, d, y):
        self.rows += x.shape[0]
        return self.model(x, t, d, y)


def resolve_precision(precision: str, device: torch.device) -> str:
    """eval.precision -> what runs: "bf16" (autocast), "fp32-tf32" (CUDA) or "fp32"."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32" and device.type == "cuda":
        return "fp32-tf32"
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device):
    """Autocast for "bf16"; TF32 matmuls for "fp32-tf32" (restored afterwards); nothing for "fp32"."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    old = torch.get_float32_matmul_precision()
    if precision == "fp32-tf32":
        torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(old)


# rows per network call in evaluation on a CPU (eval.forward_rows = 0): a digits DiT (hidden 96, 16
# tokens) at 2,000 rows a call takes 2.4 s a step on 2 cores and 0.55 s in calls of 128-500 rows
# (its activations then stay in cache), with bitwise the same output (tests/test_forward_rows.py)
CPU_FORWARD_ROWS = 256


def resolve_forward_rows(forward_rows: int, device: torch.device) -> int:
    """eval.forward_rows -> rows per network call (0 = no split): auto (0) is CPU_FORWARD_ROWS on a
    CPU and the whole batch on an accelerator, where large calls are what fills it."""
    if forward_rows > 0:
        return forward_rows
    return CPU_FORWARD_ROWS if device.type == "cpu" else 0


class EvalModel(nn.Module):
    """The model as the sampler calls it in evaluation: in `precision` (output float32, so the
    sampler's updates stay float32), compiled once per batch shape when `compile`, and called on at
    most `forward_rows` rows at a time (0: the whole batch; the noise and the batches the sampler
    draws do not change, only how many rows go through the network at once)."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device, compile: bool = False,
                 compile_mode: str = "default", forward_rows: int = 0):
        super().__init__()
        self.model, self.precision, self.device = model, precision, device
        self.forward_rows = forward_rows
        self.compiled = compile
        # dynamic=False: one graph per row count (batch, and 2 x batch under CFG); the caller pads to keep it fixed
        self.fn = torch.compile(model, dynamic=False, mode=compile_mode) if compile else model
        if compile:  # every shape of every model of the class counts against one limit (training's graphs too)
            import torch._dynamo.config as dynamo

            name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # older torch
            setattr(dynamo, name, max(getattr(dynamo, name), 64))
        # CUDA graphs reuse their output buffers on the next replay: the sampler keeps outputs across calls
        self.clone = compile and compile_mode == "reduce-overhead" and device.type == "cuda"

    def forward(self, x, t, d, y):
        rows = self.forward_rows
        if rows and not self.compiled and len(x) > rows:  # a compiled model keeps its one batch shape
            parts = [self._call(*(a[i:i + rows] if _per_row(a, len(x)) else a for a in (x, t, d, y)))
                     for i in range(0, len(x), rows)]
            return torch.cat(parts)
        return self._call(x, t, d, y)

    def _call(self, x, t, d, y):
        with precision_context(self.precision, self.device):
            out = self.fn(x, t, d, y)
        return out.clone().float() if self.clone else out.float()


def _per_row(a, rows: int) -> bool:
    """Whether a model argument holds one entry per row (split with x) or one for all (kept whole)."""
    return isinstance(a, Tensor) and a.dim() > 0 and len(a) == rows


def pad_rows(t: Tensor, rows: int, value: float | int = 0) -> Tensor:
    """(b, ...) -> (rows, ...), filled with `value` (a compiled sampler sees one batch shape)."""
    if len(t) == rows:
        return t
    return torch.cat([t, torch.full((rows - len(t), *t.shape[1:]), value, dtype=t.dtype, device=t.device)])


@torch.no_grad()
def sample(method: Method, model: nn.Module, x0: Tensor, y: Tensor, num_sampling_steps: int,
           generator: torch.Generator | None = None) -> Tensor:
    """Noise x0 (B, *shape) at t = 0 -> samples at t = 1 in `num_sampling_steps` method steps."""
    x = x0
    for i in range(num_sampling_steps):
        x = method.sample_step(model, x, i / num_sampling_steps, num_sampling_steps, y, generator)
    return x


def count_nfe(method: Method, model: nn.Module, x0: Tensor, y: Tensor, num_sampling_steps: int) -> float:
    """Network evaluations per sample of one sampling run (n, or 2n with CFG)."""
    counter = NFECounter(model)
    sample(method, counter, x0, y, num_sampling_steps, torch.Generator(x0.device).manual_seed(0))
    return counter.rows / x0.shape[0]


def draw_labels(num: int, num_classes: int, label_probs: Tensor | None, generator: torch.Generator, device) -> Tensor:
    """Labels for generated samples: drawn from the data's class frequencies, or the null class."""
    if num_classes == 0 or label_probs is None:
        return torch.full((num,), num_classes, dtype=torch.long, device=device)
    return torch.multinomial(label_probs.to(device), num, replacement=True, generator=generator)


def batch_seed(seed: int, start: int) -> int:
    """The generator seed of the evaluation batch that begins at sample `start`: `seed` itself for the
    first batch (one-batch evaluations draw what they always drew), a hash of both for the others."""
    if start == 0:
        return seed
    return int(np.random.SeedSequence([seed, start]).generate_state(1, np.uint64)[0] >> 1)


def generate(method: Method, model: nn.Module, shape: tuple[int, ...], num_classes: int, label_probs: Tensor | None,
             num_samples: int, batch_size: int, num_sampling_steps: int, seed: int, device,
             pad: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (x (b, *shape), y (b,)) batches. The same seed gives the same noise and labels for
    every number of steps, so curves over n compare the same starting points: each batch draws its
    labels, noise and (stochastic samplers) sampler noise from a generator of its own, seeded from
    (seed, batch start), so a later batch does not depend on how many draws the sampler took
    before it at another n. pad: the last batch is sampled at the full batch size (zero noise,
    null label rows, dropped), for a compiled model."""
    for start in range(0, num_samples, batch_size):
        g = torch.Generator(device).manual_seed(batch_seed(seed, start))
        b = min(batch_size, num_samples - start)
        y = draw_labels(b, num_classes, label_probs, g, device)
        x0 = torch.randn(b, *shape, generator=g, device=device)
        rows = batch_size if pad else b
        x = sample(method, model, pad_rows(x0, rows), pad_rows(y, rows, num_classes), num_sampling_steps, g)
        yield x[:b], y
