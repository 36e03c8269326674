"""The report's tables: FID per group with t-intervals, floors, ratios, swept values, paired-distance intervals, final level losses."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.errors import BenchError
from bench.report.paired import sort_key as _sort_key, t_interval as mean_ci
from bench.report.frames import DURING_FID, FLOORS, finished, group_title, hue_column, sweep_axes, _numeric


CI_NOTE = ("mean ± half-width of the 95 % Student-t interval over the runs (seeds) of a row "
           "(n - 1 degrees of freedom); a single run shows its value")


def plain(x: float, digits: int) -> str:
    """x to `digits` significant digits as %g writes it, but without an exponent from 1e-3 to 1e7 (940, not 9.4e+02)."""
    if math.isnan(x) or x == 0 or abs(x) < 1e-3 or abs(x) >= 1e7:
        return f"{x:.{digits}g}"
    text = f"{x:.{max(digits - 1 - math.floor(math.log10(abs(x))), 0)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text  # as %g writes it: no trailing zeros


def format_ci(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return plain(mean, 4) + ("" if math.isnan(half) else f" ± {plain(half, 2)}")


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
    if not {"fresh", "fresh_se", "copy"} <= set(fid.columns):
        return pd.DataFrame(columns=["feature_space", "num_samples", *FLOORS])
    fid = fid.assign(**{k: fid[k] if k in fid.columns else math.nan for k in FLOORS})
    have = fid.dropna(subset=["fresh"]).drop_duplicates("run_id")
    return have.groupby(["feature_space", "num_samples"], as_index=False)[list(FLOORS)].mean()


def floor_note(fid: pd.DataFrame) -> str:
    rows = floors(fid)
    if rows.empty:
        return ""

    def spread(r) -> str:
        fixed = "" if math.isnan(r.fresh_sd_fixed_ref) else (
            f"one perfect-sampler run against this reference set lands within ± {r.fresh_sd_fixed_ref:.2g} of it (1 sd), ")
        redrawn = "" if math.isnan(r.fresh_sd) else f"± {r.fresh_sd:.2g} with the reference set drawn anew too; "
        return f"({fixed}{redrawn}s.e. of this mean {r.fresh_se:.1g})"

    parts = [f"{r.fresh:.3g} {spread(r)} for new data from the reference's distribution and {r.copy:.3g} for copies of "
             f"reference images ({r.feature_space}, {r.num_samples} samples)" for r in rows.itertuples()]
    return ("\nFID floor, what a perfect sampler scores against this reference set (the runs' fid_floor_* "
            f"metrics): {'; '.join(parts)}. Below the first, samples are closer to the reference images than "
            "new data would be. Every row here shares one reference set, so the spread a run sees is the first sd "
            "(where logged); the reference's own draw and the evaluation noise cancel in the paired differences "
            "(leaderboard.md), so rows near the floor can still be ordered.\n")


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
    like) against the swept value (and, for a sweep over two keys, the second: bench.report.frames.sweep_axes): one row per (value, n) of finished runs with the mean, the standard
    deviation over runs (seeds), the half-width of the 95 % t-interval and the number of runs; then one row
    per stopped or failed trial and n, its last FID during training as `mean` (nan and count 0 where it has
    none), the training step it stopped or failed at of its train_steps, and the failure's reason.
    attrs: "raw" (finished runs, one row per run and n), "trials" (the stopped and failed rows)."""
    key, series = sweep_axes(df)
    keys = [key] + ([series] if series else [])
    done = finished(df)
    fid = done[done["metric"] == "fid"]
    rows = []
    for run_id, run in fid.groupby("run_id"):
        M = int(run["steps"].max())
        for at, n in (("n = 1", 1), ("n = 4", 4), ("n = M", M)):
            v = run.loc[run["steps"] == n, "value"]
            if len(v):
                rows.append({**{k: _numeric(run[k].iloc[0]) for k in keys}, "at": at, "value": float(v.iloc[0]), "run_id": run_id})
    raw = pd.DataFrame(rows, columns=[*keys, "at", "value", "run_id"])
    table = raw.groupby([*keys, "at"])["value"].agg(["mean", "std", "count"]).reset_index()
    table["ci95"] = [mean_ci(raw.loc[(raw[keys] == list(r[:-1])).all(axis=1) & (raw["at"] == r[-1]), "value"])[1]
                     for r in table[[*keys, "at"]].itertuples(index=False)]
    table.insert(len(keys) + 1, "outcome", "finished")
    ended = df[(df["metric"] == DURING_FID) & (df["outcome"] != "finished")] if "outcome" in df.columns else df.iloc[:0]
    rows = []
    for run_id, run in ended.groupby("run_id", sort=False):
        M, first = int(run["steps"].max()), run.iloc[0]
        for at, n in (("n = 1", 1), ("n = 4", 4), ("n = M", M)):
            v = run.loc[run["steps"] == n, "value"]
            if len(v):
                value = float(v.iloc[0])
                rows.append({**{k: _numeric(first[k]) for k in keys}, "at": at, "outcome": first["outcome"], "mean": value,
                             "std": math.nan, "count": int(not math.isnan(value)), "ci95": math.nan,
                             "stopped_at_step": first["stopped_at_step"], "train_steps": first["train_steps"],
                             "failure_reason": first["failure_reason"], "run_id": run_id})
    trials = pd.DataFrame(rows, columns=[*keys, "at", "outcome", "mean", "std", "count", "ci95", "stopped_at_step",
                                         "train_steps", "failure_reason", "run_id"])
    table = pd.concat([table, trials], ignore_index=True) if len(trials) else table.reindex(columns=trials.columns)
    table.attrs["raw"] = raw
    table.attrs["trials"] = trials
    return table


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
