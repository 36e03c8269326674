"""A leaderboard per number of sampling steps: groups ranked by mean FID, each with its 95 % interval,
its seeds and the groups it cannot be told apart from after a multiple-comparison correction.

Every two groups evaluated at n are compared once: by a paired t-test on the per-seed differences
where their runs pair (bench.report.paired.pairing: shared seeds, evaluation noise and, where either
distils, teacher), else by Welch's t-test on their runs; a group with a single run cannot be tested
and ties with everything. The p-values of one n are corrected together (Holm by default, which holds
the family-wise error at 5 %; Benjamini-Hochberg holds the false-discovery rate instead), by
statsmodels' multipletests. Ties are shown as a compact letter display: two groups that share a letter
cannot be told apart (Piepho's insert-and-absorb; letters run from the best group down)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.errors import BenchError
from bench.report.paired import pairing, sort_key, t_interval, ttest_p

ALPHA = 0.05  # family-wise (Holm) or false-discovery (BH) level of one n's comparisons
CORRECTIONS = {"holm": ("holm", "Holm"), "bh": ("fdr_bh", "Benjamini-Hochberg")}  # --correction -> (statsmodels, name)


def adjust(pvalues, correction: str = "holm") -> list[float]:
    """Corrected p-values (statsmodels.stats.multitest.multipletests) in the order given."""
    from statsmodels.stats.multitest import multipletests

    if correction not in CORRECTIONS:
        raise BenchError(f"--correction must be {' or '.join(CORRECTIONS)}, got {correction!r}.")
    p = [float(x) for x in pvalues]
    if not p:
        return []
    return [float(x) for x in multipletests(p, alpha=ALPHA, method=CORRECTIONS[correction][0])[1]]


def comparisons(df: pd.DataFrame, correction: str = "holm", metric: str = "fid") -> pd.DataFrame:
    """One row per (steps, group_a, group_b): test (paired | welch | none), seeds used, mean difference
    A - B, p, p corrected within its n, and whether the two differ after the correction."""
    values, decisions, _ = pairing(df, metric)
    rows = []
    for n in sorted(values["steps"].unique()):
        at = values[values["steps"] == n]
        by_group = {g: s.set_index("seed")["value"] for g, s in at.groupby("group")}
        per_run = {g: s["value"] for g, s in df[(df["metric"] == metric) & (df["steps"] == n)].groupby("group")}
        for (a, b), (seeds, why) in decisions.items():
            if a not in by_group or b not in by_group:
                continue
            xa, xb = by_group[a], by_group[b]
            common = [s for s in seeds if s in xa.index and s in xb.index]
            row = {"steps": int(n), "group_a": a, "group_b": b, "diff_mean": float(per_run[a].mean() - per_run[b].mean())}
            if not why and len(common) >= 2:
                d = xa[common] - xb[common]
                row.update(test="paired", seeds=" ".join(map(str, common)), diff_mean=float(d.mean()), p=ttest_p(d))
            elif len(per_run[a]) >= 2 and len(per_run[b]) >= 2:
                row.update(test="welch", seeds="", p=ttest_p(per_run[a], per_run[b]), why_unpaired=why)
            else:
                row.update(test="none", seeds="", p=math.nan, why_unpaired=why or "paired on fewer than two seeds")
            rows.append(row)
    out = pd.DataFrame(rows, columns=["steps", "group_a", "group_b", "test", "seeds", "diff_mean", "p", "why_unpaired"])
    out["p_adjusted"] = math.nan
    for n, idx in out[out["test"] != "none"].groupby("steps").groups.items():
        out.loc[idx, "p_adjusted"] = adjust(out.loc[idx, "p"], correction)
    out["differs"] = out["p_adjusted"] < ALPHA
    out["correction"] = CORRECTIONS[correction][1]
    return out


def letters(order: list[str], differs: set[frozenset]) -> dict[str, str]:
    """Compact letter display: group -> letters, two groups sharing a letter exactly when they are not
    in `differs` (pairs that differ). order: best first; letters are assigned in that order."""
    columns = [set(order)]
    for pair in sorted(differs, key=lambda p: sorted(order.index(g) for g in p)):
        i, j = tuple(pair)
        new = []
        for col in columns:
            if i in col and j in col:  # insert: split the column so i and j share it no more
                new += [col - {i}, col - {j}]
            else:
                new.append(col)
        columns = [c for c in new if not any(c < other for other in new)]  # absorb columns inside others
        columns = [c for k, c in enumerate(columns) if c not in columns[:k]]
    columns.sort(key=lambda c: (min(order.index(g) for g in c), sorted(order.index(g) for g in c)))
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = {g: "" for g in order}
    for k, col in enumerate(columns):
        for g in col:
            out[g] += alphabet[k] if k < len(alphabet) else f"[{k}]"
    return {g: "".join(sorted(v, key=lambda c: alphabet.find(c))) for g, v in out.items()}


@dataclass
class Leaderboard:
    """board: one row per (steps, rank) with group, mean, ci95 (half-width of the 95 % t-interval),
    runs, seeds, letters and ties (the ranks of the groups it cannot be told apart from).
    tests: comparisons(). correction: the correction's name."""

    board: pd.DataFrame
    tests: pd.DataFrame
    correction: str


