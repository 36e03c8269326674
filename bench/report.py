"""`bench report`: reads ONLY the tracking store and writes, per experiment, into
$BENCH_STORE/reports/<experiment>/ unless --out says where (the committed reference results:
`--out results/<experiment>`):

- fid_vs_steps.png/.svg: FID against sampling steps (log2 axis), one line per group of runs,
  the mean over the group's runs (seeds) with its 95 % Student-t interval as a band;
- table.md: FID at M, 4 and 1 steps per group, `mean ± half-width of the 95 % t-interval` and
  the number of runs;
- metrics.csv: one row per run, metric and step, with each run's group, commit, evaluation seed,
  reference set, teacher hash and FID floor;
- paired.md / paired.csv (two groups or more): per-seed differences between groups that share seeds
  and evaluation noise, with their 95 % t-intervals (bench.paired);
- several methods: fid_vs_compute.png/.svg (FID at 1, 4 and M steps against training compute);
  one method's sweep: fid_vs_swept.png/.svg and .csv (FID against the swept value);
- runs with paired_to_M: paired_vs_steps.png/.svg (against n per group) and paired_intervals.csv (its
  95 % interval's relative half-width against FID's at the same n);
- runs that share a loss ladder (the `loss_ladder` param): levels.png/.svg (each level's training loss
  over the steps per group or swept value, and the final losses side by side) and levels_final.csv.

A group is every run with the same method, dataset, profile and config values: only the seed
(and what is per run by nature: ids, teacher ids, file locations) may differ. Groups are labelled
by the config keys that differ between them, so unlike runs never share a row or a line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.plots import axis, pyplot, save
from bench.paired import sort_key as _sort_key, t_interval as mean_ci, write_paired  # paired needs no report: one way
from methods.base import step_cost

EVAL_METRICS = ("fid", "kid", "kid_std", "precision", "recall", "sw", "modes_hit", "mode_share", "nfe",
                "paired_to_M", "paired_to_M_features", "paired_to_2n")
SWEEP_TAG = "sweep.keys"  # comma-separated config keys a sweep varied; their values are params
# params that group runs: the resolved config (settable) and what the harness derived from it
GROUP_PREFIXES = ("data.", "model.", "train.", "eval.", "method.", "budget.", "classifier.")
# per run by nature, never a reason to split a group: the seed (and the evaluation seed derived
# from it), ids and hashes of a run's own teacher or checkpoint, and paths whose file is
# identified by a hash param
PER_RUN = {"seed", "eval.seed", "method.teacher", "eval.checkpoint", "eval.checkpoint_step", "eval.checkpoint_ema_sha256",
           "eval.inception_weights", "method.classifier_weights"}
FLOORS = ("fresh", "fresh_se", "fresh_sd", "copy")  # the runs' fid_floor_* metrics, columns of collect()'s frame
CI_NOTE = ("mean ± half-width of the 95 % Student-t interval over the runs (seeds) of a row "
           "(n - 1 degrees of freedom); a single run shows its value")


def open_store(uri: str | None = None):
    """An MlflowClient on an existing store; reporting never creates one."""
    from bench.tracking import client, is_local_sqlite, sqlite_path, tracking_uri

    uri = uri or tracking_uri()
    if is_local_sqlite(uri) and not sqlite_path(uri).is_file():
        raise BenchError(f"No tracking store at {uri}; run `bench run` first (or set BENCH_STORE / MLFLOW_TRACKING_URI).")
    return client(uri)


def collect(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """One row per (finished run, metric, sampling steps) of `experiment`, with the run's group."""
    c = open_store(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise BenchError(f"No experiment {experiment!r} in the tracking store {c.tracking_uri}.")
    rows = []
    for run in c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50_000):
        tags, params = run.data.tags, run.data.params
        if tags.get("bench.role") == "teacher":
            continue  # teachers trained inside a distillation run are reported by their student
        swept = [k for k in tags.get(SWEEP_TAG, "").split(",") if k]
        base = {
            "run_id": run.info.run_id,
            "method": tags.get("method", params.get("method", "?")),
            "dataset": tags.get("dataset", params.get("data.spec", "?")),
            "profile": tags.get("profile", params.get("profile", "?")),
            "seed": int(params.get("seed", tags.get("seed", 0))),
            "num_samples": int(params.get("eval.num_samples", 0)),
            "feature_space": params.get("eval.feature_space", "?"),
            "swept": ",".join(swept),
            "train_examples": float(params.get("budget.train_examples", "nan")),
            "teacher_examples": float(params.get("budget.teacher_examples", 0) or 0),
            "train_compute": training_compute(params),
            # what a perfect sampler scores here (bench.metrics.fid_floor); nan for runs before it was logged
            **{k: run.data.metrics.get(f"fid_floor_{k}", math.nan) for k in FLOORS},
            **run_identity(tags, params),
        }
        group = {k: v for k, v in params.items() if k.startswith(GROUP_PREFIXES) and k not in PER_RUN}
        base["config"] = json.dumps({"method": base["method"], "profile": base["profile"], "dataset": base["dataset"],
                                     **group}, sort_keys=True)
        for key in EVAL_METRICS:
            if key not in run.data.metrics:
                continue
            for m in c.get_metric_history(run.info.run_id, key):
                rows.append({**base, "steps": int(m.step), "metric": key, "value": float(m.value)})
    return label_groups(pd.DataFrame(rows))


