"""A method's loss ladder while it trains (Method.loss_ladder): the failure rule (a level whose loss, read
against its target's scale, diverges or stays above the profile's ceiling), and the heat maps a run keeps as artifacts. Method-agnostic:
the ladder names row groups (`train/loss_<group>` metrics) and their labels; nothing here knows a method."""

from __future__ import annotations

import math
from pathlib import Path

from methods.base import LossLadder

# The failure rule reads each level's loss against its target's second moment (train/target2_<group>): the
# share of the target's energy the level leaves unexplained, r. Raw level losses rise in every healthy run
# while the targets grow from the freshly initialised EMA (the warning this rule replaces fired on 4 of 4
# digits runs for that reason); r does not need that excuse, but it is read only once the level's target
# scale has settled: its mean over each of the last three windows of `points` log points within
# FAILURE_SETTLE (relative) of the window before (one stable pair is not enough: on smoke the targets sit
# near zero for a while before they grow tenfold). Then a level fails when, over the last `points` log points,
#   - r rose to `growth` x its lowest value since the level was armed (a divergence: any data), or
#   - the top level's (d = 1: the one a 1-step sample uses) r stayed above `ceiling` (a level that does not
#     fit its target; the scale of r is a property of the data and the model, so a profile sets it from
#     its own healthy and failing runs; 0 = no ceiling).
FAILURE_SETTLE = 0.1
FAILURE_GROWTH = 4.0


class LevelWindows:
    """Each level's logged loss and target second moment, one entry per train/* log point (a level without
    rows in an interval pauses), and r over the last `points` of them: summed loss / summed target second
    moment. `mean_ratio()` is the early signal bench logs as train/level_ratio (the mean of r over the levels
    that have points): on digits, at 10 % of training, it ranked 15 shortcut runs over k x M as their final
    1-step FID did (Spearman +0.82, results/sweep-signals/signal_ranking.md), where the raw losses do not
    (k changes how many rows each level has; r is per level and per unit of target)."""

    def __init__(self, ladder: LossLadder, points: int = 5):
        self.ladder, self.points = ladder, points
        self.levels = [g for g in ladder.groups if g != ladder.base]
        self.loss: dict[str, list[float]] = {g: [] for g in self.levels}
        self.target2: dict[str, list[float]] = {g: [] for g in self.levels}

    def label(self, group: str) -> str:
        return self.ladder.labels[self.ladder.groups.index(group)]

    def add(self, metrics: dict[str, float]) -> list[str]:
        """Take one log point's train/loss_<group> and train/target2_<group>; the levels that had both."""
        got = []
        for g in self.levels:
            lo, t2 = metrics.get(f"train/loss_{g}"), metrics.get(f"train/target2_{g}")
            if lo is None or t2 is None or not (math.isfinite(lo) and math.isfinite(t2)):
                continue
            self.loss[g].append(lo)
            self.target2[g].append(t2)
            got.append(g)
        return got

    def ratio(self, group: str) -> float:
        """r over the last `points` log points: summed loss / summed target second moment."""
        lo, t2 = self.loss[group][-self.points:], self.target2[group][-self.points:]
        return sum(lo) / sum(t2) if sum(t2) > 0 else math.nan

    def mean_ratio(self) -> float:
        rs = [r for r in (self.ratio(g) for g in self.levels if self.loss[g]) if math.isfinite(r)]
        return sum(rs) / len(rs) if rs else math.nan


class FailureRule(LevelWindows):
    """Feeds on the logged train/* means (train/loss_<group> and train/target2_<group>); names the first
    level that fails (see above) and the step. `points`: log points per window (0: off)."""

    def __init__(self, ladder: LossLadder, points: int = 5, *, growth: float = FAILURE_GROWTH, ceiling: float = 0.0,
                 settle: float = FAILURE_SETTLE):
        super().__init__(ladder, points)
        self.growth, self.ceiling, self.settle = growth, ceiling, settle
        self.armed: dict[str, int] = {}  # group -> step it was armed at
        self.low: dict[str, float] = {}  # group -> the lowest windowed r since armed
        self.fired: tuple[str, int, str] | None = None  # (group, step, why)

    def update(self, metrics: dict[str, float], step: int) -> str | None:
        """The level that fails at this log point (once per run), else None."""
        if self.points <= 0 or self.fired is not None:
            return None
        P = self.points
        for g in self.add(metrics):  # a group without rows in the interval: its window pauses
            h = self.target2[g]
            if g not in self.armed:  # three windows in a row, each within `settle` of the one before
                if len(h) >= 3 * P:
                    w = [sum(h[-(i + 1) * P:len(h) - i * P]) for i in (2, 1, 0)]
                    if w[0] > 0 and all(abs(b / a - 1) <= self.settle for a, b in zip(w, w[1:])):
                        self.armed[g] = step
                continue
            r = self.ratio(g)
            if not math.isfinite(r):
                continue
            low = self.low.get(g)
            self.low[g] = r if low is None else min(low, r)
            if self.ceiling > 0 and g == self.levels[0] and r > self.ceiling:
                why = f"its loss / target second moment over the last {P} log points is {r:.3g}, above the ceiling {self.ceiling:g}"
            elif low is not None and r >= self.growth * self.low[g]:
                why = f"its loss / target second moment rose to {r:.3g}, {r / self.low[g]:.1f}x its lowest {self.low[g]:.3g} since step {self.armed[g]}"
            else:
                continue
            self.fired = (g, step, why)
            return g
        return None

    def message(self) -> str:
        g, step, why = self.fired
        return f"level {self.label(g)} failing at step {step}: {why}"

    def reason(self) -> str:
        return self.message() if self.fired else ""


