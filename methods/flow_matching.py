"""Flow matching (the "naive" baseline): regress v = x1 - x0, sample with Euler at d = 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Batch, Method, MethodOptions, Targets, full, grid_times, interpolate, velocity


@dataclass
class FlowMatchingOptions(MethodOptions):
    time_sampling: str = "grid"  # "grid": t ~ U{0, 1/M, ..., (M-1)/M}; "uniform": t ~ U[0, 1)

    def validate(self) -> None:
        from bench.errors import BenchError

        if self.time_sampling not in ("grid", "uniform"):
            raise BenchError(f"method.time_sampling must be grid or uniform, got {self.time_sampling!r}.")


class FlowMatching(Method):
    """The network ignores d (always fed d = 0). CFG, when w != 1, at every sampling step."""

    name = "flow_matching"
    family = "flow and diffusion"
    Options = FlowMatchingOptions
    sampling_time_options = frozenset({"cfg_scale"})  # targets ignore it; CFG is applied when sampling

    @classmethod
    def trains_on_M(cls, options) -> bool:
        return options.time_sampling == "grid"  # t on the grid {0, 1/M, ...}; uniform t never reads M

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        B, dev = batch.x1.shape[0], batch.x1.device
        if self.opts.time_sampling == "grid":
            t = grid_times(B, self.opts.M, generator, dev)
        else:
            t = torch.rand(B, generator=generator, device=dev)
        x_t = interpolate(batch.x0, batch.x1, t)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=batch.y, target=batch.x1 - batch.x0)

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        tt = full(t, x)
        v = velocity(model, x, tt, torch.zeros_like(tt), y, self.opts.cfg_scale, self.null_class)
        return x + v / num_sampling_steps
