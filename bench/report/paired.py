"""Paired comparisons of method groups (`bench report` writes paired.md and paired.csv).

Two groups of one experiment are paired where their runs share seeds and, seed by seed, their
evaluation noise: the same evaluation seed (noise and labels), samples per n, reference set and
feature space; and, where both distil, the same teacher (its weights' hash). Then every shared
seed gives one difference d_s(n) = FID_A(s, n) - FID_B(s, n), and the 95 % Student-t interval of
their mean (n_seeds - 1 degrees of freedom) is far narrower than the two groups' own intervals,
because what the seeds share (evaluation noise, teacher, data order) cancels in d_s.
Groups that differ in any of these are not paired, and the output says which key differs.

A rule for the ordering: the paired interval excludes 0. The "unpaired" columns are each group's
own mean ± 95 % t-interval over the same shared seeds (as table.md computes them); where those
overlap and the paired interval excludes 0, pairing alone calls the ordering.

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


def _known(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "nan", "-"))


def per_seed(df: pd.DataFrame, metric: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values: one row per (group, seed, steps) with the value, runs: one row per (group, seed) with
    the run's pairing keys). Several runs of one group at one seed are averaged (runs counts them)."""
    need = {"group", "seed", "steps", "metric", "value", "run_id"}
    if not need <= set(df.columns):
        raise BenchError(f"The metrics need the columns {sorted(need)} for paired comparisons; missing "
                         f"{sorted(need - set(df.columns))}.")
    d = df[df["metric"] == metric]
    values = d.groupby(["group", "seed", "steps"], as_index=False)["value"].mean()
    keys = [k for k in (*EVAL_NOISE, TEACHER) if k in d.columns]
    runs = d.drop_duplicates("run_id")
    agg = {k: (k, lambda s: "|".join(sorted({str(x) for x in s}))) for k in keys}
    runs = runs.groupby(["group", "seed"], as_index=False).agg(runs=("run_id", "nunique"), **agg)
    return values, runs


def _why_not(ra: pd.DataFrame, rb: pd.DataFrame, keys: list[str]) -> str:
    """'' where the runs of a shared seed agree on every evaluation-noise key and (both distilling)
    on the teacher; else the reason."""
    both = ra.merge(rb, on="seed", suffixes=("_a", "_b"))
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