def plot_level_maps(ladder: LossLadder, history: dict[str, list[tuple[int, float]]],
                    by_t: dict[str, tuple[list[float], list[int]]], path: Path, title: str, t_share: float) -> list[Path]:
    """Heat maps with one row per level of the ladder (top level first; colours on one log scale per
    map): the logged loss over training steps, and the training loss per bin of t over the last
    `t_share` of the steps (blank: no rows there). The base group's loss (the flow rows), of another
    size, is the line under each map."""
    import numpy as np
    from matplotlib.colors import LogNorm

    from bench.files.plots import pyplot, save

    plt = pyplot()
    levels = [g for g in ladder.groups if g != ladder.base]
    labels = [ladder.labels[ladder.groups.index(g)] for g in levels]
    base_label = ladder.labels[ladder.groups.index(ladder.base)]
    steps = sorted({s for g in ladder.groups for s, _ in history.get(g, [])})
    col = {s: i for i, s in enumerate(steps)}

    def over_steps(g: str) -> np.ndarray:
        row = np.full(len(steps), np.nan)
        for s, v in history.get(g, []):
            row[col[s]] = v
        return row

    bins = len(next(iter(by_t.values()))[0]) if by_t else 1

    def over_t(g: str) -> np.ndarray:
        if g not in by_t:
            return np.full(bins, np.nan)
        sums, counts = np.asarray(by_t[g][0], float), np.asarray(by_t[g][1], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / counts, np.nan)

    fig, axes = plt.subplots(2, 2, figsize=(12.5, 0.42 * len(levels) + 3.4), dpi=120, sharex="col",
                             gridspec_kw={"height_ratios": [max(len(levels), 1), 1.6], "width_ratios": [1.5, 1.0],
                                          "wspace": 0.4})
    first, last = (steps[0], steps[-1]) if steps else (0, 1)
    panels = (
        (0, np.array([over_steps(g) for g in levels]), over_steps(ladder.base), np.array(steps, float), (first, last),
         "training step", "over training (the logged means)"),
        (1, np.array([over_t(g) for g in levels]), over_t(ladder.base), (np.arange(bins) + 0.5) / bins, (0.0, 1.0),
         "t", f"per t at the end (rows of the last {t_share:.0%} of the steps, {bins} bins)"),
    )
    for c, data, base, xs, (x0, x1), xlabel, sub in panels:
        ax, bx = axes[0, c], axes[1, c]
        data = data.reshape(len(levels), -1)
        pos = data[np.isfinite(data) & (data > 0)]
        if pos.size:
            lo, hi = float(pos.min()), float(pos.max())
            im = ax.imshow(np.where(data > 0, data, np.nan), aspect="auto", interpolation="nearest", cmap="magma",
                           norm=LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 1.01), extent=(x0, x1, len(levels) - 0.5, -0.5))
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label="loss (log scale)")
        ax.set_yticks(range(len(levels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_title(sub, fontsize=9)
        ok = np.isfinite(base)
        bx.plot(xs[ok], base[ok], color="0.2", lw=1.2, marker="." if c == 1 else None)
        bx.set_ylabel(base_label, fontsize=7)
        bx.set_xlabel(xlabel)
        bx.set_xlim(x0, x1)
        bx.grid(True, alpha=0.3)
        bx.tick_params(labelsize=7)
        if pos.size:  # an invisible twin of the map's colour bar keeps the line under the map, step for step
            fig.colorbar(im, ax=bx, fraction=0.05, pad=0.02).ax.set_visible(False)
    fig.suptitle(f"{title}: {ladder.title}" if ladder.title else title, fontsize=9)
    return save(fig, path)


def log_level_maps(tracker, run_id: str, ladder: LossLadder, by_t: dict[str, tuple[list[float], list[int]]],
                   title: str, t_share: float) -> None:
    """plots/loss_levels.png / .svg into the run's artifacts, from the run's own train/loss_<group>
    history in the store (a resumed run's earlier points included)."""
    import tempfile

    history = {}
    for g in ladder.groups:
        history[g] = sorted((m.step, m.value) for m in tracker.runs.history(run_id, f"train/loss_{g}"))
    if not any(history.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_level_maps(ladder, history, by_t, Path(tmp) / "loss_levels.png", title, t_share):
            tracker.log_artifact(path, "plots")
