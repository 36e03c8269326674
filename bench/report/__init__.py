"""`bench report`: reads ONLY the tracking store and writes, per experiment, into
$BENCH_STORE/reports/<experiment>/ unless --out says where (the committed reference results:
`--out results/<experiment>`):

- index.html: one self-contained page (figures inline, nothing fetched from the network): the
  leaderboards, the figures, the tables, the variants not paired and why, duplicate seeds flagged;
- leaderboard.md (n = 1, 2, 4, M), leaderboard.csv (every n), comparisons.csv (every test): groups
  ranked per n, ties after a Holm (or --correction bh) correction of paired / Welch t-tests
  (bench.report.leaderboard), shown as letters;
- fid_vs_steps.png/.svg: FID against sampling steps (log2 axis), one panel per method family, at most
  six lines a panel, the mean over a group's runs (seeds) with its 95 % Student-t interval as bars;
- table.md: FID at M, 4 and 1 steps per group, `mean ± half-width of the 95 % t-interval` and
  the number of runs;
- metrics.csv: one row per run, metric and step, with each run's group, commit, evaluation seed,
  reference set, teacher hash and FID floor;
- paired.md / paired.csv (two groups or more): per-seed differences between groups that share seeds
  and evaluation noise, with their 95 % t-intervals (bench.report.paired);
- several methods: fid_vs_compute.png/.svg (FID at 1, 4 and M steps against training compute);
  one method's sweep: fid_vs_swept.png/.svg and .csv (FID against the swept value, one panel per n in 1, 4, M;
  trials a scheduler stopped or that failed marked at their last FID during training, and nowhere else);
- runs with paired_to_M: paired_vs_steps.png/.svg (against n per group) and paired_intervals.csv (its
  95 % interval's relative half-width against FID's at the same n);
- runs that share a loss ladder (the `loss_ladder` param): levels.png/.svg (each level's training loss
  over the steps per group or swept value, and the final losses side by side) and levels_final.csv.

A group is every run with the same method, dataset, profile and config values: only the seed
(and what is per run by nature: ids, teacher ids, file locations) may differ. A group's label is its
method plus what differs from the method's published defaults, or the user's name for it
(bench.report.labels); metrics.csv keeps every key that tells groups apart. `bench report --from-csv`
rebuilds all of it but the level losses from a written metrics.csv (write_from_csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from bench.errors import BenchError
from bench.report.paired import t_interval as mean_ci, write_paired  # noqa: F401  (mean_ci: the API of old)
from bench.report.frames import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    SWEEP_TAG, GROUP_PREFIXES, PER_RUN, FLOORS, collect,
    run_identity, RUN_COLUMNS, group_keys, label_groups, group_title, training_compute,
    hue_column, sweep_axes, collect_levels, read_metrics_csv, OUTCOMES, OUTCOME_COLUMNS, DURING_FID, finished,
)
from bench.report.tables import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    CI_NOTE, format_ci, fid_table, floors, floor_note, ratio_table,
    swept_table, paired_interval_table, levels_final_table,
)
from bench.report.figures import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    plot_fid_vs_steps, plot_fid_vs_compute, draw_floor, plot_fid_vs_swept, plot_paired_vs_steps, plot_levels, describe,
)


def write_paired_distance(df: pd.DataFrame, out: Path) -> list[Path]:
    """paired_vs_steps.png and paired_intervals.csv where runs logged paired_to_M (a metric of metrics.csv too)."""
    from bench.files.checkpoint import atomic_write

    written: list[Path] = []
    if (df["metric"] == "paired_to_M").any() and (df.loc[df["metric"] == "paired_to_M", "value"] > 0).any():
        written += plot_paired_vs_steps(df, out / "paired_vs_steps.png", describe(df))
        table = paired_interval_table(df)
        if not table.empty:
            text = table.to_csv(index=False, float_format="%.6g")
            written.append(atomic_write(out / "paired_intervals.csv", lambda fh: fh.write(text.encode())))
    return written


def write_level_report(df: pd.DataFrame, experiment: str, out: Path, uri: str | None = None) -> list[Path]:
    """levels.png and levels_final.csv where the runs share a loss ladder (read from the store: metrics.csv
    does not hold the training losses)."""
    from bench.files.checkpoint import atomic_write

    written: list[Path] = []
    levels, ladder = collect_levels(experiment, uri)
    if not levels.empty:
        written += plot_levels(df, levels, ladder, out / "levels.png", describe(df))
        text = levels_final_table(df, levels, ladder).to_csv(index=False, float_format="%.6g")
        written.append(atomic_write(out / "levels_final.csv", lambda fh: fh.write(text.encode())))
    return written


def default_out(experiment: str) -> Path:
    """A user's reports live beside the store, never over the committed results/."""
    from bench.store.tracking import store_root

    return store_root() / "reports" / experiment