def paired_table(df: pd.DataFrame, metric: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(pairs, not_paired, unchecked). pairs: one row per (group_a, group_b, steps) for every pair of
    groups paired as the module says, with the shared seeds, the mean difference A - B and its 95 %
    t-interval, whether it excludes 0, and each group's own interval over the same seeds.
    not_paired: (group_a, group_b, reason). unchecked: the pairing keys this frame does not record."""
    values, runs = per_seed(df, metric)
    # a noise key no run records is unchecked; the teacher column, where present, is "" for methods without one
    keys = [k for k in EVAL_NOISE if k in runs.columns and runs[k].map(_known).any()]
    keys += [TEACHER] if TEACHER in runs.columns else []
    unchecked = [EVAL_NOISE[k] for k in EVAL_NOISE if k not in keys] + ([] if TEACHER in keys else ["teachers"])
    groups = sorted(values["group"].unique(), key=sort_key)
    rows, skipped = [], []
    for a, b in combinations(groups, 2):
        ra, rb = runs[runs["group"] == a], runs[runs["group"] == b]
        seeds = sorted(set(ra["seed"]) & set(rb["seed"]))
        if len(seeds) < 2:
            skipped.append({"group_a": a, "group_b": b, "reason": f"{len(seeds)} shared seed{'s' if len(seeds) != 1 else ''}: "
                                                                   "no interval"})
            continue
        why = _why_not(ra[ra["seed"].isin(seeds)], rb[rb["seed"].isin(seeds)], keys)
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
            rows.append({"group_a": a, "group_b": b, "steps": int(n), "seeds": " ".join(map(str, common)), "n_seeds": k,
                         "diff_mean": m, "diff_half": h, "diff_lo": m - h, "diff_hi": m + h,
                         "excludes_0": bool(abs(m) > h),
                         "a_mean": ma, "a_half": ha, "b_mean": mb, "b_half": hb,
                         "unpaired_overlap": bool(ma - ha <= mb + hb and mb - hb <= ma + ha)})
    pairs = pd.DataFrame(rows, columns=["group_a", "group_b", "steps", "seeds", "n_seeds", "diff_mean", "diff_half",
                                        "diff_lo", "diff_hi", "excludes_0", "a_mean", "a_half", "b_mean", "b_half",
                                        "unpaired_overlap"])
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
        if r.unpaired_overlap:
            mark += " †"
    return f"{r.diff_mean:+.3g} ± {r.diff_half:.2g}{mark}"


def short_names(groups) -> dict[str, str]:
    """A group label -> its method, numbered where a method has several groups ("shortcut [2]")."""
    groups = sorted(set(groups), key=sort_key)
    method = {g: str(g).split(",")[0].strip() for g in groups}
    out = {}
    for g in groups:
        same = [h for h in groups if method[h] == method[g]]
        out[g] = method[g] if len(same) == 1 else f"{method[g]} [{same.index(g) + 1}]"
    return out


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
            "†: the two groups' own 95 % t-intervals over the same seeds overlap, so only the pairing calls it. "
            "M: the largest n both groups were evaluated at. Every n: paired.csv. Each interval is a 95 % one "
            "on its own, with no correction for the number of cells: among many cells some exclude 0 by chance "
            "(one in twenty where two groups do not differ).", ""]
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
        called = compact[compact["excludes_0"] & compact["unpaired_overlap"]]
        every = int((pairs["excludes_0"] & pairs["unpaired_overlap"]).sum())
        out += ["", "## Orderings the paired intervals call and the unpaired ones do not (n = 1, 2, 4, M)", ""]
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


def plot_paired_matrix(pairs: pd.DataFrame, path: Path, names: dict[str, str], title: str = "") -> list[Path]:
    """One panel per n in (1, 2, 4, M): row group against column group, the cell coloured where the
    paired interval excludes 0 (blue: the row scores lower, red: the column does), grey where it does
    not, blank where the two are not paired; the mean difference row - column written in the cell."""
    import numpy as np

    from bench.files.plots import pyplot, save

    plt = pyplot()
    order = list(names)
    M = int(pairs["steps"].max())
    cols = list(dict.fromkeys(n for n in (*COMPACT_AT, M) if n in set(pairs["steps"])))
    k = len(order)
    fig, axes = plt.subplots(1, len(cols), figsize=(0.42 * k * len(cols) + 2.5, 0.42 * k + 1.6), dpi=120, squeeze=False)
    for ax, n in zip(axes[0], cols):
        colour = np.ones((k, k, 3))
        at = pairs[pairs["steps"] == n]
        for r in at.itertuples():
            i, j = order.index(r.group_a), order.index(r.group_b)
            for (x, y, d) in ((i, j, r.diff_mean), (j, i, -r.diff_mean)):
                c = (0.85, 0.85, 0.85) if not r.excludes_0 else ((0.35, 0.55, 0.85) if d < 0 else (0.85, 0.4, 0.35))
                colour[x, y] = c
                ax.text(y, x, f"{d:+.2g}", ha="center", va="center", fontsize=5)
        ax.imshow(colour, interpolation="nearest")
        ax.set_xticks(range(k), [names[g] for g in order], rotation=90, fontsize=6)
        ax.set_yticks(range(k), [names[g] for g in order] if ax is axes[0][0] else [], fontsize=6)
        ax.set_title(f"n = {n}" + (" (M)" if n == M else ""), fontsize=8)
    fig.suptitle((f"{title}: " if title else "") + "paired FID difference row - column over shared seeds; blue: row lower, "
                 "red: column lower (95 % t-interval excludes 0), grey: not called, blank: not paired", fontsize=7)
    return save(fig, path)


def write_paired(df: pd.DataFrame, out: Path, source: str = "", metric: str = "fid") -> list[Path]:
    """paired.md and paired.csv in `out` where the frame has two groups or more; else nothing."""
    from bench.files.checkpoint import atomic_write

    if df[df["metric"] == metric]["group"].nunique() < 2:
        return []
    pairs, skipped, unchecked = paired_table(df, metric)
    keys = df.attrs.get("group_keys") or [c for c in df.columns if c.startswith(("method.", "data.", "model.", "train.", "eval."))]
    text = paired_markdown(pairs, skipped, unchecked, metric, source, title=", ".join(["method", *[k for k in keys if k != "method"]]))
    csv = pd.concat([pairs, skipped.assign(steps=pd.NA)], ignore_index=True).to_csv(index=False, float_format="%.6g")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(out / "paired.md", lambda fh: fh.write(text.encode())),
               atomic_write(out / "paired.csv", lambda fh: fh.write(csv.encode()))]
    if not pairs.empty:
        names = short_names([*pairs["group_a"], *pairs["group_b"]])
        written += plot_paired_matrix(pairs, out / "paired_matrix.png", names)
    return written


def from_csv(path: Path, out: Path) -> list[Path]:
    """paired.md / paired.csv for a report's metrics.csv (e.g. a committed results/<experiment>/),
    with the commits its rows come from named at the top where the CSV records them."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"No metrics file {path}.")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise BenchError(f"{path} is not a readable CSV ({type(e).__name__}).") from None
    missing = {"group", "seed", "steps", "metric", "value", "run_id"} - set(df.columns)
    if missing:
        raise BenchError(f"{path} is not a `bench report` metrics.csv: it lacks the columns {sorted(missing)}.")
    source = f"From {path.name} ({df['run_id'].nunique()} runs)"
    if "git_commit" in df.columns and df["git_commit"].map(_known).any():
        commits = sorted({str(c)[:7] for c in df["git_commit"] if _known(c)})
        source += f", made on {len(commits)} commit{'s' if len(commits) > 1 else ''}: {', '.join(commits)}"
    else:
        source += "; the CSV does not record the commits its runs were made on"
    written = write_paired(df, out, source + ".")
    if not written:
        raise BenchError(f"{path} has fewer than two groups: nothing to pair.")
    return written
