"""A method's loss ladder while it trains (Method.loss_ladder): the warning when a level's loss keeps
rising while the loss it bootstraps from falls, and the heat maps a run keeps as artifacts. Method-agnostic:
the ladder names row groups (`train/loss_<group>` metrics) and their labels; nothing here knows a method."""

from __future__ import annotations

import math
from pathlib import Path

from methods.base import LossLadder

# A level is watched once its loss has come down from its peak by DIVERGENCE_ARM (relative): at the start
# its bootstrap targets grow from the freshly initialised, near-zero EMA, and every level's loss rises
# while the flow loss falls, healthily. It is then named when its loss rose at each of the last `points`
# log points, by DIVERGENCE_MIN_RISE over them in all (a run of small rises is log-point noise).
DIVERGENCE_ARM = 0.1
DIVERGENCE_MIN_RISE = 0.2


class DivergenceWatch:
    """Feeds on the logged train/* means; names a level once when its loss rose at each of the last
    `points` log points, by DIVERGENCE_MIN_RISE in all, while the base group's loss is lower than at
    the start of that stretch (the bootstrap chain diverging: the level moves away from targets the
    flow still improves), after the level's loss has come down from its peak by DIVERGENCE_ARM."""

    def __init__(self, ladder: LossLadder, points: int, arm: float = DIVERGENCE_ARM, min_rise: float = DIVERGENCE_MIN_RISE):
        self.ladder, self.points, self.arm, self.min_rise = ladder, points, arm, min_rise
        self.history: dict[str, list[float]] = {g: [] for g in ladder.groups}
        self.peak: dict[str, float] = {}
        self.armed: set[str] = set()
        self.fired: dict[str, int] = {}  # group -> the step it was named at

    def label(self, group: str) -> str:
        return self.ladder.labels[self.ladder.groups.index(group)]

    def update(self, metrics: dict[str, float], step: int) -> list[str]:
        """The groups that start diverging at this log point (each named once per run)."""
        if self.points <= 0:
            return []
        base = metrics.get(f"train/loss_{self.ladder.base}")
        if base is None or not math.isfinite(base):
            return []
        self.history[self.ladder.base].append(base)
        new = []
        for g in self.ladder.groups:
            if g == self.ladder.base:
                continue
            v = metrics.get(f"train/loss_{g}")
            if v is None or not math.isfinite(v):
                continue  # a group without rows in the interval: its stretch pauses, it does not restart
            h = self.history[g]
            h.append(v)
            self.peak[g] = max(self.peak.get(g, v), v)
            if v < (1 - self.arm) * self.peak[g]:
                self.armed.add(g)
            if g in self.fired or g not in self.armed or len(h) <= self.points:
                continue
            window = h[-self.points - 1:]
            base_window = self.history[self.ladder.base][-self.points - 1:]
            rising = all(b > a for a, b in zip(window, window[1:])) and window[-1] >= (1 + self.min_rise) * window[0]
            if rising and base_window[-1] < base_window[0]:
                self.fired[g] = step
                new.append(g)
        return new

    def message(self, group: str, step: int) -> str:
        h = self.history[group][-self.points - 1:]
        b = self.history[self.ladder.base][-self.points - 1:]
        return (f"warning: level {self.label(group)} diverging at step {step}: its loss rose at each of the last "
                f"{self.points} log points ({h[0]:.4g} -> {h[-1]:.4g}) while the {self.label(self.ladder.base)} loss "
                f"fell ({b[0]:.4g} -> {b[-1]:.4g}); training continues (run tag train.diverging_levels)")

    def tag(self) -> str:
        """`d = 1 @ 900, d = 1/2 @ 1200`: the named levels and the step each was named at."""
        return ", ".join(f"{self.label(g)} @ {s}" for g, s in sorted(self.fired.items(), key=lambda kv: kv[1]))


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