def run_identity(tags: dict[str, str], params: dict[str, str]) -> dict[str, str]:
    """What metrics.csv records of a run beyond its group, for checking which code made a row and for
    pairing runs (bench.paired): the commit, the evaluation seed, the reference set's fingerprint and
    the teacher's weights' hash ("" for a method without a teacher)."""
    return {"git_commit": tags.get("git_commit", ""), "eval_seed": params.get("eval.seed", ""),
            "reference": params.get("eval.reference_fingerprint", ""), "teacher_sha256": params.get("teacher.ema_sha256", "")}


# metrics.csv's columns after the group's: the run's identity and its floor (bench.metrics.fid_floor)
RUN_COLUMNS = ("git_commit", "eval_seed", "reference", "teacher_sha256", *(f"fid_floor_{k}" for k in FLOORS))


def _settable() -> set[str]:
    """Config keys a user sets (bench.toml / --set); the other params are derived from them."""
    from dataclasses import fields

    from bench import config

    sections = {"data": config.DataConfig, "model": config.ModelConfig, "train": config.TrainConfig,
                "eval": config.EvalConfig}
    return {"method", "profile"} | {f"{name}.{f.name}" for name, cls in sections.items() for f in fields(cls)}


def group_keys(configs: list[dict[str, str]]) -> list[str]:
    """The keys that tell the groups apart: method, then every settable key whose value differs
    between groups that have it (method.* keys: every method's own options are settable; a key only
    some methods have counts where it differs between runs of one method), then derived keys (data
    fingerprints, budgets, ...) only where those leave two groups alike."""
    settable = _settable()
    keys = sorted({k for c in configs for k in c}, key=lambda k: (k != "method", k != "profile", k))

    def differs(k: str) -> bool:
        if k.startswith("method.") and not all(k in c for c in configs):
            # a key only some methods have: it labels a row only where it splits one method's runs
            # (meanflow's time_sampling = uniform against flow matching's grid says nothing the method does not)
            by_method: dict[str, set] = {}
            for c in configs:
                if k in c:
                    by_method.setdefault(c.get("method"), set()).add(c[k])
            return any(len(v) > 1 for v in by_method.values())
        return len({c[k] for c in configs if k in c}) > 1

    def classes(ks: list[str]) -> int:
        return len({tuple(c.get(j) for j in ks) for c in configs})

    chosen = [k for k in keys if (k in settable or k.startswith("method.")) and differs(k)]
    for k in keys:
        if classes(chosen) == len(configs):
            break
        if k not in chosen and classes(chosen + [k]) > classes(chosen):  # it tells two groups apart
            chosen.append(k)
    return chosen or ["method"]