def _commits(df: pd.DataFrame) -> str:
    if "git_commit" not in df.columns:
        return "metrics.csv does not record the commits its runs were made on"
    commits = sorted({str(c)[:7] for c in df["git_commit"].dropna() if str(c) not in ("", "nan")})
    if not commits:
        return "metrics.csv does not record the commits its runs were made on"
    text = f"made on {len(commits)} commit{'s' if len(commits) > 1 else ''}: {', '.join(commits)}"
    if "machine" in df.columns:  # one commit and seed train to other weights on another machine
        runs = df.drop_duplicates("run_id") if "run_id" in df.columns else df
        named = runs["machine"].fillna("").astype(str)
        machines = sorted(set(named) - {""})
        if machines:
            text += f"; on {len(machines)} machine{'s' if len(machines) > 1 else ''}: {'; '.join(machines)}"
            if (named == "").any():
                n = int((named == "").sum())
                text += f" ({n} run{'s' if n > 1 else ''} stored before runs recorded their machine)"
    return text


def _outcomes(df: pd.DataFrame) -> str:
    """'5 runs' or '5 runs: 3 finished, 1 stopped, 1 failed' (stopped and failed sweep trials are in the sweep figure only)."""
    runs = df.drop_duplicates("run_id")
    counts = runs["outcome"].value_counts() if "outcome" in runs else pd.Series({"finished": len(runs)})
    text = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    if counts.get("finished", 0) == len(runs):
        return text
    return text + ": " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o, 0))


def write_outputs(df: pd.DataFrame, out: Path, source: str, correction: str = "holm",
                  ratio: tuple[str, str] | None = None, extra: Callable[[], list[Path]] | None = None) -> list[Path]:
    """Everything but metrics.csv, from collect()'s frame (the store) or read_metrics_csv()'s (a CSV):
    figures, table.md, paired.md/.csv, leaderboard.md/.csv, comparisons.csv, ratio, then index.html.
    Only the sweep figure and its CSV see stopped and failed trials; everything else reads finished runs.
    extra: more outputs written before the page (the store's level report)."""
    from bench.files.checkpoint import atomic_write
    from bench.report.leaderboard import write_leaderboard
    from bench.report.page import write_page
    from bench.report.paired import duplicate_seeds, duplicates_markdown, paired_table

    out.mkdir(parents=True, exist_ok=True)
    trials, df = df, finished(df)  # trials: every outcome, for the sweep figure; df: finished runs, for the rest
    if df[df["metric"] == "fid"].empty:
        raise BenchError(f"No finished run with evaluation metrics to report ({_outcomes(trials)}).")
    written = plot_fid_vs_steps(df, out / "fid_vs_steps.png")
    table = fid_table(df)
    written.append(atomic_write(out / "table.md", lambda fh: fh.write(table.encode())))
    if df["method"].nunique() > 1 and df["train_compute"].gt(0).any():  # methods side by side: FID per unit of training
        written += plot_fid_vs_compute(df, out / "fid_vs_compute.png", describe(df))
    if sweep_axes(trials)[0] != "group":  # one method's sweep: FID against the swept value too
        written += plot_fid_vs_swept(trials, out / "fid_vs_swept.png", describe(df))
        swept = swept_table(trials).to_csv(index=False, float_format="%.6g")
        written.append(atomic_write(out / "fid_vs_swept.csv", lambda fh: fh.write(swept.encode())))
    written += write_paired(df, out, source)  # pairs of groups on shared seeds and evaluation noise
    written += write_paired_distance(df, out)
    board, lb = write_leaderboard(df, out, correction, source)
    written += board
    if extra:
        written += extra()
    if ratio:
        text = ratio_table(df, *ratio)
        written.append(atomic_write(out / f"ratio_{ratio[0]}_{ratio[1]}.md", lambda fh: fh.write(text.encode())))
    sections = {"FID at M, 4 and 1 steps (table.md)": table}
    if df[df["metric"] == "fid"]["group"].nunique() > 1:
        _, skipped, unchecked = paired_table(df)
        lines = [f"- {r.group_a} / {r.group_b}: {r.reason}" for r in skipped.itertuples()]
        if unchecked:
            lines.insert(0, f"Not recorded in these metrics, so not checked before pairing: {', '.join(unchecked)}.")
        sections["Variants not paired (compared by Welch's test instead), and why"] = "\n".join(lines) or "Every two variants pair."
        sections["Flagged"] = duplicates_markdown(duplicate_seeds(df)) or "No variant has two runs at one seed."
    fid = df[df["metric"] == "fid"]
    title = f"{', '.join(sorted(map(str, fid['dataset'].unique())))} (profile {', '.join(sorted(map(str, fid['profile'].unique())))})"
    written.append(write_page(out, df, lb, f"bench report: {title}", source, sections))
    return written