def leaderboard(df: pd.DataFrame, correction: str = "holm", metric: str = "fid") -> Leaderboard:
    tests = comparisons(df, correction, metric)
    d = df[df["metric"] == metric]
    rows = []
    for n in sorted(d["steps"].unique()):
        at = d[d["steps"] == n]
        stats = {g: (t_interval(s["value"]), sorted(s["seed"].unique()), s["run_id"].nunique()) for g, s in at.groupby("group")}
        order = sorted(stats, key=lambda g: (stats[g][0][0], sort_key(g)))
        t = tests[tests["steps"] == n]
        differs = {frozenset((r.group_a, r.group_b)) for r in t.itertuples() if r.differs}
        letter = letters(order, differs)
        for rank, g in enumerate(order, 1):
            (mean, half, _), seeds, runs = stats[g]
            ties = [order.index(h) + 1 for h in order if h != g and frozenset((g, h)) not in differs]
            rows.append({"steps": int(n), "rank": rank, "group": g, "mean": mean, "ci95": half, "runs": runs,
                         "seeds": " ".join(map(str, seeds)), "letters": letter[g], "ties": " ".join(map(str, ties))})
    return Leaderboard(pd.DataFrame(rows), tests, CORRECTIONS[correction][1])


def page_steps(steps) -> list[int]:
    """The n a page shows: 1, 2, 4 and M (the largest n evaluated)."""
    have = sorted({int(s) for s in steps})
    return [n for n in (1, 2, 4) if n in have and n < have[-1]] + have[-1:]


def _interval(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "n/a"
    from bench.report.tables import plain

    if math.isnan(half):
        return f"{plain(mean, 3)} (one run)"
    return f"{plain(mean, 3)} [{plain(mean - half, 3)}, {plain(mean + half, 3)}]"


def ties_text(ties: str, rank: int, groups: int) -> str:
    """'all', 'all but 6, 12' or the ranks themselves, whichever is shorter to read."""
    tied = [int(t) for t in str(ties).split()] if str(ties).strip() not in ("", "nan") else []
    if not tied:
        return "-"
    others = [k for k in range(1, groups + 1) if k != rank]
    if len(tied) == len(others):
        return "all"
    if len(tied) > len(others) / 2:
        return "all but " + ", ".join(str(k) for k in others if k not in tied)
    return ", ".join(map(str, tied))


def describe_tests(t: pd.DataFrame) -> str:
    k = t["test"].value_counts()
    parts = [f"{k.get('paired', 0)} paired t-tests", f"{k.get('welch', 0)} Welch's t-tests"]
    if k.get("none", 0):
        parts.append(f"{k['none']} pairs not testable (a single run)")
    return ", ".join(parts)


def markdown(lb: Leaderboard, steps: list[int] | None = None, source: str = "") -> str:
    """The leaderboards at `steps` (default: page_steps) as markdown, with the tests and correction named."""
    board = lb.board
    steps = steps or page_steps(board["steps"])
    M = int(board["steps"].max())
    out = ["# Leaderboard: FID per number of sampling steps", ""]
    if source:
        out += [source, ""]
    out += [f"Rank by mean FID (lower is better). Interval: the 95 % Student-t interval over the group's runs. "
            f"Two groups sharing a letter cannot be told apart: every two groups at one n are compared by a paired "
            f"t-test on the per-seed differences where their runs pair (same seeds, evaluation noise and teacher), "
            f"else by Welch's t-test, and the p-values of one n are corrected together by **{lb.correction}** "
            f"({'family-wise error' if lb.correction == 'Holm' else 'false-discovery rate'} at {ALPHA:.0%}, "
            "statsmodels). \"Ties with\" lists the ranks of those groups. Every n: leaderboard.csv; every test: "
            "comparisons.csv.", ""]
    for n in steps:
        b = board[board["steps"] == n]
        t = lb.tests[lb.tests["steps"] == n]
        title = f"n = {n}" + (" (M)" if n == M else "")
        out += [f"## {title}", "", f"{len(b)} groups; {describe_tests(t)}; {int(t['differs'].sum())} of "
                f"{int((t['test'] != 'none').sum())} differ after {lb.correction}.", "",
                "| rank | variant | FID, mean [95 % interval] | seeds | letters | ties with |", "|---|---|---|---|---|---|"]
        for r in b.itertuples():
            seeds = r.seeds + (f" ({r.runs} runs)" if r.runs > len(r.seeds.split()) else "")
            out.append(f"| {r.rank} | {r.group} | {_interval(r.mean, r.ci95)} | {seeds} | {r.letters} | {ties_text(r.ties, r.rank, len(b))} |")
        out.append("")
    return "\n".join(out)


def write_leaderboard(df: pd.DataFrame, out, correction: str = "holm", source: str = "") -> tuple[list, Leaderboard | None]:
    """leaderboard.md (n = 1, 2, 4, M), leaderboard.csv (every n) and comparisons.csv in `out`."""
    from pathlib import Path

    from bench.files.checkpoint import atomic_write

    if df[df["metric"] == "fid"]["group"].nunique() < 1:
        return [], None
    lb = leaderboard(df, correction)
    out = Path(out)
    text = markdown(lb, source=source)
    board = lb.board.to_csv(index=False, float_format="%.6g")
    tests = lb.tests.to_csv(index=False, float_format="%.6g")
    written = [atomic_write(out / "leaderboard.md", lambda fh: fh.write(text.encode())),
               atomic_write(out / "leaderboard.csv", lambda fh: fh.write(board.encode())),
               atomic_write(out / "comparisons.csv", lambda fh: fh.write(tests.encode()))]
    return written, lb