def label_groups(df: pd.DataFrame) -> pd.DataFrame:
    """Adds `group` (the values of group_keys, joined: the label of a row and a line) and one
    column per group key; df.attrs["group_keys"] names them."""
    if df.empty:
        return df
    configs = {c: json.loads(c) for c in df["config"].unique()}
    keys = group_keys(list(configs.values()))
    for k in keys:
        if k not in df.columns:
            df[k] = df["config"].map(lambda c, k=k: configs[c].get(k))
    df["group"] = df["config"].map(lambda c: ", ".join(str(configs[c].get(k, "-")) for k in keys))
    df.attrs["group_keys"] = keys
    return df


def group_title(df: pd.DataFrame) -> str:
    return ", ".join(df.attrs.get("group_keys") or ["method"])


def format_ci(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4g}" + ("" if math.isnan(half) else f" ± {half:.2g}")


def training_compute(params: dict[str, str]) -> float:
    """Rows through the network over the whole training, teacher included, a backward counted as two
    forwards: steps x (forward + 2 backward + no-grad rows per step), from the run's budget.* params."""

    def part(prefix: str) -> float:
        steps = float(params.get(f"budget.{prefix}train_steps", 0) or 0)
        rows = {f"{k}_rows": float(params.get(f"budget.{prefix}{k}_rows_per_step", "nan")) for k in ("forward", "backward", "nograd")}
        return steps * step_cost(rows) if steps else 0.0

    return part("") + part("teacher_")


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


def plot_fid_vs_steps(df: pd.DataFrame, path: Path, title: str) -> list[Path]:
    plt = pyplot()
    fid = df[df["metric"] == "fid"]
    stats = fid.groupby(["group", "steps"])["value"].apply(_interval).unstack().reset_index()
    order = sorted(stats["group"].unique(), key=_sort_key)
    floor, top = _bands(stats)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    _lines(ax, stats, "group", "steps", order, floor)
    steps = sorted(fid["steps"].unique())
    draw_floor(ax, floors(fid), floor, top)
    axis(ax, "x", steps[0], steps[-1], log2_ticks=steps)
    axis(ax, "y", floor, top)
    ax.set_ylim(floor, top)
    space = ", ".join(sorted(fid["feature_space"].unique()))
    runs = int(stats["n"].max())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"FID ({space} features)")
    ax.set_title(f"{title}: {fid['num_samples'].max()} samples per point, up to {runs} run(s) per line"
                 + (",\nbands: 95 % t-interval over runs" if runs > 1 else ""), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, group_title(df))
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


def hue_column(df: pd.DataFrame) -> str:
    """The key a one-method sweep varies (its values go on an x axis), else `group`."""
    keys = df.attrs.get("group_keys") or ["method"]
    if len(keys) != 1 or keys[0] == "method" or keys[0] not in df.columns:
        return "group"
    swept = {k for s in df["swept"].unique() for k in s.split(",") if k}
    numeric = all(isinstance(_numeric(v), float) for v in df[keys[0]].unique())
    return keys[0] if keys[0] in swept or numeric else "group"  # FID against a dataset name is no curve


def fid_table(df: pd.DataFrame) -> str:
    """Markdown: one row per group, columns FID at M (the group's largest n), 4 and 1 steps as
    `mean ± half-width of the 95 % t-interval` over the group's runs, and the number of runs."""
    fid = df[df["metric"] == "fid"]
    lines = [f"| {group_title(df)} | M | FID at M steps | 4 steps | 1 step | runs |", "|---|---|---|---|---|---|"]
    for key in sorted(fid["group"].unique(), key=_sort_key):
        sub = fid[fid["group"] == key]
        M = int(sub["steps"].max())
        cells = [format_ci(*mean_ci(sub.loc[sub["steps"] == s, "value"])[:2]) for s in (M, 4, 1)]
        lines.append(f"| {key} | {M} | " + " | ".join(cells) + f" | {sub['run_id'].nunique()} |")
    space = ", ".join(sorted(fid["feature_space"].unique()))
    return ("\n".join(lines) + f"\n\nFID in the {space} feature space, {fid['num_samples'].max()} samples per n; {CI_NOTE}.\n"
            + floor_note(fid))


