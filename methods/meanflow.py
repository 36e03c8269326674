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
The network is fed (x, s t, d, y) with s = time_input_scale (0.01): the backbones embed 1000 t
with sinusoids, and the JVP differentiates through them, so frequencies up to 1000 make
d * df/dt explode (measured on smoke, 2000 steps: 1-step mode share 0.20 at s = 1 against 0.64
with the embedding's frequencies cut 1000-fold). d needs no scaling: the backbones embed it at
model.d_scale (1, smooth). The other methods never differentiate in t.
Sampling: Euler with d = 1/n; CFG at scale w (when w != 1) at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from methods.base import Batch, LossLadder, Method, MethodOptions, Targets, bshape, check_fraction, full, interpolate, velocity


@dataclass
class MeanFlowOptions(MethodOptions):
    mean_fraction: float = 0.25  # share of rows with d > 0 (the paper's "r != t" ratio); the rest are flow rows
    time_sampling: str = "uniform"  # times ~ "uniform" U(0, 1) or "logit_normal" (the paper's best: lognorm(-0.4, 1))
    # logit-normal location in this harness's time (t = 1 data): the paper's -0.4 is in its own, z_t = (1 - t) x + t eps
    # (t = 1 noise), so its mass near the data sits at +0.4 here
    logit_mean: float = 0.4
    logit_std: float = 1.0  # logit-normal scale
    jvp_ema: bool = False  # build the target with the EMA weights (the paper: the live weights, stop-gradient)
    adaptive_p: float = 1.0  # adaptive loss weight w = 1 / (||target - f||^2 + c)^p (the paper: p = 1; 0 = plain MSE)
    adaptive_c: float = 1e-3  # the c of the adaptive weight
    time_input_scale: float = 0.01  # the network sees (x, s t, d): the backbones embed 1000 t with sinusoids, and frequencies up to 1000 blow up the JVP d * df/dt

    def validate(self) -> None:
        check_fraction("method.mean_fraction", self.mean_fraction)
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise BenchError(f"method.time_sampling must be uniform or logit_normal, got {self.time_sampling!r}.")
        if self.logit_std <= 0:
            raise BenchError(f"method.logit_std must be > 0, got {self.logit_std}.")
        if not 0 < self.time_input_scale <= 1:
            raise BenchError(f"method.time_input_scale must be in (0, 1], got {self.time_input_scale}.")
        if self.adaptive_p < 0 or self.adaptive_c <= 0:
            raise BenchError(f"method.adaptive_p must be >= 0 and method.adaptive_c > 0, got {self.adaptive_p} and {self.adaptive_c}.")

    def deviations(self) -> dict[str, object]:
        """Knobs away from MeanFlow's published settings (Geng et al. 2025: ImageNet p = 1, 25 % of rows with d > 0,
        logit-normal(-0.4, 1) times, the target from the live weights, t fed as is; their CIFAR-10 setting p = 0.75,
        75 % of rows, as bench.toml's cifar10 profile cites)."""
        out: dict[str, object] = {}
        if self.adaptive_p not in PUBLISHED_ADAPTIVE_P:
            out["adaptive_p"] = self.adaptive_p
        if self.mean_fraction not in PUBLISHED_MEAN_FRACTION:
            out["mean_fraction"] = self.mean_fraction
        if self.time_sampling != "logit_normal":
            out["time_sampling"] = self.time_sampling
        elif (self.logit_mean, self.logit_std) != PUBLISHED_LOGIT_NORMAL:
            out.update(logit_mean=self.logit_mean, logit_std=self.logit_std)
        if self.time_input_scale != 1.0:  # ours: the backbones' 1000 t sinusoids blow up the JVP (module docstring)
            out["time_input_scale"] = self.time_input_scale
        if self.jvp_ema:
            out["jvp_ema"] = True
        return out


PUBLISHED_LOGIT_NORMAL = (0.4, 1.0)  # the paper's lognorm(-0.4, 1) mirrored into this harness's time direction
PUBLISHED_ADAPTIVE_P = (1.0, 0.75)  # MeanFlow's ImageNet p and its CIFAR-10 norm_p
PUBLISHED_MEAN_FRACTION = (0.25, 0.75)  # MeanFlow's ImageNet ratio of rows with r != t and its CIFAR-10 ratio


def average_velocity_jvp(net, x, t, d, y, v, time_input_scale: float = 1.0):
    """(u, D u) for u(x, t, d) = net(x, s t, d, y), s = time_input_scale, with D u the JVP along the
    tangent (v, 1, -1) in (x, t, d); no graph is kept. `net` is an eager module (a compiled one has no JVP).

    x, v: (B, *shape); t, d: (B,). Attention runs on the math kernel (the fused CPU/flash kernels
    have no forward-mode derivative)."""
    s = time_input_scale
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return jvp(lambda x_, t_, d_: net(x_, s * t_, d_, y), (x, t, d), (v, torch.ones_like(t), -torch.ones_like(d)))



def legacy_d_scale(options: dict) -> float:
    """model.d_scale of a config stored before the key existed: MeanFlow fed the network s * d into the
    1000 embedding, so d was embedded at 1000 s."""
    return 1000.0 * float(options.get("time_input_scale", 1.0))

class MeanFlow(Method):
    """Average-velocity model trained through the MeanFlow identity (JVP); Euler at d = 1/n."""

    name = "meanflow"
    family = "shortcut and MeanFlow"
    sampling_time_options = frozenset({"cfg_scale"})  # targets are unguided; CFG is applied when sampling
    Options = MeanFlowOptions

    @classmethod
    def trains_on_M(cls, options) -> bool:
        return False  # times are drawn continuously; M only bands the loss diagnostics (loss_ladder) and the evaluated n

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
        ts, ds = self.opts.time_input_scale * t, d  # what the network is fed
        target = v.clone()
        info: dict = {}
        with torch.no_grad():
            u_mean = None
            if nb:
                u_mean, df = average_velocity_jvp(self.eager(net), x_t[:nb], t[:nb], d[:nb], y[:nb], v[:nb], self.opts.time_input_scale)
                target[:nb] = v[:nb] + bshape(d[:nb], v) * df
            if self.opts.adaptive_p > 0:
                # the trainer's plain MSE against u + w (target - u), u = sg(f) = its own prediction, has the
                # gradient of the weighted loss w ||f - target||^2: the paper's adaptive weighting, exactly
                if net is model and u_mean is not None:
                    u = torch.cat([u_mean, model(x_t[nb:], ts[nb:], ds[nb:], y[nb:])])
                else:
                    u = model(x_t, ts, ds, y)
                err = target - u
                sq = err.pow(2).flatten(1).sum(1)
                w = 1.0 / (sq + self.opts.adaptive_c) ** self.opts.adaptive_p
                info["mse_unweighted"] = sq.mean() / err[0].numel()
                target = u + bshape(w, u) * err
        groups = torch.zeros(B, dtype=torch.bool, device=dev)
        groups[:nb] = True
        info = {"row_group/mean": groups, "row_group/flow": ~groups, **info}
        # the mean rows by interval length, as the sampler's step sizes: level j holds 2^-(j+1) < d <= 2^-j
        # (the last level everything shorter)
        L = self.num_levels
        if nb and L:
            j = torch.floor(-torch.log2(d[:nb].clamp(min=1e-12))).clamp(0, L - 1).long()
            rows_j = torch.cat([j, torch.full((B - nb,), -1, dtype=j.dtype, device=dev)])
            for level in range(L):
                info[f"row_group/mean_level_{level}"] = rows_j == level
        return Targets(x_t=x_t, t=ts, d=ds, y=y, target=target, info=info, time=t)

    @property
    def num_levels(self) -> int:
        return max(int(self.opts.M).bit_length() - 1, 0)

    def loss_ladder(self) -> LossLadder | None:
        """mean_level_j: the rows with interval 2^-(j+1) < d <= 2^-j (the n = 2^j sampler's step), over
        the d = 0 (instantaneous velocity) rows."""
        L = self.num_levels
        if L == 0:
            return None
        labels = tuple(f"d in ({Fraction(1, 2**(j + 1))}, {Fraction(1, 2**j)}]" for j in range(L - 1))
        labels += (f"d <= {Fraction(1, 2**(L - 1))}", "flow (d = 0)")
        return LossLadder(tuple(f"mean_level_{j}" for j in range(L)) + ("flow",), labels, "flow",
                          "MeanFlow loss per interval length d and the d = 0 loss")

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        # the JVP costs about a primal plus a tangent pass over the d > 0 rows; the adaptive weight needs
        # the prediction on the other rows too (on every row when the JVP uses the EMA)
        nb = self.num_mean_rows(batch_size)
        nograd = 2 * nb
        if self.opts.adaptive_p > 0:
            nograd += batch_size if self.opts.jvp_ema else batch_size - nb
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": nograd}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n, s = num_sampling_steps, self.opts.time_input_scale
        v = velocity(model, x, full(s * t, x), full(1.0 / n, x), y, self.opts.cfg_scale, self.null_class)
        return x + v / n
