"""Paired comparisons of method groups (`bench report` writes paired.md and paired.csv; the
leaderboard's tests pair the same way).

Two groups of one experiment are paired where their runs share seeds and, seed by seed, their
evaluation noise: the same evaluation seed (noise and labels), samples per n, reference set and
feature space; and, where either distils, the same teacher (its weights' hash; a distilled run
whose hash is not recorded is never paired). A seed with several runs of one group is left out
of the pairing and flagged (duplicate_seeds), never averaged silently. Then every shared seed
gives one difference d_s(n) = FID_A(s, n) - FID_B(s, n), and the 95 % Student-t interval of
their mean (n_seeds - 1 degrees of freedom) is far narrower than the two groups' own intervals,
because what the seeds share (evaluation noise, teacher, data order) cancels in d_s.
Groups that differ in any of these are not paired, and the output says which key differs.

paired.md marks the cells whose paired interval excludes 0, each on its own with no correction
for the number of cells (bench.report.leaderboard corrects), and with † those that Welch's test
on the same seeds, as if unpaired, does not call at 5 %: what pairing alone calls.

Works on the long frame of bench.report.collect (from the store) and on a report's metrics.csv
(`bench report --from-csv`), whose columns name only some of those keys: what a frame does not
record is listed as unchecked in the output, never assumed equal silently.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pandas as pd

from bench.errors import BenchError

# per-run columns that must be equal seed by seed for two runs to share their evaluation noise
EVAL_NOISE = {"eval_seed": "evaluation seed", "num_samples": "samples per n", "reference": "reference set",
              "feature_space": "feature space"}
TEACHER = "teacher_sha256"  # a distilled run's teacher weights' hash; "" for a method without a teacher
COMPACT_AT = (1, 2, 4)  # and M: the compact table's columns


def sort_key(v):
    """Numbers first, in numeric order, then the rest as text (group labels, swept values)."""
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def t_interval(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % Student-t interval with n - 1 dof, n); half nan for n < 2."""
    from scipy import stats

    v = pd.Series(values, dtype=float).dropna()
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v.iloc[0]), math.nan, 1
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)), n


def ttest_p(a, b=None) -> float:
    """Two-sided p of a one-sample t-test of a (the per-seed differences) against 0, or of Welch's test
    of a against b; a constant sample: 1 where it is 0 (or the two are equal), else 0."""
    import numpy as np
    from scipy import stats

    a = np.asarray(a, dtype=float)
    if b is None:
        if np.ptp(a) == 0:
            return 1.0 if a[0] == 0 else 0.0
        return float(stats.ttest_1samp(a, 0.0).pvalue)
    b = np.asarray(b, dtype=float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _known(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "nan", "-"))


def distils(method: str, teacher_examples=None) -> bool:
    """Whether a run of `method` learns from a teacher: the method says so (Method.needs_teacher), or
    the run spent examples on one (budget.teacher_examples, for a method this code no longer knows)."""
    try:
        from methods import get_method

        return bool(get_method(str(method)).needs_teacher)
    except Exception:
        try:
            return float(teacher_examples) > 0
        except (TypeError, ValueError):
            return False