def floors(fid: pd.DataFrame) -> pd.DataFrame:
    """Per (feature space, samples per n): the mean of the runs' fid_floor_* metrics (runs logged
    before the floor existed are left out; every run of one reference set and N logs the same)."""
    if not set(FLOORS) <= set(fid.columns):
        return pd.DataFrame(columns=["feature_space", "num_samples", *FLOORS])
    have = fid.dropna(subset=["fresh"]).drop_duplicates("run_id")
    return have.groupby(["feature_space", "num_samples"], as_index=False)[list(FLOORS)].mean()


def draw_floor(ax, fl: pd.DataFrame, lo: float, hi: float) -> None:
    """The fresh-data floor as a dotted line and, where the runs logged it, the band floor ± one
    perfect-sampler run's sd (fid_floor_fresh_sd), clipped to the axis (lo, hi); one reference set only."""
    if len(fl) != 1:
        return
    f, sd = float(fl["fresh"].iloc[0]), float(fl["fresh_sd"].iloc[0]) if "fresh_sd" in fl else math.nan
    if not math.isnan(sd) and f - sd < hi and f + sd > lo:
        ax.axhspan(max(f - sd, lo), min(f + sd, hi), color="0.5", alpha=0.15, lw=0,
                   label="floor ± sd of one perfect-sampler run")
    if lo < f < hi:
        ax.axhline(f, color="0.35", ls=":", lw=1.2, label="floor: new data")


def floor_note(fid: pd.DataFrame) -> str:
    rows = floors(fid)
    if rows.empty:
        return ""

    def spread(r) -> str:
        sd = "" if math.isnan(r.fresh_sd) else f"one perfect-sampler run lands within ± {r.fresh_sd:.2g} of it (1 sd); "
        return f"({sd}s.e. of this mean {r.fresh_se:.1g})"

    parts = [f"{r.fresh:.3g} {spread(r)} for new data from the reference's distribution and {r.copy:.3g} for copies of "
             f"reference images ({r.feature_space}, {r.num_samples} samples)" for r in rows.itertuples()]
    return ("\nFID floor, what a perfect sampler scores against this reference set (the runs' fid_floor_* "
            f"metrics): {'; '.join(parts)}. Below the first, samples are closer to the reference images than "
            "new data would be; a single run within about one sd of the floor cannot be told from a perfect sampler, "
            "and differences between rows near it are the estimate's, not the methods'.\n")


def ratio_table(df: pd.DataFrame, num: str, den: str) -> str:
    """Markdown: FID of method `num` over FID of method `den` at every n both have (e.g. shortcut
    against flow matching), for each pair of groups run alike: every key both configs have is
    equal (data, model, training, evaluation, M, CFG scale), budgets and method-only keys aside.
    A ratio of the two groups' means over their runs; no interval."""
    fid = df[df["metric"] == "fid"]
    configs = {c: json.loads(c) for c in fid["config"].unique()}

    def alike(a: dict, b: dict) -> bool:
        shared = (set(a) & set(b)) - {"method"}
        return all(a[k] == b[k] for k in shared if not k.startswith("budget."))

    mean = fid.groupby(["config", "steps"])["value"].mean()
    runs = fid.groupby("config")["run_id"].nunique()
    lines = []
    for ca in sorted(c for c in configs if configs[c]["method"] == num):
        for cb in sorted(c for c in configs if configs[c]["method"] == den and alike(configs[ca], configs[c])):
            steps = sorted(set(mean[ca].index) & set(mean[cb].index))
            label = fid.loc[fid["config"] == ca, "group"].iloc[0]
            lines.append((label, runs[ca], runs[cb], {n: mean[ca][n] / mean[cb][n] for n in steps}))
    if not lines:
        raise BenchError(f"No runs of {num} and {den} with the same data, model, training and evaluation in this experiment.")
    steps = sorted({n for *_, r in lines for n in r})
    out = [f"| {num} group | runs {num} / {den} | " + " | ".join(f"n = {n}" for n in steps) + " |",
           "|---|---|" + "---|" * len(steps)]
    for label, ra, rb, r in lines:
        out.append(f"| {label} | {ra} / {rb} | " + " | ".join(f"{r[n]:.3g}" if n in r else "n/a" for n in steps) + " |")
    return "\n".join(out) + f"\n\nFID of {num} / FID of {den} (each the mean over its runs); below 1: {num} is better.\n"


