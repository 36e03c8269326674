"""MeanFlow (Geng, Deng, Bai, Kolter, He, 2025), in this harness's time direction.

f(x_t, t, d) is the average velocity over [t, t + d]. Holding the end t + d fixed and
differentiating d * f = integral of v along the trajectory gives the MeanFlow identity
  f(x_t, t, d) = v(x_t, t) + d * D f,   D f = df/dt along the path,
the Jacobian-vector product of f at (x_t, t, d) with tangent (v, 1, -1) (torch.func.jvp).
Target: sg(v + d * jvp) with the conditional velocity v = x1 - x0 (also the tangent). A share
`mean_fraction` of each batch has d > 0 (two times drawn, t = the smaller, d = the gap); the
other rows have d = 0, where the target is v (flow matching). The paper's adaptive loss weight
w = 1 / (||target - f||^2 + c)^p (sg) goes through the trainer's plain MSE by regressing
u + w (target - u), u = sg(f(x_t, t, d)): the same gradient as w ||f - target||^2 (the logged
train/loss is then the weighted one; train/mse_unweighted is the plain error). Without it
(p = 0) the target's d * df/dt feeds back on itself and training diverges on the toy profiles.
Sampling: Euler with d = 1/n; CFG at scale w (when w != 1) at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from methods.base import Batch, Method, MethodOptions, Targets, bshape, check_fraction, full, interpolate, velocity


@dataclass
class MeanFlowOptions(MethodOptions):
    mean_fraction: float = 0.25  # share of rows with d > 0 (the paper's "r != t" ratio); the rest are flow rows
    time_sampling: str = "uniform"  # times ~ "uniform" U(0, 1) or "logit_normal" (the paper's best: mean -0.4, std 1)
    logit_mean: float = -0.4  # logit-normal location
    logit_std: float = 1.0  # logit-normal scale
    jvp_ema: bool = False  # build the target with the EMA weights (the paper: the live weights, stop-gradient)
    adaptive_p: float = 1.0  # adaptive loss weight w = 1 / (||target - f||^2 + c)^p (the paper: p = 1; 0 = plain MSE)
    adaptive_c: float = 1e-3  # the c of the adaptive weight

    def validate(self) -> None:
        check_fraction("method.mean_fraction", self.mean_fraction)
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise BenchError(f"method.time_sampling must be uniform or logit_normal, got {self.time_sampling!r}.")
        if self.logit_std <= 0:
            raise BenchError(f"method.logit_std must be > 0, got {self.logit_std}.")
        if self.adaptive_p < 0 or self.adaptive_c <= 0:
            raise BenchError(f"method.adaptive_p must be >= 0 and method.adaptive_c > 0, got {self.adaptive_p} and {self.adaptive_c}.")


def average_velocity_jvp(net, x, t, d, y, v):
    """(f(x, t, d, y), D f) with D f the JVP along the tangent (v, 1, -1); no graph is kept.

    x, v: (B, *shape); t, d: (B,). Attention runs on the math kernel (the fused CPU/flash kernels
    have no forward-mode derivative)."""
    net = getattr(net, "_orig_mod", net)  # differentiate the eager module, not a torch.compile wrapper
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return jvp(lambda x_, t_, d_: net(x_, t_, d_, y), (x, t, d), (v, torch.ones_like(t), -torch.ones_like(d)))


class MeanFlow(Method):
    """Average-velocity model trained through the MeanFlow identity (JVP); Euler at d = 1/n."""

    name = "meanflow"
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling
    Options = MeanFlowOptions

    def num_mean_rows(self, batch_size: int) -> int:
        return int(round(batch_size * self.opts.mean_fraction))

    def draw_times(self, n: int, generator, device) -> torch.Tensor:
        if self.opts.time_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.opts.logit_mean + self.opts.logit_std * z)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev = x1.shape[0], x1.device
        nb = self.num_mean_rows(B)
        a, b = self.draw_times(nb, generator, dev), self.draw_times(nb, generator, dev)
        t_m, d_m = torch.minimum(a, b), (a - b).abs()
        t_f = self.draw_times(B - nb, generator, dev)
        t = torch.cat([t_m, t_f]).to(x1.dtype)
        d = torch.cat([d_m, torch.zeros_like(t_f)]).to(x1.dtype)
        x_t = interpolate(x0, x1, t)
        v = x1 - x0
        net = ema if self.opts.jvp_ema else model
        target = v.clone()
        info: dict = {}
        with torch.no_grad():
            u_mean = None
            if nb:
                u_mean, df = average_velocity_jvp(net, x_t[:nb], t[:nb], d[:nb], y[:nb], v[:nb])
                target[:nb] = v[:nb] + bshape(d[:nb], v) * df
            if self.opts.adaptive_p > 0:
                # the trainer's plain MSE against u + w (target - u), u = sg(f) = its own prediction, has the
                # gradient of the weighted loss w ||f - target||^2: the paper's adaptive weighting, exactly
                if net is model and u_mean is not None:
                    u = torch.cat([u_mean, model(x_t[nb:], t[nb:], d[nb:], y[nb:])])
                else:
                    u = model(x_t, t, d, y)
                err = target - u
                sq = err.pow(2).flatten(1).sum(1)
                w = 1.0 / (sq + self.opts.adaptive_c) ** self.opts.adaptive_p
                info["mse_unweighted"] = sq.mean() / err[0].numel()
                target = u + bshape(w, u) * err
        groups = torch.zeros(B, dtype=torch.bool, device=dev)
        groups[:nb] = True
        return Targets(x_t=x_t, t=t, d=d, y=y, target=target,
                       info={"row_group/mean": groups, "row_group/flow": ~groups, **info})

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        # the JVP costs about a primal plus a tangent pass over the d > 0 rows; the adaptive weight needs
        # the prediction on the other rows too (on every row when the JVP uses the EMA)
        nb = self.num_mean_rows(batch_size)
        nograd = 2 * nb
        if self.opts.adaptive_p > 0:
            nograd += batch_size if self.opts.jvp_ema else batch_size - nb
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": nograd}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n = num_sampling_steps
        tt = full(t, x)
        v = velocity(model, x, tt, full(1.0 / n, x), y, self.opts.cfg_scale, self.null_class)
        return x + v / n
