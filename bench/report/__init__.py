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
  and evaluation noise, with their 95 % t-intervals (bench.report.paired);
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

from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report.paired import t_interval as mean_ci, write_paired  # noqa: F401  (mean_ci: the API of old)
from bench.report.frames import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    SWEEP_TAG, GROUP_PREFIXES, PER_RUN, FLOORS, collect,
    run_identity, RUN_COLUMNS, group_keys, label_groups, group_title, training_compute,
    hue_column, collect_levels,
)
from bench.report.tables import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    CI_NOTE, format_ci, fid_table, floors, floor_note, ratio_table,
    swept_table, paired_interval_table, levels_final_table,
)
from bench.report.figures import (  # noqa: F401  (the report's API: bench.report.collect, ...)
    plot_fid_vs_steps, plot_fid_vs_compute, draw_floor, plot_fid_vs_swept, plot_paired_vs_steps, plot_levels,
)


def write_level_report(df: pd.DataFrame, experiment: str, out: Path, uri: str | None = None) -> list[Path]:
    """paired_vs_steps.png and paired_intervals.csv where runs logged paired_to_M; levels.png and
    levels_final.csv where the runs share a loss ladder."""
    from bench.files.checkpoint import atomic_write

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
    from bench.store.tracking import store_root

    return store_root() / "reports" / experiment


def write_report(experiment: str, out: Path | None = None, uri: str | None = None,
                 ratio: tuple[str, str] | None = None) -> list[Path]:
    """ratio: (num, den) methods: also ratio_<num>_<den>.md (ratio_table)."""
    from bench.files.checkpoint import atomic_write

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
        from bench.store.tracking import RunStore

        store = RunStore.existing()
        experiments = [name for name in store.experiments() if store.find(name, limit=1)]
        if not experiments:
            raise BenchError(f"The tracking store {store.uri} has no runs to report.")
    written: list[Path] = []
    for name in experiments:
        target = (Path(out) / name) if (out and len(experiments) > 1) else out
        written += write_report(name, target, ratio=ratio)
    return written
