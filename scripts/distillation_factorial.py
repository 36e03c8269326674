"""The table of scripts/run_distillation_factorial.sh: CFD and RDD per cell (probe, stage optimiser,
final_steps) and seed, each student's FID at its own step count (n = final_steps) and at n = 1, against the
one-commit digits table's rows (results/digits/metrics.csv, 721f3e2) of the same seed and teacher.

    python scripts/distillation_factorial.py STORE [--out results/distillation-factorial]

A cell collapses on a seed when that seed's FID at n = final_steps is beyond 3x the median of the cell's
seeds (issue 37's criterion) or beyond 10x the best student of that method, seed and step count in any cell
(a row whose every seed failed has no healthy median to stand out from). Read from the store; nothing is trained here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = ("default", "collapse", "probe", "optimiser", "steps", "threads")
WHAT = {"collapse": "disjoint probe, profile's optimiser, 1 step (the 721f3e2 setting)",
        "probe": "earlier probe, profile's optimiser, 1 step", "optimiser": "disjoint probe, released optimiser, 1 step",
        "steps": "disjoint probe, profile's optimiser, 4 steps", "default": "disjoint probe, released optimiser, 4 steps (today's default)",
        "threads": "as collapse, on two threads instead of one"}


def cell_of(params: dict, shipped_sha: str) -> str:
    earlier = params.get("classifier.sha256") != shipped_sha
    released = params.get("method.stage_optimiser") == "released"
    fs = int(float(params.get("method.final_steps", 0)))
    threads = int(params.get("train.threads", 1))
    key = (earlier, released, fs, threads)
    return {(False, False, 1, 1): "collapse", (True, False, 1, 1): "probe", (False, True, 1, 1): "optimiser",
            (False, False, 4, 1): "steps", (False, True, 4, 1): "default", (False, False, 1, 2): "threads"}.get(key, f"other {key}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "distillation-factorial")
    a = ap.parse_args()
    os.environ["BENCH_STORE"] = a.store
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(a.store).resolve()}/mlflow.db")
    import pandas as pd

    from bench.classifiers import DigitsProbeClassifier
    from bench.store.tracking import RunStore

    shipped = DigitsProbeClassifier().sha256  # the hash runs record (classifier.sha256) of the shipped probe
    st = RunStore()
    rows, teachers = [], {}
    for r in st.find("distill-factorial", limit=1000):
        m, seed = r.params.get("method"), int(r.params["seed"])
        if m == "flow_matching":
            continue
        fid = {int(p.step): p.value for p in st.history(r.run_id, "fid")}
        teachers[seed] = r.params.get("teacher.ema_sha256", "")
        fs = int(float(r.params["method.final_steps"]))
        rows.append({"method": m, "cell": cell_of(r.params, shipped), "seed": seed, "status": r.status,
                     "final_steps": fs, "fid_own": fid.get(fs, math.nan), "fid_n1": fid.get(1, math.nan),
                     "fid_n4": fid.get(4, math.nan), "git_commit": r.tags.get("git_commit", ""),
                     "teacher_sha256": r.params.get("teacher.ema_sha256", ""), "run_id": r.run_id})
    df = pd.DataFrame(rows)
    old = pd.read_csv(ROOT / "results" / "digits" / "metrics.csv", dtype={"teacher_sha256": str})
    old = old[(old.metric == "fid") & old.method.isin(["cfd", "rdd", "progressive"])]
    old_teacher = old.groupby("seed").teacher_sha256.first().to_dict()
    lines = ["CFD and RDD on digits, one factor at a time from the setting that collapsed on the one-commit table "
             "(721f3e2), each seed on its own flow-matching teacher. FID at the student's own step count "
             "(n = final_steps; n = 1 in brackets for the 4-step students). A seed is marked * when it is beyond 3x its "
             "cell's median or 10x the best student of its step count on that seed (any cell).", ""]
    seeds = sorted(df.seed.unique())
    best = df[df.status == "FINISHED"].groupby(["method", "seed", "final_steps"]).fid_own.min().to_dict()
    for m in ("cfd", "rdd"):
        lines += [f"**{m}**", "", "| cell | setting | " + " | ".join(f"seed {s}" for s in seeds) + " | median | collapsed seeds |",
                  "|---|---|" + "---|" * len(seeds) + "---|---|"]
        for c in CELLS:
            d = df[(df.method == m) & (df.cell == c) & (df.status == "FINISHED")].set_index("seed")
            if d.empty:
                continue
            med = float(np.median(d.fid_own))
            cells, bad = [], []
            for s in seeds:
                if s not in d.index:
                    cells.append("-")
                    continue
                v = d.loc[s]
                flag = v.fid_own > 3 * med or v.fid_own > 10 * best[(m, s, v.final_steps)]
                bad += [str(s)] if flag else []
                extra = f" [{v.fid_n1:.3g}]" if v.final_steps != 1 else ""
                cells.append(f"{v.fid_own:.3g}{extra}{' *' if flag else ''}")
            lines.append(f"| {c} | {WHAT[c]} | " + " | ".join(cells) + f" | {med:.3g} | {', '.join(bad) or 'none'} |")
        o = old[old.method == m].pivot_table(index=["method.final_steps", "seed"], columns="steps", values="value", aggfunc="first")
        lines += ["", f"The one-commit table's {m} rows (721f3e2, profile's optimiser, RDD at temperature 0.95): " + "; ".join(
            f"final_steps {int(fs)} seed {s}: n={int(fs)} {o.loc[(fs, s), int(fs)]:.3g}" for fs, s in o.index), ""]
        for cell, fs in (("default", 4), ("optimiser", 1)):  # new against old, paired by seed (other teachers: see below)
            d = df[(df.method == m) & (df.cell == cell) & (df.status == "FINISHED")].set_index("seed").fid_own
            both = sorted(s for s in d.index if (fs, s) in o.index)
            if len(both) >= 2:
                diff = np.array([d[s] - o.loc[(fs, s), fs] for s in both])
                half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
                lines += [f"{cell} minus the one-commit table's final_steps {fs} row at n = {fs}, paired over seeds "
                          f"{' '.join(map(str, both))}: {diff.mean():+.3g} [{diff.mean() - half:+.3g}, {diff.mean() + half:+.3g}] "
                          f"(per seed {', '.join(f'{v:+.3g}' for v in diff)})", ""]
    def against_old(s) -> str:
        if s not in old_teacher:
            return "(the one-commit table has no distilled row of this seed)"
        return f"{'identical to' if teachers.get(s) == old_teacher[s] else 'NOT the same as'} the one-commit table's"
    lines.append("Teachers: " + "; ".join(f"seed {s} {str(teachers.get(s))[:12]} {against_old(s)}" for s in seeds) + ".")
    lines.append("Commits: " + ", ".join(sorted(set(df.git_commit.str[:7]))) + f". Runs: {len(df)} ({(df.status == 'FINISHED').sum()} finished).")
    text = "\n".join(lines)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "factorial.md").write_text(text + "\n")
    df.to_csv(a.out / "factorial.csv", index=False)


if __name__ == "__main__":
    main()
