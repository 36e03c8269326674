"""`bench speed`'s yardsticks: the method every ratio is to, dense peaks, forward FLOPs and the timer."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import torch
from torch import nn

from bench.evaluation.evaluate import timed
from methods.base import step_cost

BASELINE = "flow_matching"  # every ratio is to this method's step

# dense tensor-core peaks in TFLOP/s: (bf16, tf32, fp32 without tensor cores); most specific name first
PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("H200", (989.0, 494.0, 67.0)),
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100 NVL", (835.0, 418.0, 60.0)),
    ("H100", (989.0, 494.0, 67.0)),  # SXM
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
]


# ----------------------------------------------------------------------------- pure helpers


def predicted_ratio(passes: dict[str, float], baseline: dict[str, float]) -> float:
    return step_cost(passes) / step_cost(baseline)


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's dense peak for `precision` ("bf16" or "fp32"), None when the device is not listed."""
    for key, (bf16, tf32_peak, fp32) in PEAK_TFLOPS:
        if key in device_name:
            return bf16 if precision == "bf16" else (tf32_peak if tf32 else fp32)
    return None


def median_ratio(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of time / baseline time of the same round."""
    return statistics.median(a / b for a, b in zip(times, baseline))


def forward_flops(model: nn.Module, shape: tuple[int, ...], num_classes: int, device) -> float:
    """FLOPs of one forward pass of one row: model.flops_per_forward() when it exists, else counted."""
    if hasattr(model, "flops_per_forward"):
        return float(model.flops_per_forward())
    return counted_forward_flops(model, shape, num_classes, device)


@torch.no_grad()
def counted_forward_flops(model: nn.Module, shape: tuple[int, ...], num_classes: int, device, rows: int = 2) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(rows, *shape, device=device)
    t = torch.zeros(rows, device=device)
    y = torch.full((rows,), num_classes, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, t, y)
    return counter.get_total_flops() / rows


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    return timed(fn, device)[0]


def _repetitions(fn: Callable[[], Any], device: torch.device, block_seconds: float = 0.1) -> int:
    """Calls per timed block so that a block lasts about `block_seconds` (after one warm-up call)."""
    fn()
    return max(1, math.ceil(block_seconds / max(_seconds(fn, device), 1e-6)))
