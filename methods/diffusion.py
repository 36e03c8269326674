"""Diffusion (the paper's "Diffusion" row): DDPM-style training, DDIM (eta = 0) sampling.

Two parameterisations (option `parameterization`), both with t = 0 pure noise and t = 1 data:
- "v" (default): the variance-preserving path with angle phi = pi t / 2, alpha = sin phi,
  sigma = cos phi, x_t = alpha x1 + sigma x0; target w = sigma x1 - alpha x0 (= dx_t / dphi);
  d = 0. DDIM is then an exact rotation: with delta = pi / (2n), x <- cos(delta) x + sin(delta) w_hat
  (the same as x1_hat = alpha x + sigma w_hat, x0_hat = sigma x - alpha w_hat re-noised at phi + delta).
- "eps" (DDPM as published): linear beta from beta_start to beta_end over T = num_timesteps steps,
  abar_k = prod_{i <= k} (1 - beta_i), k in {1..T}; x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0,
  target eps = x0; the network sees t = 1 - k / T. DDIM with trailing spacing: step i of n goes from
  k = T (1 - i/n) to k' = T (1 - (i+1)/n) (abar_0 = 1: the last step lands on x1_hat), i.e. the
  sampler's t = i/n exactly; n = 1 starts at k = T, the noisiest step ("leading" spacing would start at
  k = 1 + T - T/n, almost the data, at n = 1). No clipping of x1_hat.
With the exact model, one step from t = 0 returns E[x1] (v; eps: up to sqrt(abar_T)): the collapse
of flow matching. CFG, when w != 1, at every sampling step on the network's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.errors import BenchError
from methods.base import Batch, Method, MethodOptions, Targets, bshape, full, grid_times, velocity


@dataclass
class DiffusionOptions(MethodOptions):
    parameterization: str = "v"  # "v": VP path with angle, v-target, DDIM as an exact rotation; "eps": DDPM (linear beta, eps-target, trailing DDIM)
    time_sampling: str = "grid"  # v: "grid" t ~ U{0, 1/M, ..., (M-1)/M} or "uniform" t ~ U[0, 1); eps always draws k ~ U{1..T}
    num_timesteps: int = 1024  # eps: T, the DDPM steps; a multiple of M so trailing DDIM steps land on trained k
    beta_start: float = 1e-4  # eps: beta_1
    beta_end: float = 0.02  # eps: beta_T

    def validate(self) -> None:
        if self.parameterization not in ("v", "eps"):
            raise BenchError(f"method.parameterization must be v or eps, got {self.parameterization!r}.")
        if self.time_sampling not in ("grid", "uniform"):
            raise BenchError(f"method.time_sampling must be grid or uniform, got {self.time_sampling!r}.")
        if self.parameterization == "eps":
            if self.num_timesteps < 1 or self.num_timesteps % self.M:
                raise BenchError(f"method.num_timesteps = {self.num_timesteps} must be a positive multiple of M = {self.M} "
                                 "(trailing DDIM steps must land on trained timesteps).")
            if not 0.0 < self.beta_start <= self.beta_end < 1.0:
                raise BenchError(f"method.beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1, "
                                 f"got {self.beta_start} and {self.beta_end}.")


def alphas_cumprod(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """abar_k for k = 0..T (float64, abar_0 = 1): DDPM's linear beta schedule."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


class Diffusion(Method):
    """DDPM-trained (v or eps target), DDIM-sampled (eta = 0) diffusion baseline; ignores d."""

    name = "diffusion"
    family = "flow and diffusion"
    Options = DiffusionOptions
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling

    @classmethod
    def trains_on_M(cls, options) -> bool:
        return options.parameterization == "v" and options.time_sampling == "grid"  # eps draws k ~ U{1..T}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.opts
        self._abar = alphas_cumprod(o.num_timesteps, o.beta_start, o.beta_end) if o.parameterization == "eps" else None

    # -- the eps schedule ---------------------------------------------------------------
    def _coeffs(self, k: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_k), sqrt(1 - abar_k) for integer k (B,), in like's dtype and device."""
        abar = self._abar.to(like.device)[k]
        return abar.sqrt().to(like.dtype), (1 - abar).sqrt().to(like.dtype)

    def timestep(self, t: float) -> int:
        """DDPM step k of sampler time t (the trailing spacing: t = 1 - k / T)."""
        return round(self.opts.num_timesteps * (1.0 - t))

    # -- training -----------------------------------------------------------------------
    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1 = batch.x0, batch.x1
        B, dev = x1.shape[0], x1.device
        if self.opts.parameterization == "eps":
            T = self.opts.num_timesteps
            k = torch.randint(1, T + 1, (B,), generator=generator, device=dev)
            a, s = self._coeffs(k, x1)
            x_t = bshape(a, x1) * x1 + bshape(s, x1) * x0
            t = 1.0 - k.to(x1.dtype) / T
            return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=batch.y, target=x0)
        if self.opts.time_sampling == "grid":
            t = grid_times(B, self.opts.M, generator, dev)
        else:
            t = torch.rand(B, generator=generator, device=dev)
        phi = bshape(t, x1) * (math.pi / 2)
        alpha, sigma = torch.sin(phi), torch.cos(phi)
        return Targets(x_t=alpha * x1 + sigma * x0, t=t, d=torch.zeros_like(t), y=batch.y,
                       target=sigma * x1 - alpha * x0)

    # -- sampling -----------------------------------------------------------------------
    def eval_precision(self, precision: str) -> str:
        # eps: x1_hat = (x - sqrt(1 - abar) eps_hat) / sqrt(abar) with sqrt(abar_T) ~ 0.006 at the first trailing
        # step multiplies the output's rounding (bf16 0.4 %, TF32 0.05 %) by ~178: 1-step samples off by 0.29 RMS in bf16
        return "fp32" if self.opts.parameterization == "eps" else precision

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n = num_sampling_steps
        tt = full(t, x)
        out = velocity(model, x, tt, torch.zeros_like(tt), y, self.opts.cfg_scale, self.null_class)
        if self.opts.parameterization == "v":
            delta = math.pi / (2 * n)
            return math.cos(delta) * x + math.sin(delta) * out
        k, k_next = self.timestep(t), self.timestep(t + 1.0 / n)
        abar = self._abar
        a, s = math.sqrt(abar[k]), math.sqrt(1 - abar[k])
        a_next, s_next = math.sqrt(abar[k_next]), math.sqrt(1 - abar[k_next])
        x1_hat = (x - s * out) / a
        return a_next * x1_hat + s_next * out