def swept_table(df: pd.DataFrame) -> pd.DataFrame:
    """A sweep's FID at n = 1, 4 and M (each run's own largest n, so an M sweep compares like with
    like) against the swept value: one row per (value, n) with the mean, the standard deviation
    over runs (seeds), the half-width of the 95 % t-interval and the number of runs."""
    key = hue_column(df)
    fid = df[df["metric"] == "fid"]
    rows = []
    for run_id, run in fid.groupby("run_id"):
        M = int(run["steps"].max())
        for at, n in (("n = 1", 1), ("n = 4", 4), ("n = M", M)):
            v = run.loc[run["steps"] == n, "value"]
            if len(v):
                rows.append({key: _numeric(run[key].iloc[0]), "at": at, "value": float(v.iloc[0]), "run_id": run_id})
    raw = pd.DataFrame(rows)
    table = raw.groupby([key, "at"])["value"].agg(["mean", "std", "count"]).reset_index()
    table["ci95"] = [mean_ci(raw.loc[(raw[key] == k) & (raw["at"] == a), "value"])[1] for k, a in zip(table[key], table["at"])]
    table.attrs["raw"] = raw
    return table


def _numeric(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def plot_fid_vs_swept(df: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """FID against the swept value, one line each for n = 1, 4 and M; mean and 95 % t-interval over seeds."""
    plt = pyplot()
    key = hue_column(df)
    raw = swept_table(df).attrs["raw"]
    stats = raw.groupby(["at", key])["value"].apply(_interval).unstack().reset_index()
    floor, top = _bands(stats)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    order = [a for a in ("n = 1", "n = 4", "n = M") if a in set(stats["at"])]
    numeric = all(isinstance(v, float) for v in stats[key])
    if not numeric:
        stats[key] = stats[key].astype(str)
    _lines(ax, stats, "at", key, order, floor)
    if numeric:
        values = sorted(stats[key].unique())
        if values[0] > 0 and values[-1] / values[0] >= 4:
            axis(ax, "x", values[0], values[-1], log2_ticks=values)
    axis(ax, "y", floor, top)
    ax.set_ylim(floor, top)
    seeds = int(stats["n"].max())
    ax.set_xlabel(key)
    ax.set_ylabel(f"FID ({', '.join(sorted(df['feature_space'].unique()))} features)")
    ax.set_title(f"{title}: FID against {key}" + (f", mean and 95 % t-interval over up to {seeds} seeds" if seeds > 1 else ""),
                 fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, "at")
    return save(fig, path)


# -- the paired distance to the M-step samples (bench.evaluate.paired_distances) -----------------
def plot_paired_vs_steps(df: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """paired_to_M against n < M (0 at M by construction), one line per group: the mean over its runs
    with the 95 % t-interval as a band; the feature-space distance in a second panel where logged."""
    plt = pyplot()
    metrics = [m for m in ("paired_to_M", "paired_to_M_features") if (df["metric"] == m).any()]
    order = sorted(df.loc[df["metric"].isin(metrics), "group"].unique(), key=_sort_key)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics) + 1.4, 4.2), dpi=120, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        d = df[(df["metric"] == metric) & (df["value"] > 0)]
        stats = d.groupby(["group", "steps"])["value"].apply(_interval).unstack().reset_index()
        floor, top = _bands(stats)
        _lines(ax, stats, "group", "steps", [g for g in order if g in set(stats["group"])], floor)
        steps = sorted(d["steps"].unique())
        axis(ax, "x", steps[0], steps[-1], log2_ticks=steps)
        axis(ax, "y", floor, top)
        ax.set_ylim(floor, top)
        ax.set_xlabel("sampling steps n")
        space = "data space" if metric == "paired_to_M" else f"{', '.join(sorted(d['feature_space'].unique()))} features"
        ax.set_ylabel(f"{metric}: mean squared distance per dimension ({space})", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    runs = int(df[df["metric"].isin(metrics)].groupby("group")["run_id"].nunique().max())
    fig.suptitle(f"{title}: each n's samples against the same model's M-step samples from the same noise and labels"
                 + (f", mean and 95 % t-interval over up to {runs} runs" if runs > 1 else ""), fontsize=9)
    _legend(axes[0][-1], group_title(df))
    return save(fig, path)


def paired_interval_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per group and n < M: the 95 % t-interval of paired_to_M (and paired_to_M_features) and of FID
    over the group's runs, each as its relative half-width (half-width / mean), and FID's relative
    half-width over the paired one's: how many times narrower the paired interval is."""
    rows = []
    for (group, n), sub in df.groupby(["group", "steps"]):
        fid = mean_ci(sub.loc[sub["metric"] == "fid", "value"])
        for metric in ("paired_to_M", "paired_to_M_features"):
            pm = mean_ci(sub.loc[sub["metric"] == metric, "value"])
            if pm[2] < 2 or fid[2] < 2 or not pm[0] > 0:
                continue  # n = M (0 by construction) or a single run: no interval
            rel_p, rel_f = pm[1] / pm[0], fid[1] / fid[0]
            rows.append({"group": group, "steps": int(n), "metric": metric, "runs": pm[2], "mean": pm[0], "ci95": pm[1],
                         "rel_halfwidth": rel_p, "fid_mean": fid[0], "fid_ci95": fid[1], "fid_rel_halfwidth": rel_f,
                         "fid_over_paired": rel_f / rel_p if rel_p > 0 else math.nan})
    return pd.DataFrame(rows)


# -- a method's loss ladder over training (bench.levels; the runs' loss_ladder param) ------------
def collect_levels(experiment: str, uri: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per finished run, ladder group and logged training step: the train/loss_<group> history,
    the ladder) for the runs of `experiment` that share one loss_ladder; empty when none has one or
    their ladders differ (several methods)."""
    c = open_store(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = [r for r in c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50_000)
            if "loss_ladder" in r.data.params and r.data.tags.get("bench.role") != "teacher"]
    ladders = {r.data.params["loss_ladder"] for r in runs}
    if len(ladders) != 1:
        return pd.DataFrame(), {}
    ladder = json.loads(ladders.pop())
    rows = []
    for r in runs:
        for g in ladder["groups"]:
            for m in c.get_metric_history(r.info.run_id, f"train/loss_{g}"):
                rows.append({"run_id": r.info.run_id, "level": g, "step": int(m.step), "value": float(m.value)})
    return pd.DataFrame(rows), ladder


def _level_hue(df: pd.DataFrame, levels: pd.DataFrame) -> pd.DataFrame:
    """levels with the column the report's lines follow (a sweep's key, else the group) from df's runs."""
    hue = hue_column(df)
    runs = df.drop_duplicates("run_id").set_index("run_id")[hue]
    out = levels[levels["run_id"].isin(runs.index)].copy()
    out["hue"] = out["run_id"].map(runs)
    out.attrs["hue"] = hue
    return out


def levels_final_table(df: pd.DataFrame, levels: pd.DataFrame, ladder: dict) -> pd.DataFrame:
    """Per hue value (k of a k sweep) and ladder group: each run's last logged loss, mean and 95 %
    t-interval over runs."""
    lv = _level_hue(df, levels)
    last = lv.sort_values("step").groupby(["run_id", "level"]).tail(1)
    rows = []
    for (h, g), sub in last.groupby(["hue", "level"]):
        m, half, n = mean_ci(sub["value"])
        rows.append({lv.attrs["hue"]: h, "level": g, "label": ladder["labels"][ladder["groups"].index(g)],
                     "step": int(sub["step"].max()), "mean": m, "ci95": half, "runs": n})
    table = pd.DataFrame(rows)
    table["_order"] = table["level"].map(ladder["groups"].index)
    table = table.sort_values([lv.attrs["hue"], "_order"], key=lambda c: c.map(_sort_key) if c.name != "_order" else c)
    return table.drop(columns="_order").reset_index(drop=True)


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


def write_level_report(df: pd.DataFrame, experiment: str, out: Path, uri: str | None = None) -> list[Path]:
    """paired_vs_steps.png and paired_intervals.csv where runs logged paired_to_M; levels.png and
    levels_final.csv where the runs share a loss ladder."""
    from bench.checkpoint import atomic_write

    written: list[Path] = []
    if (df["metric"] == "paired_to_M").any() and (df.loc[df["metric"] == "paired_to_M", "value"] > 0).any():
        written += plot_paired_vs_steps(df, out / "paired_vs_steps.png", experiment)
        table = paired_interval_table(df)
        if not table.empty:
            text = table.to_csv(index=False, float_format="%.6g")
            written.append(atomic_write(out / "paired_intervals.csv", lambda fh: fh.write(text.encode())))
    levels, ladder = collect_levels(experiment, uri)
    if not levels.empty:
        written += plot_levels(df, levels, ladder, out / "levels.png", experiment)
        text = levels_final_table(df, levels, ladder).to_csv(index=False, float_format="%.6g")
        written.append(atomic_write(out / "levels_final.csv", lambda fh: fh.write(text.encode())))
    return written


def default_out(experiment: str) -> Path:
    """A user's reports live beside the store, never over the committed results/."""
    from bench.tracking import store_root

    return store_root() / "reports" / experiment


def write_report(experiment: str, out: Path | None = None, uri: str | None = None,
                 ratio: tuple[str, str] | None = None) -> list[Path]:
    """ratio: (num, den) methods: also ratio_<num>_<den>.md (ratio_table)."""
    from bench.checkpoint import atomic_write

    df = collect(experiment, uri)
    if df.empty:
        raise BenchError(f"Experiment {experiment!r} has no finished runs with evaluation metrics.")
    out = Path(out) if out else default_out(experiment)
    out.mkdir(parents=True, exist_ok=True)
    keys = df.attrs["group_keys"]
    df = df.sort_values(["group", "seed", "run_id", "metric", "steps"]).reset_index(drop=True)
    df.attrs["group_keys"] = keys
    columns = ["run_id", "group", *[k for k in keys if k not in ("method", "profile")], "method", "dataset", "profile",
               "seed", "num_samples", "feature_space", "swept", "train_examples", "teacher_examples", "train_compute",
               "steps", "metric", "value"]
    frame = df.rename(columns={k: f"fid_floor_{k}" for k in FLOORS})
    csv = frame[list(dict.fromkeys(columns + list(RUN_COLUMNS)))].to_csv(index=False)
    written = [atomic_write(out / "metrics.csv", lambda fh: fh.write(csv.encode()))]
    written += plot_fid_vs_steps(df, out / "fid_vs_steps.png", experiment)
    written.append(atomic_write(out / "table.md", lambda fh: fh.write(fid_table(df).encode())))
    if df["method"].nunique() > 1 and df["train_compute"].gt(0).any():  # methods side by side: FID per unit of training
        written += plot_fid_vs_compute(df, out / "fid_vs_compute.png", experiment)
    if hue_column(df) != "group":  # one method's sweep: FID against the swept value too
        written += plot_fid_vs_swept(df, out / "fid_vs_swept.png", experiment)
        table = swept_table(df).to_csv(index=False, float_format="%.6g")
        written.append(atomic_write(out / "fid_vs_swept.csv", lambda fh: fh.write(table.encode())))
    written += write_paired(df, out)  # pairs of groups on shared seeds and evaluation noise
    written += write_level_report(df, experiment, out, uri)
    if ratio:
        text = ratio_table(df, *ratio)
        written.append(atomic_write(out / f"ratio_{ratio[0]}_{ratio[1]}.md", lambda fh: fh.write(text.encode())))
    return written


def write_reports(experiments: list[str] | None, out: Path | None = None,
                  ratio: tuple[str, str] | None = None) -> list[Path]:
    """Every named experiment (default: every experiment with runs) under out/<experiment>/
    (out: $BENCH_STORE/reports/ unless given)."""
    if not experiments:
        c = open_store()
        experiments = [e.name for e in c.search_experiments() if c.search_runs([e.experiment_id], max_results=1)]
        if not experiments:
            raise BenchError(f"The tracking store {c.tracking_uri} has no runs to report.")
    written: list[Path] = []
    for name in experiments:
        target = (Path(out) / name) if (out and len(experiments) > 1) else out
        written += write_report(name, target, ratio=ratio)
    return written
