"""The report's figures: FID against steps, compute and a swept value; the paired distance against n; the level losses."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.files.plots import axis, pyplot, save
from bench.report.paired import sort_key as _sort_key, t_interval as mean_ci
from bench.report.frames import group_title, hue_column, sweep_axes
from bench.report.tables import floors, swept_table, _level_hue, levels_final_table


# -- plots ---------------------------------------------------------------------------------
def _bands(stats: pd.DataFrame) -> tuple[float, float]:
    """The y range that shows every mean; bands below it are clipped to the axis (a lower
    t-bound can be <= 0, off a log axis)."""
    means = stats["mean"][stats["mean"] > 0]
    lo = float(means.min()) if len(means) else 1e-3
    hi = float(stats[["mean", "hi"]].max(axis=1).max())
    return lo / 1.5, hi * 1.3


def _interval(values: pd.Series) -> pd.Series:
    m, h, n = mean_ci(values)
    return pd.Series({"mean": m, "lo": m - h if n > 1 else m, "hi": m + h if n > 1 else m, "n": n})


def _lines(ax, stats: pd.DataFrame, hue: str, x: str, order: list, floor: float) -> None:
    """One line per hue value with markers, the t-interval as a band clipped at `floor`."""
    import seaborn as sns

    colours = sns.color_palette("colorblind" if len(order) <= 10 else "husl", len(order))
    markers = "osD^vP*Xph<>"
    for i, key in enumerate(order):
        s = stats[stats[hue] == key].sort_values(x)
        ax.plot(s[x], s["mean"], marker=markers[i % len(markers)], color=colours[i], label=str(key), lw=1.6, ms=5)
        if (s["n"] > 1).any():
            ax.fill_between(s[x], s["lo"].clip(lower=floor), s["hi"], color=colours[i], alpha=0.18, lw=0)


def _legend(ax, title: str) -> None:
    """Outside the axes, right of the data: it never covers a curve."""
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8, title_fontsize=8)


MAX_LINES = 6  # lines per panel: more and a reader cannot tell them apart


def family(method: str) -> str:
    """A method's panel (Method.family); "other" for a method this code no longer knows."""
    try:
        from methods import get_method

        return get_method(str(method)).family
    except Exception:
        return "other"


FAMILY_ORDER = ("flow and diffusion", "shortcut and MeanFlow", "consistency", "distillation", "other")


