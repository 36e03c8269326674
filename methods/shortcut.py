"""Shortcut models (Frans, Hafner, Levine, Abbeel, ICLR 2025).

One network s(x_t, t, d) trained on two targets in every batch:
- (1 - k) B flow-matching rows: v = x1 - x0 at t on the 1/M grid, queried at the flow d;
- k B self-consistency rows: s(x_t, t, 2d) = sg((s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2),
  x'_{t+d} = x_t + d s(x_t, t, d), with 2d in {1, 1/2, ..., 2/M} (levels: drawn uniformly, or the
  authors' deterministic allocation) and t on the grid of multiples of 2d. Small steps of size
  1/M are flow queries; with CFG they use guided velocities at the training-time scale w
  ("bootstrap CFG").
`recipe = paper | authors` sets the defaults of the knobs where the paper's text and the authors'
code (kvfrans/shortcut-models) differ: flow-row d, k, which rows get label dropout, the level
allocation and the weights evaluation samples with. A knob set explicitly (profile or --set) wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from bench.errors import BenchError
from methods.base import (Batch, LossLadder, Method, MethodOptions, Targets, bshape, check_fraction, eval_mode, full, grid_times,
                          interpolate, velocity)


# the knobs each recipe sets; a knob left at RECIPE_DEFAULT (k: nan, which no config value parses to) takes the recipe's
RECIPES: dict[str, dict[str, object]] = {
    "paper": {"k": 0.25, "flow_d": "zero", "dropout_rows": "all", "levels": "uniform", "eval_weights": "ema"},
    "authors": {"k": 0.125, "flow_d": "min", "dropout_rows": "flow", "levels": "authors", "eval_weights": "live"},
}
RECIPE_DEFAULT = "recipe"
LEVELS = ("uniform", "authors", "authors_bias", "quarter_large")
LEVEL_ALIASES = {"large": "quarter_large"}  # the name quarter_large had before; stored configs carry it


@dataclass
class ShortcutOptions(MethodOptions):
    # "paper" or "authors" (RECIPES): the defaults of k (1/4 | 1/8), flow_d (zero | min), dropout_rows (all | flow),
    # levels (uniform | authors) and eval_weights (ema | live); a knob set in a profile or with --set wins
    recipe: str = "paper"
    k: float = math.nan  # bootstrap_fraction: share of each batch on self-consistency targets (unset: the recipe's, paper 1/4, authors 1/8)
    bootstrap_ema: bool = True  # build self-consistency targets with the EMA weights
    clip: float = 4.0  # clip the intermediate point and the target to [-clip, clip] (0 = off)
    # d fed to flow-matching queries: "zero" (paper), "min" (1/M, authors' code) or "apart" (-1: a code of
    # its own; with a smooth d embedding, 0 and 1/M sit next to the smallest level 2/M, whose guided
    # targets then leak into the unguided flow query when cfg_scale != 1: see results/README.md)
    flow_d: str = RECIPE_DEFAULT
    # rows whose labels train.label_dropout may drop: "all" (paper: the shared batch preparation) or
    # "flow" (authors' code: the self-consistency rows keep their labels)
    dropout_rows: str = RECIPE_DEFAULT
    bootstrap_weight: float = 1.0  # loss weight of the self-consistency rows against the flow rows (paper: 1)
    # levels of the self-consistency rows, d_big = 2^-j: "uniform" (paper: drawn per row, 1/log2(M) each);
    # "authors" (the authors' code as its commands run it, bootstrap_dt_bias = 0) and "authors_bias"
    # (bootstrap_dt_bias = 1): deterministic counts per batch (Shortcut.level_counts); "quarter_large":
    # drawn per row, 1/4 at d_big = 1, 1/4 at 1/2, the rest uniform over the others ("large" before)
    levels: str = RECIPE_DEFAULT
    eval_weights: str = RECIPE_DEFAULT  # weights evaluation samples with: "ema" (paper) or "live" (authors' use_ema = 0)

    def __post_init__(self):
        # resolve here, so the config, the logged params and checkpoints carry the values that ran
        for key, value in RECIPES.get(self.recipe, {}).items():
            if getattr(self, key) == RECIPE_DEFAULT or (key == "k" and math.isnan(self.k)):
                setattr(self, key, value)
        self.levels = LEVEL_ALIASES.get(self.levels, self.levels)

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise BenchError(f"method.recipe must be paper or authors, got {self.recipe!r}.")
        check_fraction("method.k", self.k)
        if self.flow_d not in ("zero", "min", "apart"):
            raise BenchError(f"method.flow_d must be zero, min or apart, got {self.flow_d!r}.")
        if self.dropout_rows not in ("all", "flow"):
            raise BenchError(f"method.dropout_rows must be all or flow, got {self.dropout_rows!r}.")
        if self.clip < 0:
            raise BenchError(f"method.clip must be >= 0, got {self.clip}.")
        if self.levels not in LEVELS:
            raise BenchError(f"method.levels must be one of {', '.join(LEVELS)}, got {self.levels!r}.")
        if self.levels == "authors_bias" and self.M == 2:
            raise BenchError("method.levels = authors_bias needs M >= 4 (it puts rows at d_big = 1/2, which M = 2 lacks).")
        if self.eval_weights not in ("ema", "live"):
            raise BenchError(f"method.eval_weights must be ema or live, got {self.eval_weights!r}.")
        if not self.bootstrap_weight > 0:
            raise BenchError(f"method.bootstrap_weight must be > 0, got {self.bootstrap_weight}.")

    def deviations(self) -> dict[str, object]:
        published = {**RECIPES[self.recipe], "bootstrap_weight": 1.0}
        return {key: getattr(self, key) for key, value in published.items() if getattr(self, key) != value}


def authors_level_counts(num_rows: int, num_levels: int, bias: bool) -> list[int]:
    """Rows per level j (d_big = 2^-j, j = 0 .. L-1) as the authors' targets_shortcut.py assigns them.

    bias False: num_rows // L at every level, the leftover at j = 0 (d_big = 1).
    bias True: (num_rows // 2) // L at each j >= 2, num_rows // 4 at j = 1, the rest at j = 0.
    """
    L, counts = num_levels, [0] * num_levels
    if not bias:
        counts = [num_rows // L] * L
    else:
        for j in range(2, L):
            counts[j] = (num_rows // 2) // L
        if L > 1:
            counts[1] = num_rows // 4
    counts[0] += num_rows - sum(counts)
    return counts


class Shortcut(Method):
    """Sampling with n steps: Euler at d = 1/n; at n = M the flow query with CFG at scale w."""

    name = "shortcut"
    family = "shortcut and MeanFlow"
    Options = ShortcutOptions
    sampling_time_options = frozenset()  # cfg_scale is baked into the bootstrap targets: a new scale is a new model

    @property
    def flow_d(self) -> float:
        return {"zero": 0.0, "min": 1.0 / self.opts.M, "apart": -1.0}[self.opts.flow_d]

    def num_bootstrap_rows(self, batch_size: int) -> int:
        return int(round(batch_size * self.opts.k)) if self.opts.M > 1 else 0

    @property
    def num_levels(self) -> int:
        return int(math.log2(self.opts.M))

    @property
    def eval_weights(self) -> str:
        return self.opts.eval_weights

    def level_probs(self) -> torch.Tensor:
        """P(level j) of the per-row draws (uniform, quarter_large), d_big = 2^-j, j = 0 (d_big = 1) ... log2(M) - 1."""
        L = self.num_levels
        if self.opts.levels == "uniform" or L <= 2:
            return torch.full((L,), 1.0 / L)
        return torch.tensor([0.25, 0.25] + [0.5 / (L - 2)] * (L - 2))

    def level_counts(self, num_rows: int) -> list[int] | None:
        """Rows per level of the deterministic allocations (authors, authors_bias); None for the random draws."""
        if self.opts.levels not in ("authors", "authors_bias"):
            return None
        return authors_level_counts(num_rows, self.num_levels, self.opts.levels == "authors_bias")

    def run_params(self, batch_size: int) -> dict[str, object]:
        """The level shares of the self-consistency rows at this (per-process) batch size: exact for the
        fixed allocations, expected for the per-row draws."""
        nb = self.num_bootstrap_rows(batch_size)
        if nb == 0:
            return {}
        counts = self.level_counts(nb)
        shares = [c / nb for c in counts] if counts is not None else self.level_probs().tolist()
        return {"method.level_shares": ",".join(f"{Fraction(2.0**-j).limit_denominator()}:{s:.4g}" for j, s in enumerate(shares))}

    def _clip(self, v):
        return v.clamp(-self.opts.clip, self.opts.clip) if self.opts.clip > 0 else v

    def _small_step(self, net, x, t, d, y):
        """s(x, t, d) for the two half steps; rows with d = 1/M are flow queries (guided with CFG)."""
        is_flow = d <= 1.0 / self.opts.M + 1e-12
        d_query = torch.where(is_flow, torch.full_like(d, self.flow_d), d)
        if self.opts.cfg_scale == 1.0 or self.num_classes == 0:
            return net(x, t, d_query, y)
        guided = velocity(net, x, t, d_query, y, self.opts.cfg_scale, self.null_class)
        plain = net(x, t, d_query, y)
        return torch.where(bshape(is_flow, x), guided, plain)

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x0, x1, y = batch.x0, batch.x1, batch.y
        B, dev, M = x1.shape[0], x1.device, self.opts.M
        nb = self.num_bootstrap_rows(B)

        # flow-matching rows
        t_f = grid_times(B - nb, M, generator, dev)
        d_f = torch.full_like(t_f, self.flow_d)
        x_f = interpolate(x0[nb:], x1[nb:], t_f)
        v_f = x1[nb:] - x0[nb:]

        # self-consistency rows: level j -> d_big = 2^-j in {1, ..., 2/M}, t on multiples of d_big
        counts = self.level_counts(nb) if nb else None
        if nb == 0:  # M = 1: flow matching rows only
            j = torch.zeros(0, dtype=torch.long, device=dev)
        elif counts is not None:  # the authors' fixed allocation (rows are in random order already)
            j = torch.repeat_interleave(torch.arange(len(counts), device=dev), torch.tensor(counts, device=dev))
        elif self.opts.levels == "uniform":  # randint, not level_probs(): the random stream of earlier runs stays
            j = torch.randint(0, int(math.log2(M)), (nb,), generator=generator, device=dev)
        else:
            j = torch.multinomial(self.level_probs().to(dev), nb, replacement=True, generator=generator)
        cells = 2**j
        d_big = 1.0 / cells.to(x1.dtype)
        t_b = grid_times(nb, cells, generator, dev)
        d_half = d_big / 2
        x_b = interpolate(x0[:nb], x1[:nb], t_b)
        y_b = (batch.labels_kept() if self.opts.dropout_rows == "flow" else y)[:nb]
        net = ema if self.opts.bootstrap_ema else model
        with torch.no_grad(), eval_mode(net):  # the authors' train=False (targets_shortcut.py lines 42, 46): no dropout in the targets
            s1 = self._small_step(net, x_b, t_b, d_half, y_b)
            x_mid = self._clip(x_b + bshape(d_half, x_b) * s1)
            s2 = self._small_step(net, x_mid, t_b + d_half, d_half, y_b)
            v_b = self._clip((s1 + s2) / 2)

        groups = torch.zeros(B, dtype=torch.bool, device=dev)
        groups[:nb] = True
        info = {"row_group/bootstrap": groups, "row_group/flow": ~groups}
        rows_j = torch.cat([j, torch.full((B - nb,), -1, dtype=j.dtype, device=dev)])
        for level in range(self.num_levels if nb else 0):  # self-consistency rows at d_big = 2^-level
            info[f"row_group/sc_level_{level}"] = rows_j == level
        return Targets(
            x_t=torch.cat([x_b, x_f]),
            t=torch.cat([t_b, t_f]),
            d=torch.cat([d_big, d_f]),
            y=torch.cat([y_b, y[nb:]]),
            target=torch.cat([v_b, v_f]),
            info=info,
            weight=None if self.opts.bootstrap_weight == 1.0 else torch.where(groups, self.opts.bootstrap_weight, 1.0).to(x1.dtype),
        )

    def loss_ladder(self) -> LossLadder | None:
        """sc_level_j: the self-consistency rows at d = 2^-j (j = 0: the 1-step level), over the flow rows
        (the smallest step 1/M), which every level bootstraps from."""
        L = self.num_levels
        if L == 0:
            return None
        labels = tuple(f"d = {Fraction(1, 2**j)}" for j in range(L)) + (f"flow (d = 1/{self.opts.M})",)
        return LossLadder(tuple(f"sc_level_{j}" for j in range(L)) + ("flow",), labels, "flow",
                          "self-consistency loss per level d and the flow loss")

    def passes_per_step(self, batch_size: int) -> dict[str, float]:
        nb = self.num_bootstrap_rows(batch_size)
        # two half steps; with bootstrap CFG each is a guided (2-row) call plus a conditional one
        rows_per_query = 3 if (self.opts.cfg_scale != 1.0 and self.num_classes > 0) else 1
        nograd = 2 * nb * rows_per_query
        return {"forward_rows": batch_size, "backward_rows": batch_size, "nograd_rows": nograd}

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        n = num_sampling_steps
        if n == self.opts.M:
            d, w = self.flow_d, self.opts.cfg_scale
        else:
            d, w = 1.0 / n, 1.0
        tt = full(t, x)
        v = velocity(model, x, tt, full(d, x), y, w, self.null_class)
        return x + v / n