def per_seed(df: pd.DataFrame, metric: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values: one row per (group, seed, steps) with the value, runs: one row per (group, seed) with
    the run's pairing keys, `distils` and `runs`, the number of runs at that seed). Several runs of one
    group at one seed (duplicates) are averaged in values; pairing leaves such seeds out and the
    report flags them (duplicate_seeds)."""
    need = {"group", "seed", "steps", "metric", "value", "run_id"}
    if not need <= set(df.columns):
        raise BenchError(f"The metrics need the columns {sorted(need)} for paired comparisons; missing "
                         f"{sorted(need - set(df.columns))}.")
    d = df[df["metric"] == metric]
    values = d.groupby(["group", "seed", "steps"], as_index=False)["value"].mean()
    keys = [k for k in (*EVAL_NOISE, TEACHER) if k in d.columns]
    runs = d.drop_duplicates("run_id").copy()
    runs["distils"] = [distils(m, t) for m, t in zip(runs.get("method", pd.Series("?", index=runs.index)),
                                                     runs.get("teacher_examples", pd.Series(0, index=runs.index)))]
    agg = {k: (k, lambda s: "|".join(sorted({str(x) for x in s}))) for k in keys}
    runs = runs.groupby(["group", "seed"], as_index=False).agg(runs=("run_id", "nunique"), distils=("distils", "any"), **agg)
    return values, runs


def duplicate_seeds(df: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """(group, seed, runs, run_ids) for every group with more than one run at one seed: a rerun, or
    one run logged twice. Flagged in the report; pairing leaves the seed out instead of averaging."""
    d = df[df["metric"] == metric].drop_duplicates("run_id")
    dup = d.groupby(["group", "seed"])["run_id"].agg(lambda s: sorted(s)).reset_index()
    dup["runs"] = dup["run_id"].map(len)
    dup = dup[dup["runs"] > 1]
    return pd.DataFrame({"group": dup["group"], "seed": dup["seed"], "runs": dup["runs"],
                         "run_ids": dup["run_id"].map(lambda ids: " ".join(i[:8] for i in ids))}).reset_index(drop=True)


def _why_not(ra: pd.DataFrame, rb: pd.DataFrame, keys: list[str]) -> str:
    """'' where the runs of a shared seed agree on every evaluation-noise key and on the teacher where
    either distils (a distilled run whose teacher hash is not recorded is never paired); else the reason."""
    both = ra.merge(rb, on="seed", suffixes=("_a", "_b"))
    for s, da, db in zip(both["seed"], both["distils_a"], both["distils_b"]):
        for side, dist in (("A", da), ("B", db)):
            if dist and TEACHER not in keys:
                return f"{side} distils and these metrics record no teacher hash: whether the runs share their teacher cannot be checked"
            if dist and not _known(both.loc[both["seed"] == s, f"{TEACHER}_{side.lower()}"].iloc[0]):
                return (f"{side} distils and its run at seed {s} records no teacher hash: whether the runs share "
                        "their teacher cannot be checked")
    for k in keys:
        if k == TEACHER:
            for s, a, b in zip(both["seed"], both[f"{k}_a"], both[f"{k}_b"]):
                if _known(a) and _known(b) and a != b:
                    return f"different teachers at seed {s} ({str(a)[:12]} vs {str(b)[:12]}): the difference would include the teachers'"
            continue
        for s, a, b in zip(both["seed"], both[f"{k}_a"], both[f"{k}_b"]):
            if not (_known(a) and _known(b)):
                return f"{EVAL_NOISE[k]} not recorded for a run at seed {s}: the evaluation noise cannot be checked"
            if str(a) != str(b):
                return f"{EVAL_NOISE[k]} differs at seed {s} ({a} vs {b}): not the same evaluation noise"
    return ""


def pairing(df: pd.DataFrame, metric: str = "fid") -> tuple[pd.DataFrame, dict, list[str]]:
    """(values as per_seed, decisions, unchecked). decisions: (group_a, group_b) -> (shared seeds that
    pair, reason not paired or ''), for every two groups in label order. A seed where either group has
    more than one run is left out (duplicate_seeds flags it); fewer than two seeds left: not paired."""
    values, runs = per_seed(df, metric)
    # a noise key no run records is unchecked; the teacher column, where present, is "" for methods without one
    keys = [k for k in EVAL_NOISE if k in runs.columns and runs[k].map(_known).any()]
    keys += [TEACHER] if TEACHER in runs.columns else []
    unchecked = [EVAL_NOISE[k] for k in EVAL_NOISE if k not in keys] + ([] if TEACHER in keys else ["teachers"])
    groups = sorted(values["group"].unique(), key=sort_key)
    decisions = {}
    for a, b in combinations(groups, 2):
        ra, rb = runs[runs["group"] == a], runs[runs["group"] == b]
        shared = sorted(set(ra["seed"]) & set(rb["seed"]))
        dup = sorted(s for s in shared if (ra.loc[ra["seed"] == s, "runs"].iloc[0] > 1 or rb.loc[rb["seed"] == s, "runs"].iloc[0] > 1))
        seeds = [s for s in shared if s not in dup]
        if len(seeds) < 2:
            why = f"{len(seeds)} shared seed{'s' if len(seeds) != 1 else ''}"
            if dup:
                why += f" once seed{'s' if len(dup) > 1 else ''} {', '.join(map(str, dup))} (several runs of one group) are left out"
            decisions[(a, b)] = (seeds, why + ": no paired interval")
            continue
        decisions[(a, b)] = (seeds, _why_not(ra[ra["seed"].isin(seeds)], rb[rb["seed"].isin(seeds)], keys))
    return values, decisions, unchecked


def paired_table(df: pd.DataFrame, metric: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(pairs, not_paired, unchecked). pairs: one row per (group_a, group_b, steps) for every pair of
    groups paired as the module says, with the shared seeds, the mean difference A - B and its 95 %
    t-interval, whether it excludes 0, each group's own interval over the same seeds, and Welch's
    test's p-value on those seeds as if unpaired. not_paired: (group_a, group_b, reason).
    unchecked: the pairing keys this frame does not record."""
    values, decisions, unchecked = pairing(df, metric)
    rows, skipped = [], []
    for (a, b), (seeds, why) in decisions.items():
        if why:
            skipped.append({"group_a": a, "group_b": b, "reason": why})
            continue
        va = values[(values["group"] == a) & values["seed"].isin(seeds)].set_index(["steps", "seed"])["value"]
        vb = values[(values["group"] == b) & values["seed"].isin(seeds)].set_index(["steps", "seed"])["value"]
        steps = sorted(set(va.index.get_level_values(0)) & set(vb.index.get_level_values(0)))
        for n in steps:
            xa, xb = va.loc[n], vb.loc[n]
            common = sorted(set(xa.index) & set(xb.index))
            if len(common) < 2:
                continue
            d = xa[common] - xb[common]
            m, h, k = t_interval(d)
            ma, ha, _ = t_interval(xa[common])
            mb, hb, _ = t_interval(xb[common])
            welch = ttest_p(xa[common], xb[common])
            rows.append({"group_a": a, "group_b": b, "steps": int(n), "seeds": " ".join(map(str, common)), "n_seeds": k,
                         "diff_mean": m, "diff_half": h, "diff_lo": m - h, "diff_hi": m + h,
                         "excludes_0": bool(abs(m) > h),
                         "a_mean": ma, "a_half": ha, "b_mean": mb, "b_half": hb,
                         "unpaired_overlap": bool(ma - ha <= mb + hb and mb - hb <= ma + ha),
                         "welch_p": float(welch)})
    pairs = pd.DataFrame(rows, columns=["group_a", "group_b", "steps", "seeds", "n_seeds", "diff_mean", "diff_half",
                                        "diff_lo", "diff_hi", "excludes_0", "a_mean", "a_half", "b_mean", "b_half",
                                        "unpaired_overlap", "welch_p"])
    return pairs, pd.DataFrame(skipped, columns=["group_a", "group_b", "reason"]), unchecked


def _compact_steps(p: pd.DataFrame) -> dict[str, int]:
    """column title -> n for n = 1, 2, 4 and M, M the largest n the pair shares."""
    have = set(p["steps"])
    M = max(have)
    return {**{f"n = {n}": n for n in COMPACT_AT if n in have and n < M}, "n = M": M}


def _cell(r) -> str:
    if math.isnan(r.diff_half):
        return "n/a"
    mark = ""
    if r.excludes_0:
        mark = " **A**" if r.diff_mean < 0 else " **B**"
        if _only_paired(r):
            mark += " †"
    return f"{r.diff_mean:+.3g} ± {r.diff_half:.2g}{mark}"


def _only_paired(r) -> bool:
    """The paired interval excludes 0 and Welch's test on the same seeds, as if unpaired, does not call
    it at 5 % (the fair unpaired rule; two overlapping intervals is a far stricter one)."""
    p = getattr(r, "welch_p", math.nan)
    return bool(r.excludes_0 and (p >= 0.05 or math.isnan(p)))


def short_names(groups) -> dict[str, str]:
    """A group label -> the name the paired table shows: the label itself (bench.report.labels keeps
    labels short: the method plus what differs from its defaults)."""
    return {g: str(g) for g in sorted(set(groups), key=sort_key)}


def paired_markdown(pairs: pd.DataFrame, skipped: pd.DataFrame, unchecked: list[str], metric: str = "fid",
                    source: str = "", title: str = "") -> str:
    """The compact table (n = 1, 2, 4, M per pair), the orderings only pairing calls there, and the
    groups left unpaired with the reason. Groups go by short names, listed with their full labels."""
    out = [f"# Paired differences of {metric.upper()} between groups run on the same seeds", ""]
    if source:
        out += [source, ""]
    name = short_names([*pairs["group_a"], *pairs["group_b"], *skipped["group_a"], *skipped["group_b"]])
    if any(k != v for k, v in name.items()):
        out += [f"| name | group ({title or 'the report’s group label'}) |", "|---|---|"]
        out += [f"| {v} | {k} |" for k, v in name.items()] + [""]
    out += [f"Each cell: d = {metric.upper()}(A) - {metric.upper()}(B), the mean over the shared seeds of the per-seed "
            "difference ± the half-width of its 95 % Student-t interval (n_seeds - 1 degrees of freedom). "
            "**A** / **B**: the interval excludes 0 and that group scores lower (better); "
            "†: Welch's test on the same seeds, as if the runs were not paired, does not call it at 5 %, so only "
            "the pairing does. M: the largest n both groups were evaluated at. Every n: paired.csv. Each interval "
            "is a 95 % one on its own, **with no correction for the number of cells**: among many cells some "
            "exclude 0 by chance (one in twenty where two groups do not differ). The orderings that survive a "
            "correction are in leaderboard.md.", ""]
    if unchecked:
        out += [f"Not recorded in these metrics, so not checked before pairing: {', '.join(unchecked)}.", ""]
    if pairs.empty:
        out.append("No two groups of this experiment share two or more seeds and their evaluation noise.")
    else:
        titles = ["n = 1", "n = 2", "n = 4", "n = M"]
        out += ["| A | B | seeds | " + " | ".join(titles) + " |", "|---|---|---|" + "---|" * len(titles)]
        for (a, b), p in pairs.groupby(["group_a", "group_b"], sort=False):
            cells = {t: _cell(p[p["steps"] == n].iloc[0]) for t, n in _compact_steps(p).items()}
            cells["n = M"] = f"({int(p['steps'].max())}) " + cells["n = M"]
            out.append(f"| {name[a]} | {name[b]} | {p['seeds'].iloc[0]} | " + " | ".join(cells.get(t, "-") for t in titles) + " |")
        compact = pd.concat([p[p["steps"].isin(_compact_steps(p).values())] for _, p in pairs.groupby(["group_a", "group_b"], sort=False)])
        called = compact[[_only_paired(r) for r in compact.itertuples()]]
        every = int(sum(_only_paired(r) for r in pairs.itertuples()))
        out += ["", "## Orderings the paired intervals call and Welch's test on the same seeds does not (n = 1, 2, 4, M; uncorrected)", ""]
        if called.empty:
            out.append("None.")
        for r in called.sort_values(["steps", "group_a", "group_b"]).itertuples():
            lo, hi = (r.group_a, r.group_b) if r.diff_mean < 0 else (r.group_b, r.group_a)
            out.append(f"- n = {r.steps}: {name[lo]} < {name[hi]} (d = {r.diff_mean:+.3g} ± {r.diff_half:.2g}; "
                       f"{name[r.group_a]} {r.a_mean:.4g} ± {r.a_half:.2g}, {name[r.group_b]} {r.b_mean:.4g} ± {r.b_half:.2g})")
        out += ["", f"At every n (paired.csv): {every} such cells of {len(pairs)}; "
                    f"{int(pairs['excludes_0'].sum())} cells exclude 0 in all."]
    if not skipped.empty:
        out += ["", "## Not paired", ""]
        out += [f"- {name[r.group_a]} / {name[r.group_b]}: {r.reason}" for r in skipped.itertuples()]
    return "\n".join(out) + "\n"


def duplicates_markdown(dup: pd.DataFrame) -> str:
    """A section flagging groups with several runs at one seed ('' where none)."""
    if dup.empty:
        return ""
    out = ["", "## Several runs at one seed (flagged)", "",
           "These seeds are left out of the pairing (a difference per seed needs one run per group); the groups' "
           "own means and intervals count every run, so a repeated seed weighs twice there.", ""]
    out += [f"- {r.group}, seed {r.seed}: {r.runs} runs ({r.run_ids})" for r in dup.itertuples()]
    return "\n".join(out) + "\n"


def write_paired(df: pd.DataFrame, out: Path, source: str = "", metric: str = "fid") -> list[Path]:
    """paired.md and paired.csv in `out` where the frame has two groups or more; else nothing."""
    from bench.files.checkpoint import atomic_write

    if df[df["metric"] == metric]["group"].nunique() < 2:
        return []
    pairs, skipped, unchecked = paired_table(df, metric)
    keys = df.attrs.get("group_keys") or [c for c in df.columns if c.startswith(("method.", "data.", "model.", "train.", "eval."))]
    text = paired_markdown(pairs, skipped, unchecked, metric, source, title=", ".join(["method", *[k for k in keys if k != "method"]]))
    text += duplicates_markdown(duplicate_seeds(df, metric))
    csv = pd.concat([pairs, skipped.assign(steps=pd.NA)], ignore_index=True).to_csv(index=False, float_format="%.6g")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(out / "paired.md", lambda fh: fh.write(text.encode())),
               atomic_write(out / "paired.csv", lambda fh: fh.write(csv.encode()))]
    return written