def write_report(experiment: str, out: Path | None = None, uri: str | None = None,
                 ratio: tuple[str, str] | None = None, correction: str = "holm",
                 names: dict[str, str] | None = None) -> list[Path]:
    """ratio: (num, den) methods: also ratio_<num>_<den>.md (ratio_table). correction: holm | bh (the
    leaderboard's). names: a group's generated label -> the user's name for it."""
    from bench.files.checkpoint import atomic_write

    df = collect(experiment, uri, names)
    if df.empty or finished(df).empty:
        what = f" ({_outcomes(df)})" if not df.empty else ""
        raise BenchError(f"Experiment {experiment!r} has no finished runs with evaluation metrics{what}.")
    out = Path(out) if out else default_out(experiment)
    out.mkdir(parents=True, exist_ok=True)
    keys = df.attrs["group_keys"]
    df = df.sort_values(["group", "seed", "run_id", "metric", "steps"]).reset_index(drop=True)
    df.attrs["group_keys"] = keys
    columns = ["run_id", "group", *[k for k in keys if k not in ("method", "profile")], "method", "dataset", "profile",
               "seed", "num_samples", "feature_space", "swept", "train_examples", "teacher_examples", "train_compute",
               "steps", "metric", "value"]
    frame = df.rename(columns={k: f"fid_floor_{k}" for k in FLOORS})
    csv = frame[list(dict.fromkeys(columns + list(RUN_COLUMNS) + list(OUTCOME_COLUMNS)))].to_csv(index=False)
    written = [atomic_write(out / "metrics.csv", lambda fh: fh.write(csv.encode()))]
    source = f"Experiment {experiment} ({_outcomes(df)}), {_commits(df)}."
    written += write_outputs(df, out, source, correction, ratio,
                             extra=lambda: write_level_report(finished(df), experiment, out, uri))
    return written


def write_from_csv(path: Path, out: Path | None = None, correction: str = "holm",
                   names: dict[str, str] | None = None) -> list[Path]:
    """The whole report (figures, tables, paired, leaderboard, page) from a report's metrics.csv (e.g. a
    committed results/<experiment>/metrics.csv) into `out` (default: the CSV's folder; the CSV itself is
    left as it is). What needs the store (the level losses) is not redrawn."""
    path = Path(path)
    df = read_metrics_csv(path, names)
    out = Path(out) if out else path.parent
    source = f"Rebuilt from {path.name} ({_outcomes(df)}), {_commits(df)}."
    return write_outputs(df, out, source, correction)


def write_reports(experiments: list[str] | None, out: Path | None = None,
                  ratio: tuple[str, str] | None = None, correction: str = "holm",
                  names: dict[str, str] | None = None) -> list[Path]:
    """Every named experiment (default: every experiment with runs) under out/<experiment>/
    (out: $BENCH_STORE/reports/ unless given)."""
    if not experiments:
        from bench.store.tracking import RunStore

        store = RunStore.existing()
        experiments = [name for name in store.experiments() if store.find(name, limit=1)]
        if not experiments:
            raise BenchError(f"The tracking store {store.uri} has no runs to report.")
    written: list[Path] = []
    for name in experiments:
        target = (Path(out) / name) if (out and len(experiments) > 1) else out
        written += write_report(name, target, ratio=ratio, correction=correction, names=names)
    return written
