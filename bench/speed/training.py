"""`bench speed`: training steps (methods interleaved) and sampling at n = 1 (the harness against a bare loop)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from bench.evaluation.evaluate import sync
from bench.speed.cost import BASELINE, _repetitions, _seconds, forward_flops, median_ratio, peak_tflops, predicted_ratio
from bench.speed.prepare import Setup, build_trainer
from methods.base import step_cost


@dataclass
class StepTiming:
    method: str
    seconds: list[float]  # per step, one entry per round
    first_seconds: float  # the first step: compilation and one-off work (a reflow's pairs, ...)
    ratio: float  # median over rounds of seconds / flow matching's
    predicted: float  # from passes_per_step
    rows_per_second: float
    tflops: float | None = None
    peak_share: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_training(s: Setup, rounds: int = 7, steps_per_round: int = 5, warmup: int = 2,
                  log: Callable[[str], None] = print) -> list[StepTiming]:
    """Interleaved training-step timings of every method (see the module doc)."""
    trainers = {n: build_trainer(cfg, s.data, s.device) for n, cfg in s.configs.items()}
    first: dict[str, float] = {}

    for n, tr in trainers.items():
        tr.model.train()
        first[n] = _seconds(lambda: tr.run_steps(1), s.device)
        tr.run_steps(max(warmup - 1, 0))
        sync(s.device)
        tr.discard_losses()
        log(f"  warmed up {n}: first step {first[n]:.3g} s")
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no method always runs first
        for n in order:
            times[n].append(_seconds(lambda: trainers[n].run_steps(steps_per_round), s.device) / steps_per_round)
        for tr in trainers.values():
            tr.discard_losses()

    base_cfg = s.configs[BASELINE]
    B = base_cfg.train.batch_size
    base_passes = trainers[BASELINE].method.passes_per_step(B)
    model = trainers[BASELINE].model
    flops = forward_flops(model, s.data.shape, s.data.num_classes, s.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    peak = peak_tflops(torch.cuda.get_device_name(s.device), base_cfg.train.precision, tf32) if s.device.type == "cuda" else None
    out = []
    for n in names:
        passes = trainers[n].method.passes_per_step(B)
        med = statistics.median(times[n])
        tfl = flops * step_cost(passes) / med / 1e12
        out.append(StepTiming(n, times[n], first[n], median_ratio(times[n], times[BASELINE]),
                              predicted_ratio(passes, base_passes), B / med, tfl, tfl / peak if peak else None))
    s.trainers = trainers
    return out


@dataclass
class SamplingTiming:
    method: str
    batch_size: int
    harness_per_second: float
    bare_per_second: float
    calls: int  # model calls at n = 1

    @property
    def ratio(self) -> float:
        return self.harness_per_second / self.bare_per_second


class _Recorder(nn.Module):
    """Wraps a model and keeps the inputs of every call (to replay them in the bare loop)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, d, y):
        self.calls.append((x.shape[0], t, d, y))
        return self.model(x, t, d, y)


def bare_loop(model: nn.Module, x0: Tensor, calls: list[tuple[int, Tensor, Tensor, Tensor]], num_steps: int) -> Tensor:
    """The same model calls as the harness made, with nothing around them but an Euler update."""
    x, b = x0, x0.shape[0]
    for rows, t, d, y in calls:
        inp = x if rows == b else x.repeat(rows // b, *([1] * (x.dim() - 1)))
        x = x + model(inp, t, d, y)[:b] / num_steps
    return x


@torch.no_grad()
def time_sampling(method, model: nn.Module, data, batch_size: int, device: torch.device, rounds: int = 7,
                  seed: int = 0) -> SamplingTiming:
    """Samples per second at n = 1: `bench.evaluation.sampling.sample` against `bare_loop`, interleaved, medians."""
    from bench.evaluation.sampling import draw_labels, sample

    model.eval()
    g = torch.Generator(device).manual_seed(seed)
    x0 = torch.randn(batch_size, *data.shape, generator=g, device=device)
    y = draw_labels(batch_size, data.num_classes, data.label_probs(), g, device)
    rec = _Recorder(model)
    sample(method, rec, x0, y, 1, g)  # also the warm-up
    reps = _repetitions(lambda: bare_loop(model, x0, rec.calls, 1), device)
    harness, bare = [], []
    for _ in range(rounds):
        harness.append(_seconds(lambda: [sample(method, model, x0, y, 1, g) for _ in range(reps)], device) / reps)
        bare.append(_seconds(lambda: [bare_loop(model, x0, rec.calls, 1) for _ in range(reps)], device) / reps)
    return SamplingTiming(method.name, batch_size, batch_size / statistics.median(harness),
                          batch_size / statistics.median(bare), len(rec.calls))


def format_training(rows: list[StepTiming], rounds: int, steps: int, cuda: bool) -> str:
    lines = [f"training step: median of {rounds} interleaved rounds x {steps} steps; ratio = median over rounds "
             f"of time / {BASELINE}'s; predicted from passes_per_step (forward+backward row 3, no-grad row 1)",
             f"{'method':26s} {'ms/step':>9s} {'ratio':>7s} {'predicted':>9s} {'rows/s':>9s} {'first step s':>12s} "
             f"{'TFLOP/s':>8s}" + (f" {'of peak':>8s}" if cuda else "")]
    for r in rows:
        line = (f"{r.method:26s} {r.median * 1e3:9.2f} {r.ratio:7.3f} {r.predicted:9.3f} {r.rows_per_second:9.0f} "
                f"{r.first_seconds:12.3g} {r.tflops:8.3g}")
        if cuda:
            line += f" {r.peak_share:8.1%}" if r.peak_share is not None else f" {'n/a':>8s}"
        lines.append(line)
    return "\n".join(lines)


def format_sampling(rows: list[SamplingTiming]) -> str:
    """The harness sampler's overhead over a bare loop of the same model calls. The time of an evaluation
    is the evaluator's own estimate (bench.speed.evaluation, the FID-N table), not a figure from here."""
    lines = ["sampling at n = 1 (EMA model, no grad): harness sampler vs a bare loop of the same model calls",
             f"{'method':26s} {'batch':>6s} {'calls':>5s} {'harness/s':>10s} {'bare/s':>10s} {'harness/bare':>12s}"]
    for r in rows:
        lines.append(f"{r.method:26s} {r.batch_size:6d} {r.calls:5d} {r.harness_per_second:10.0f} {r.bare_per_second:10.0f} "
                     f"{r.ratio:12.3f}")
    return "\n".join(lines)
