"""Tables of scripts/profile_default_run.sh: each run's phases.json (bench.phases) side by side, before and
after, and each after-run's wall time against what its parts should cost: train.steps x `bench speed`'s
step time + the evaluator's own estimate (the run's tag eval.estimate_seconds).

    python scripts/profile_default_run.py RUNS_TXT SPEED_TXT OUT_DIR --before REV --after REV

RUNS_TXT: lines "side method round wall_ms store_dir" as the shell script writes them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import pandas as pd

from bench.store.tracking import RunStore

# phases shown one by one; the rest are summed under the group their name starts with
GROUPS = {"sampling/": "sampling (every n)", "features/": "features (every n)"}


def step_times(speed_txt: str) -> dict[str, float]:
    """method -> ms per training step, from `bench speed`'s training table."""
    out, in_table = {}, False
    for line in speed_txt.splitlines():
        if line.startswith("method") and "ms/step" in line and "ratio" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+([\d.]+)\s", line)
            if not m:
                break
            out[m.group(1)] = float(m.group(2))
    return out


def load_run(store: Path, method: str) -> tuple[list[dict], dict[str, str], dict[str, str], dict[int, float]]:
    """(phases rows, tags, params, FID per n) of the store's latest run of `method` in experiment digits."""
    rs = RunStore(f"sqlite:///{store / 'mlflow.db'}")
    runs = [r for r in rs.find("digits", tags={"method": method}, newest_first=True) if not r.tags.get("mlflow.parentRunId")]
    run = runs[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = json.loads(rs.fetch_artifact(run, "phases.json", tmp).read_text())
    return rows, run.tags, run.params, {p.step: p.value for p in rs.history(run.run_id, "fid")}


def grouped(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for r in rows:
        name = next((g for p, g in GROUPS.items() if r["phase"].startswith(p)), r["phase"])
        out[name] += r["seconds"]
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("speed", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    speed = step_times(a.speed.read_text())
    phase_rows, run_rows = [], []
    for line in a.runs.read_text().split("\n"):
        if not line.strip():
            continue
        side, method, rnd, wall_ms, store = line.split()
        rows, tags, params, fid = load_run(Path(store), method)
        rev = a.before if side == "before" else a.after
        for r in rows:
            phase_rows.append({"side": side, "commit": rev, "method": method, "round": int(rnd), **r})
        steps = int(params["train.steps"])
        estimate = float(tags["eval.estimate_seconds"]) if "eval.estimate_seconds" in tags else None
        predicted = steps * speed[method] / 1000 + estimate if (estimate is not None and method in speed) else None
        run_rows.append({"side": side, "commit": rev, "method": method, "round": int(rnd), "wall_s": int(wall_ms) / 1000,
                         "train_steps": steps, "bench_speed_ms_per_step": speed.get(method),
                         "eval_estimate_s": estimate, "predicted_s": predicted,
                         "wall_over_predicted": int(wall_ms) / 1000 / predicted if predicted else None,
                         "fid_by_n": json.dumps(fid)})
    phases, runs = pd.DataFrame(phase_rows), pd.DataFrame(run_rows)
    phases.to_csv(a.out / "phases.csv", index=False)
    runs.to_csv(a.out / "runs.csv", index=False)

    lines = [f"# A default digits run, phase by phase: {a.before} (before) and {a.after} (after)", "",
             "Seconds per phase (`bench.phases`: each second counted once; `startup` is the interpreter and the",
             "imports, `other` what no phase claimed), medians over rounds; made by",
             f"`scripts/profile_default_run.sh {a.before} {a.out}`.", ""]
    for method in ("flow_matching", "shortcut"):
        cols = {}
        for side in ("before", "after"):
            sub = phases[(phases.method == method) & (phases.side == side)]
            per_round = [grouped(g.to_dict("records")) for _, g in sub.groupby("round")]
            cols[side] = {k: statistics.median(r.get(k, 0.0) for r in per_round) for k in per_round[0]} if per_round else {}
        names = list(dict.fromkeys([*cols["before"], *cols["after"]]))
        names = [n for n in names if n not in ("other", "total")] + ["other", "total"]
        lines += [f"## {method}", "", "| phase | before s | after s | after / before |", "|---|---|---|---|"]
        for n in names:
            b, f = cols["before"].get(n), cols["after"].get(n)
            if max(b or 0.0, f or 0.0) < 0.01 and n not in ("other", "total"):
                continue  # the per-sample metrics (nfe, clipped_share, ...): microseconds
            ratio = f"{f / b:.2f}" if (b and f is not None and b > 0.05) else ""
            fmt = lambda v: "" if v is None else f"{v:.2f}"
            lines.append(f"| {n} | {fmt(b)} | {fmt(f)} | {ratio} |")
        lines.append("")
    lines += ["## Wall time", "", "| method | side | round | wall s | steps x bench speed + estimate s | wall / that |",
              "|---|---|---|---|---|---|"]
    for r in run_rows:
        pred = f"{r['predicted_s']:.1f}" if r["predicted_s"] else ""
        ratio = f"{r['wall_over_predicted']:.3f}" if r["wall_over_predicted"] else ""
        lines.append(f"| {r['method']} | {r['side']} | {r['round']} | {r['wall_s']:.1f} | {pred} | {ratio} |")
    lines.append("")
    for method in ("flow_matching", "shortcut"):
        b = runs[(runs.method == method) & (runs.side == "before")].wall_s.tolist()
        f = runs[(runs.method == method) & (runs.side == "after")].wall_s.tolist()
        if b and f:
            ratios = [x / y for x, y in zip(f, b)]
            lines.append(f"- {method}: after / before wall time {statistics.median(ratios):.3f} "
                         f"(median of {len(ratios)} interleaved pair{'s' if len(ratios) > 1 else ''})")
    for method in ("flow_matching", "shortcut"):  # the same seed and config: the same numbers
        pairs = runs[runs.method == method]
        b, f = pairs[pairs.side == "before"].fid_by_n.tolist(), pairs[pairs.side == "after"].fid_by_n.tolist()
        for x, y in zip(b, f):
            x, y = json.loads(x), json.loads(y)
            rel = max(abs(x[n] - y[n]) / abs(x[n]) for n in x) if x.keys() == y.keys() else float("nan")
            lines.append(f"- {method}: FID at n = {', '.join(x)} before {', '.join(f'{v:.6g}' for v in x.values())}; "
                         f"after, largest relative difference {rel:.1e}")
    sc, fm = speed.get("shortcut"), speed.get("flow_matching")
    if sc and fm:
        lines.append(f"- bench speed: flow matching {fm:.1f} ms, shortcut {sc:.1f} ms per step (`speed.txt`)")
    (a.out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {a.out / 'profile.md'}, phases.csv, runs.csv")


if __name__ == "__main__":
    main()
