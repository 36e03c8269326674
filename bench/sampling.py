"""The generic n-step sampler and NFE counting. Which d, CFG or update a step uses is the method's."""

from __future__ import annotations

from typing import Iterator

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


def generate(method: Method, model: nn.Module, shape: tuple[int, ...], num_classes: int, label_probs: Tensor | None,
             num_samples: int, batch_size: int, num_sampling_steps: int, seed: int, device) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (x (b, *shape), y (b,)) batches. The same seed gives the same noise and labels for
    every number of steps, so curves over n compare the same starting points."""
    g = torch.Generator(device).manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        y = draw_labels(b, num_classes, label_probs, g, device)
        x0 = torch.randn(b, *shape, generator=g, device=device)
        yield sample(method, model, x0, y, num_sampling_steps, g), y
