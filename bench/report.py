"""`bench report`: reads ONLY the tracking store and writes, per experiment,
fid_vs_steps.png (seaborn, x = sampling steps on a log2 axis, one line per method or swept
value, spread over seeds), metrics.csv (one row per run, metric and step) and table.md
(FID at M, 4 and 1 steps, the paper's layout); with several methods also fid_vs_compute.png (FID at
1, 4 and M steps against each run's training compute, teacher included)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import BenchError

EVAL_METRICS = ("fid", "kid", "kid_std", "precision", "recall", "sw", "modes_hit", "mode_share", "nfe")
SWEEP_TAG = "sweep.keys"  # comma-separated config keys a sweep varied; their values are params


def open_store(uri: str | None = None):
    """An MlflowClient on an existing store; reporting never creates one."""
    from bench.tracking import client, is_local_sqlite, tracking_uri

    uri = uri or tracking_uri()
    if is_local_sqlite(uri) and not Path(uri[len("sqlite:///"):]).is_file():
        raise BenchError(f"No tracking store at {uri}; run `bench run` first (or set BENCH_STORE / MLFLOW_TRACKING_URI).")
    return client(uri)


def collect(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """One row per (finished run, metric, sampling steps) of `experiment`."""
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
        }
        for k in swept:
            base[k] = params.get(k)
        for key in EVAL_METRICS:
            if key not in run.data.metrics:
                continue
            for m in c.get_metric_history(run.info.run_id, key):
                rows.append({**base, "steps": int(m.step), "metric": key, "value": float(m.value)})
    return pd.DataFrame(rows)


def training_compute(params: dict[str, str]) -> float:
    """Rows through the network over the whole training, teacher included, a backward counted as two
    forwards: steps x (forward + 2 backward + no-grad rows per step), from the run's budget.* params."""

    def part(prefix: str) -> float:
        steps = float(params.get(f"budget.{prefix}train_steps", 0) or 0)
        rows = [float(params.get(f"budget.{prefix}{k}_rows_per_step", "nan")) for k in ("forward", "backward", "nograd")]
        return steps * (rows[0] + 2 * rows[1] + rows[2]) if steps else 0.0

    return part("") + part("teacher_")


def plot_fid_vs_compute(df: pd.DataFrame, path: Path, title: str) -> Path:
    """FID against training compute (teacher included), one panel per n in (1, 4, M), mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bench.checkpoint import atomic_write

    fid = df[df["metric"] == "fid"]
    M = int(fid["steps"].max())
    cols = [s for s in (1, 4, M) if s in set(fid["steps"])]
    pts = fid[fid["steps"].isin(cols)].groupby(["method", "steps"], as_index=False)[["train_compute", "value"]].mean()
    order = sorted(pts["method"].unique(), key=_sort_key)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4.0), dpi=120, sharey=True, squeeze=False)
    for ax, n in zip(axes[0], cols):
        sns.scatterplot(data=pts[pts["steps"] == n], x="train_compute", y="value", hue="method", hue_order=order,
                        style="method", style_order=order, s=70, ax=ax, legend=ax is axes[0][-1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{n} sampling step{'s' if n > 1 else ''}")
        ax.set_xlabel("training compute (network rows)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("FID")
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(f"{title}: FID against training compute (rows through the network, a backward = 2 forwards, "
                 f"teacher included)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def hue_column(df: pd.DataFrame) -> str:
    """Colour by method, or by the swept key when the experiment is one method's sweep."""
    swept = [s for s in df["swept"].unique() if s]
    if len(swept) == 1 and df["method"].nunique() == 1 and "," not in swept[0]:
        return swept[0]
    return "method"