def panels(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(title, groups) per panel: one per method family, split (a method's groups kept together where
    they fit) so no panel has more than MAX_LINES lines."""
    fid = df[df["metric"] == "fid"]
    method_of = fid.drop_duplicates("group").set_index("group")["method"].to_dict()
    by_family: dict[str, list[str]] = {}
    for g in sorted(method_of, key=_sort_key):
        by_family.setdefault(family(method_of[g]), []).append(g)
    out = []
    for fam in sorted(by_family, key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER)):
        chunks: list[list[str]] = [[]]
        for m in dict.fromkeys(method_of[g] for g in by_family[fam]):
            block = [g for g in by_family[fam] if method_of[g] == m]
            while block:
                if len(chunks[-1]) + min(len(block), MAX_LINES) > MAX_LINES:
                    chunks.append([])
                take = block[:MAX_LINES - len(chunks[-1])]
                chunks[-1] += take
                block = block[len(take):]
        chunks = [c for c in chunks if c]
        for c in chunks:
            title = fam if len(chunks) == 1 else f"{fam}: {', '.join(dict.fromkeys(method_of[g] for g in c))}"
            out.append((title, c))
    return out


def describe(df: pd.DataFrame) -> str:
    """'digits (profile digits), 2000 samples per point': what a figure's title names."""
    fid = df[df["metric"] == "fid"]
    data = ", ".join(sorted(map(str, fid["dataset"].unique()))) if "dataset" in fid else "?"
    profile = ", ".join(sorted(map(str, fid["profile"].unique()))) if "profile" in fid else "?"
    samples = sorted({int(v) for v in fid["num_samples"].unique()}) if "num_samples" in fid else []
    n = " or ".join(map(str, samples)) if samples else "?"
    return f"{data} (profile {profile}), {n} samples per point"


def plot_fid_vs_steps(df: pd.DataFrame, path: Path, title: str = "") -> list[Path]:
    """FID against sampling steps as small multiples, one panel per method family (panels), at most
    MAX_LINES lines each: the mean over a group's runs with its 95 % t-interval as error bars, the
    floor band, and flow matching drawn grey and dashed in the other panels as a common reference."""
    fid = df[df["metric"] == "fid"]
    return _by_family(df, "fid", path, f"FID ({', '.join(sorted(fid['feature_space'].unique()))} features)",
                      "FID against sampling steps", floor=True)


def _by_family(df: pd.DataFrame, metric: str, path: Path, ylabel: str, what: str, floor: bool = False) -> list[Path]:
    """`metric` (> 0) against sampling steps, one panel per method family: plot_fid_vs_steps's layout."""
    import seaborn as sns

    plt = pyplot()
    fid = df[(df["metric"] == metric) & (df["value"] > 0)]
    stats = fid.groupby(["group", "steps"])["value"].apply(_interval).unstack().reset_index()
    means = stats["mean"][stats["mean"] > 0]
    low, top = float(means.min()) / 1.4, float(means.max()) * 1.4
    layout = [(name, [g for g in groups if g in set(stats["group"])]) for name, groups in panels(df)]
    layout = [(name, groups) for name, groups in layout if groups]
    cols = min(len(layout), 3)
    rows = -(-len(layout) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.6 * rows), dpi=130, sharey=True, squeeze=False)
    steps = sorted(fid["steps"].unique())
    reference = "flow_matching" if "flow_matching" in set(stats["group"]) else None
    colours = sns.color_palette("colorblind", MAX_LINES)
    markers = "osD^vP"
    fl = floors(df[df["metric"] == "fid"])
    for i, (name, groups) in enumerate(layout):
        ax = axes[i // cols][i % cols]
        if reference and reference not in groups:
            s = stats[stats["group"] == reference].sort_values("steps")
            ax.plot(s["steps"], s["mean"], color="0.55", ls="--", lw=1.1, label=f"{reference} (reference)")
        for j, g in enumerate(groups):
            s = stats[stats["group"] == g].sort_values("steps")
            c = colours[j % len(colours)]
            x = s["steps"] * 2 ** (0.06 * (j - (len(groups) - 1) / 2))  # dodged a little, so error bars do not hide each other
            err = None
            if (s["n"] > 1).any():
                lo, hi = s["lo"].clip(lower=low), s["hi"].clip(upper=top)
                err = [(s["mean"] - lo).clip(lower=0).to_numpy(), (hi - s["mean"]).clip(lower=0).to_numpy()]
            ax.errorbar(x, s["mean"], yerr=err, marker=markers[j % len(markers)], color=c, lw=1.5, ms=4, label=g,
                        elinewidth=0.9, capsize=2, alpha=0.95)
        if floor:
            draw_floor(ax, fl, low, top, label=i == 0)  # named once: the same band in every panel
        axis(ax, "x", steps[0], steps[-1], log2_ticks=steps)
        axis(ax, "y", low, top)
        ax.set_ylim(low, top)
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("sampling steps", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=7.5, frameon=False, handlelength=2.2)
    for k in range(len(layout), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    seeds = fid.groupby("group")["run_id"].nunique()
    runs = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    fig.suptitle(f"{what}: {describe(df)}; lines: mean over {runs} run{'s' if runs != '1' else ''} (seeds)"
                 + (", bars: 95 % t-interval" if seeds.max() > 1 else "")
                 + (", grey band: floor ± 1 sd" if floor and len(fl) == 1 else ""), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_fid_vs_compute(df: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """FID against training compute (teacher included), one panel per n in (1, 4, M): each group's
    mean over its runs, the 95 % t-interval as an error bar."""
    import seaborn as sns

    plt = pyplot()
    fid = df[df["metric"] == "fid"]
    M = int(fid["steps"].max())
    cols = [s for s in (1, 4, M) if s in set(fid["steps"])]
    fid = fid[fid["steps"].isin(cols)]
    stats = fid.groupby(["group", "steps"])["value"].apply(_interval).unstack().reset_index()
    stats = stats.merge(fid.groupby("group", as_index=False)["train_compute"].mean(), on="group")
    order = sorted(stats["group"].unique(), key=_sort_key)
    floor, top = _bands(stats)
    colours = sns.color_palette("colorblind" if len(order) <= 10 else "husl", len(order))
    markers = "osD^vP*Xph<>"
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols) + 2.2, 3.8), dpi=120, sharey=True, squeeze=False)
    xs = stats["train_compute"][stats["train_compute"] > 0]
    xlo, xhi = (float(xs.min()) / 1.3, float(xs.max()) * 1.3) if len(xs) else (1.0, 10.0)
    for ax, n in zip(axes[0], cols):
        for i, key in enumerate(order):
            s = stats[(stats["group"] == key) & (stats["steps"] == n)]
            if s.empty:
                continue
            err = [[max(float(s["mean"].iloc[0] - max(s["lo"].iloc[0], floor)), 0)], [float(s["hi"].iloc[0] - s["mean"].iloc[0])]]
            ax.errorbar(s["train_compute"], s["mean"], yerr=err if s["n"].iloc[0] > 1 else None, fmt=markers[i % len(markers)],
                        color=colours[i], label=str(key), ms=6, capsize=3)
        axis(ax, "x", xlo, xhi)
        ax.set_xlim(xlo, xhi)
        axis(ax, "y", floor, top)
        ax.set_ylim(floor, top)
        ax.set_title(f"{n} sampling step{'s' if n > 1 else ''}", fontsize=9)
        ax.set_xlabel("training compute (network rows)")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("FID")
    _legend(axes[0][-1], group_title(df))
    fig.suptitle(f"{title}: FID against training compute (rows through the network, a backward = 2 forwards, "
                 f"teacher included)", fontsize=9)
    return save(fig, path)


def draw_floor(ax, fl: pd.DataFrame, lo: float, hi: float, label: bool = True) -> None:
    """The fresh-data floor as a dotted line and, where the runs logged it, the band floor ± one
    perfect-sampler run's sd as the runs see it: against their one reference set (fid_floor_fresh_sd_fixed_ref),
    else with the reference drawn anew too (fid_floor_fresh_sd, the wider); clipped to the axis (lo, hi);
    one reference set only."""
    if len(fl) != 1:
        return
    f = float(fl["fresh"].iloc[0])
    fixed = float(fl["fresh_sd_fixed_ref"].iloc[0]) if "fresh_sd_fixed_ref" in fl else math.nan
    sd = fixed if not math.isnan(fixed) else (float(fl["fresh_sd"].iloc[0]) if "fresh_sd" in fl else math.nan)
    what = "this reference set" if not math.isnan(fixed) else "the reference redrawn"
    if not math.isnan(sd) and f - sd < hi and f + sd > lo:
        ax.axhspan(max(f - sd, lo), min(f + sd, hi), color="0.5", alpha=0.15, lw=0,
                   label=f"floor ± sd of one perfect-sampler run ({what})" if label else None)
    if lo < f < hi:
        ax.axhline(f, color="0.35", ls=":", lw=1.2, label="floor: new data" if label else None)


OUTCOME_STYLE = {  # how the sweep figure draws a trial that did not finish: marker, filled, colour (colorblind palette index)
    "stopped": ("o", False, 2),
    "failed": ("x", True, 3),
}


def _format_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def trial_note(r) -> str:
    """'stopped @ step 200/1000' or 'failed @ step 300 (nonfinite)': what ended a trial and when."""
    step = "?" if pd.isna(r.stopped_at_step) else f"{int(r.stopped_at_step)}"
    of = "" if pd.isna(r.train_steps) else f"/{int(r.train_steps)}"
    reason = f" ({r.failure_reason})" if r.outcome == "failed" and isinstance(r.failure_reason, str) and r.failure_reason else ""
    return f"{r.outcome} @ step {step}{of}{reason}"


def plot_fid_vs_swept(df: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """FID against the swept value, one panel per n in 1, 4 and M (each run's own largest n): finished runs'
    seeds as dots, their mean and 95 % t-interval as a line and band; each stopped trial a hollow circle and
    each failed one a cross (x) at its last FID during training (on the top edge where it has none), annotated with
    the step it ended at (of its training steps) and a failure's reason. The x axis: log2 for numbers spanning
    4x or more, linear for other numbers, the values in order for anything else."""
    import matplotlib.lines as mlines
    import seaborn as sns

    plt = pyplot()
    key, series = sweep_axes(df)
    keys = [key] + ([series] if series else [])
    table = swept_table(df)
    raw, trials = table.attrs["raw"], table.attrs["trials"]
    stats = raw.groupby(["at", *keys])["value"].apply(_interval).unstack().reset_index() if len(raw) else \
        pd.DataFrame(columns=["at", *keys, "mean", "lo", "hi", "n"])
    values = sorted(set(raw[key]) | set(trials[key]), key=_sort_key)
    numeric = all(isinstance(v, float) for v in values)
    position = {v: (v if numeric else i) for i, v in enumerate(values)}  # anything else: categories in order
    rank = {v: i for i, v in enumerate(values)}
    shown = [*stats["mean"], *trials["mean"]]
    positive = [float(v) for v in shown if v > 0]
    floor = min(positive) / 1.5 if positive else 1e-3
    headroom = 1.3 if (trials["mean"] > 0).all() else 1.8  # room under the top edge for the notes of trials without a FID
    top = max([*positive, *stats["hi"]]) * headroom if positive else 1.0
    order = [a for a in ("n = 1", "n = 4", "n = M") if a in set(raw["at"]) | set(trials["at"])]
    lines = sorted(set(raw[series]) | set(trials[series]), key=_sort_key) if series else [None]
    palette = sns.color_palette("colorblind", max(4, len(lines)))
    colours = palette if series else sns.color_palette("colorblind", 4)
    line_colour = {v: palette[i] for i, v in enumerate(lines)} if series else {None: colours[0]}
    fig, axes = plt.subplots(1, len(order), figsize=(3.6 * len(order) + 2.6, 4.0), dpi=120, sharey=True, squeeze=False)
    for ax, at in zip(axes[0], order):
        for lv in lines:
            c0 = line_colour[lv]
            pts = raw[(raw["at"] == at) & ((raw[series] == lv) if series else True)]
            ax.scatter(pts[key].map(position), pts["value"], s=12, color=c0, alpha=0.45, lw=0, zorder=2)
            st = stats[(stats["at"] == at) & ((stats[series] == lv) if series else True)]
            st = st.assign(x=lambda t: t[key].map(position)).sort_values("x")
            ax.plot(st["x"], st["mean"], marker="o", color=c0, lw=1.6, ms=5, zorder=3)
            if (st["n"] > 1).any():
                ax.fill_between(st["x"], st["lo"].clip(lower=floor), st["hi"], color=c0, alpha=0.18, lw=0)
        crowd: dict = {}  # trials already annotated at one x: the next note goes below
        here = trials[trials["at"] == at]
        # trials without a FID here that ended alike (value, line, outcome, step) share one mark on the top edge
        alike = [*keys, "outcome", "stopped_at_step"]
        none = here[~(here["mean"] > 0)].copy()
        counts = none.groupby(alike, dropna=False)["run_id"].transform("size") if len(none) else none["run_id"]
        none = none.assign(times=counts).drop_duplicates(alike)
        here = pd.concat([here[here["mean"] > 0].assign(times=1), none]) if len(none) else here.assign(times=1)
        for r in here[[*here.columns.drop("times"), "times"]].itertuples():
            marker, filled, c = OUTCOME_STYLE.get(r.outcome, ("s", True, 2))
            value = r[1]  # the swept value: the first column (method.k is no attribute name)
            colour = line_colour[r[2]] if series else colours[c]  # two keys: the line's colour, the outcome's marker
            x, y = position[value], r.mean
            y = y if y > 0 else top  # no FID during training (or none > 0): on the top edge
            paint = {"color": colour} if filled else {"facecolors": "none", "edgecolors": colour}  # x: a line marker
            ax.scatter([x], [y], marker=marker, s=52, lw=1.8, zorder=4, clip_on=False, **paint)
            k = crowd[x] = crowd.get(x, -1) + 1
            right = rank[value] > (len(values) - 1) / 2  # notes point into the panel
            dy = 4 - 9 * k if y < top else -11 - 9 * k  # below a mark on the top edge, off the panel's title
            many = f"{r.times} " if r.times > 1 else ""
            ax.annotate(many + trial_note(r) + ("" if r.mean > 0 else ", no FID yet"), (x, y), xytext=(-6 if right else 6, dy),
                        textcoords="offset points", ha="right" if right else "left", fontsize=6.5, color=colour,
                        annotation_clip=False)
        if numeric and values[0] > 0 and values[-1] / values[0] >= 4:
            axis(ax, "x", values[0], values[-1], log2_ticks=values)
        elif not numeric:
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([str(v) for v in values], rotation=30 if len(values) > 4 else 0, fontsize=8)
            ax.set_xlim(-0.5, len(values) - 0.5)
        axis(ax, "y", floor, top)
        ax.set_ylim(floor, top)
        ax.set_title(at + (" (each run's largest n)" if at == "n = M" else ""), fontsize=9)
        ax.set_xlabel(key)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(f"FID ({', '.join(sorted(map(str, df['feature_space'].unique())))} features)")
    seeds = int(stats["n"].max()) if len(stats) else 0
    grey = (0.35, 0.35, 0.35)
    first = grey if series else colours[0]
    handles = [mlines.Line2D([], [], color=first, marker="o", lw=1.6, ms=5,
                             label="finished: mean over seeds" + (", 95 % t-band" if seeds > 1 else "")),
               mlines.Line2D([], [], color=first, marker="o", lw=0, ms=4, alpha=0.45, label="finished: one seed")]
    handles += [mlines.Line2D([], [], color=line_colour[v], lw=2.5, label=f"{series} = {_format_value(v)}") for v in lines if series]
    for what, text in (("stopped", "stopped by the scheduler:\nlast FID during training"),
                       ("failed", "failed (step, reason):\nlast FID during training")):
        if (trials["outcome"] == what).any():
            marker, filled, c = OUTCOME_STYLE[what]
            mc = grey if series else colours[c]
            handles.append(mlines.Line2D([], [], lw=0, marker=marker, ms=7, mew=1.8, markeredgecolor=mc,
                                         markerfacecolor=mc if filled else "none", label=text))
    if (~(trials["mean"] > 0)).any():
        handles.append(mlines.Line2D([], [], lw=0, label="on the top edge: no FID during training"))
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7.5)
    ended = trials.drop_duplicates("run_id")["outcome"].value_counts()
    fig.suptitle(f"{title}: FID against {key}" + (f", one line per {series}" if series else "") + (f", mean and 95 % t-interval over up to {seeds} seeds" if seeds > 1 else "")
                 + "".join(f"; {ended[o]} {o}" for o in ("stopped", "failed") if o in ended), fontsize=9)
    fig.tight_layout()
    return save(fig, path)


# -- the paired distance to the M-step samples (bench.evaluation.evaluate.paired_distances) -----------------
def plot_paired_vs_steps(df: pd.DataFrame, path: Path, title: str = "") -> list[Path]:
    """paired_to_M against n < M (0 at M by construction), one panel per method family as
    plot_fid_vs_steps: the mean over a group's runs with its 95 % t-interval; paired_to_M_features is in
    metrics.csv and paired_intervals.csv."""
    return _by_family(df, "paired_to_M", path, "paired_to_M: mean squared distance per dimension (data space)",
                      "Each n's samples against the same model's M-step samples from the same noise and labels")


def plot_levels(df: pd.DataFrame, levels: pd.DataFrame, ladder: dict, path: Path, title: str) -> list[Path]:
    """Left: one panel per ladder group, its loss over training, one line per hue value (mean over
    runs, 95 % t-band); right: the final losses per group side by side, one bar per hue value."""
    import numpy as np
    import seaborn as sns

    plt = pyplot()
    lv = _level_hue(df, levels)
    hue = lv.attrs["hue"]
    hues = sorted(lv["hue"].unique(), key=_sort_key)
    groups = ladder["groups"]
    colours = sns.color_palette("colorblind" if len(hues) <= 10 else "husl", len(hues))
    cols = min(len(groups), 4)
    rows_ = -(-len(groups) // cols)
    fig = plt.figure(figsize=(3.3 * cols + 5.5, 2.6 * rows_ + 0.8), dpi=120)
    gs = fig.add_gridspec(rows_, cols + 2)
    for i, g in enumerate(groups):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        for c, h in zip(colours, hues):
            sub = lv[(lv["level"] == g) & (lv["hue"] == h)]
            if sub.empty:
                continue
            st = sub.groupby("step")["value"].apply(_interval).unstack().reset_index()
            ax.plot(st["step"], st["mean"], color=c, lw=1.2, label=str(h))
            if (st["n"] > 1).any():
                ax.fill_between(st["step"], st["lo"].clip(lower=st["mean"].min() / 10), st["hi"], color=c, alpha=0.15, lw=0)
        pos = lv.loc[(lv["level"] == g) & (lv["value"] > 0), "value"]
        if len(pos):
            axis(ax, "y", float(pos.min()), float(pos.max()))
        ax.set_title(ladder["labels"][i], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if i // cols == rows_ - 1:
            ax.set_xlabel("training step", fontsize=8)
    final = levels_final_table(df, levels, ladder)
    ax = fig.add_subplot(gs[:, cols:])
    width = 0.8 / max(len(hues), 1)
    x = np.arange(len(groups))
    for j, (c, h) in enumerate(zip(colours, hues)):
        sub = final[final[hue] == h].set_index("level").reindex(groups)
        err = sub["ci95"].where(sub["runs"] > 1)
        ax.bar(x + (j - (len(hues) - 1) / 2) * width, sub["mean"], width, yerr=err.fillna(0).to_numpy(), color=c,
               label=str(h), capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(ladder["labels"], rotation=45, ha="right", fontsize=7)
    ax.set_title("final loss per level (last log point)", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, hue)
    runs = int(lv.groupby("hue")["run_id"].nunique().max())
    fig.suptitle(f"{title}: training loss per level (train/loss_<group>), mean over up to {runs} run(s) per line"
                 + (", 95 % t-bands / bars" if runs > 1 else ""), fontsize=9)
    fig.tight_layout()
    return save(fig, path)