def plot_fid_vs_steps(df: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bench.checkpoint import atomic_write

    fid = df[df["metric"] == "fid"].copy()
    hue = hue_column(df)
    order = sorted(fid[hue].unique(), key=_sort_key)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    sns.lineplot(data=fid, x="steps", y="value", hue=hue, hue_order=order, marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log", base=2)
    steps = sorted(fid["steps"].unique())
    ax.set_xticks(steps)
    ax.set_xticklabels([str(s) for s in steps])
    ax.set_yscale("log")
    space = ", ".join(sorted(fid["feature_space"].unique()))
    runs = fid.groupby(hue)["run_id"].nunique().max()
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"FID ({space} features)")
    ax.set_title(f"{title}: {fid['num_samples'].max()} samples per point, up to {runs} run(s) per line")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def _sort_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def fid_table(df: pd.DataFrame) -> str:
    """Markdown: rows = method (or swept value), columns = FID at M (each row's own largest n), 4 and
    1 steps (mean over runs, with the standard deviation when there are several)."""
    fid = df[df["metric"] == "fid"]
    hue = hue_column(df)
    lines = [f"| {hue} | M | FID at M steps | 4 steps | 1 step | runs |", "|---|---|---|---|---|---|"]
    for key in sorted(fid[hue].unique(), key=_sort_key):
        sub = fid[fid[hue] == key]
        M = int(sub["steps"].max())
        vals = []
        for s in (M, 4, 1):
            v = sub[sub["steps"] == s]["value"]
            vals.append("n/a" if v.empty else f"{v.mean():.4g}" + (f" ± {v.std():.2g}" if len(v) > 1 else ""))
        lines.append(f"| {key} | {M} | " + " | ".join(vals) + f" | {sub['run_id'].nunique()} |")
    return "\n".join(lines) + "\n"


def swept_table(df: pd.DataFrame) -> pd.DataFrame:
    """A sweep's FID at n = 1, 4 and M (each run's own largest n, so an M sweep compares like with
    like) against the swept value: one row per (value, n) with the mean, the standard deviation
    over runs (seeds) and the number of runs."""
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
    table.attrs["raw"] = raw
    return table


def _numeric(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def plot_fid_vs_swept(df: pd.DataFrame, path: Path, title: str) -> Path:
    """FID against the swept value, one line each for n = 1, 4 and M; mean and sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bench.checkpoint import atomic_write

    key = hue_column(df)
    raw = swept_table(df).attrs["raw"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    sns.lineplot(data=raw, x=key, y="value", hue="at", hue_order=["n = 1", "n = 4", "n = M"], marker="o",
                 errorbar="sd", ax=ax)
    values = sorted(raw[key].unique())
    if all(isinstance(v, float) for v in values):
        if values[0] > 0 and values[-1] / values[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values])
    ax.set_yscale("log")
    seeds = raw.groupby([key, "at"])["run_id"].nunique().max()
    ax.set_xlabel(key)
    ax.set_ylabel(f"FID ({', '.join(sorted(df['feature_space'].unique()))} features)")
    ax.set_title(f"{title}: FID against {key}" + (f", mean and sd over {seeds} seeds" if seeds > 1 else ""))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def write_report(experiment: str, out: Path | None = None, uri: str | None = None) -> list[Path]:
    from bench.checkpoint import atomic_write

    df = collect(experiment, uri)
    if df.empty:
        raise BenchError(f"Experiment {experiment!r} has no finished runs with evaluation metrics.")
    out = Path(out) if out else Path.cwd() / "results" / experiment
    out.mkdir(parents=True, exist_ok=True)
    df = df.sort_values(["method", "seed", "run_id", "metric", "steps"]).reset_index(drop=True)
    written = [atomic_write(out / "metrics.csv", lambda fh: fh.write(df.to_csv(index=False).encode()))]
    written.append(plot_fid_vs_steps(df, out / "fid_vs_steps.png", experiment))
    written.append(atomic_write(out / "table.md", lambda fh: fh.write(fid_table(df).encode())))
    if hue_column(df) == "method" and df["train_compute"].gt(0).any():  # methods side by side: FID per unit of training
        written.append(plot_fid_vs_compute(df, out / "fid_vs_compute.png", experiment))
    if hue_column(df) not in ("method", "seed"):  # one method's sweep: FID against the swept value too
        written.append(plot_fid_vs_swept(df, out / "fid_vs_swept.png", experiment))
        table = swept_table(df).to_csv(index=False, float_format="%.6g")
        written.append(atomic_write(out / "fid_vs_swept.csv", lambda fh: fh.write(table.encode())))
    return written


def write_reports(experiments: list[str] | None, out: Path | None = None) -> list[Path]:
    """Every named experiment (default: every experiment with runs) under out/<experiment>/."""
    if not experiments:
        c = open_store()
        experiments = [e.name for e in c.search_experiments() if c.search_runs([e.experiment_id], max_results=1)]
        if not experiments:
            raise BenchError(f"The tracking store {c.tracking_uri} has no runs to report.")
    written: list[Path] = []
    for name in experiments:
        target = (Path(out) / name) if (out and len(experiments) > 1) else out
        written += write_report(name, target)
    return written
