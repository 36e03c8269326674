"""Issue 35's evidence from the runs scripts/run_signal_evidence.sh logged (one tracking store):

  rule     the failure rule (bench.evaluation.levels.FailureRule) replayed on every run's logged losses:
           its confusion table against the positive controls (the paper recipe on the digits DiT, forced
           divergences) and the healthy runs (the profile's shortcut seeds 0-4, smoke seeds 0-4)
  rank     Spearman correlation (95 % bootstrap interval over runs) between each candidate early signal
           at 10, 20 and 40 % of training and the final FID at n = 1 and 4, over the k x M grid
  asha     the grid's trials replayed through Ray Tune's own ASHAScheduler (a Tune function trainable
           that reports each trial's logged signal step by step): the configuration it keeps against the
           full grid's winner, and the training steps it spends against the grid's
  simulate the grid's trials through Ray Tune's ASHAScheduler itself (its on_trial_result), `--concurrent` at a
           time in Tune's trial order (the sweep's: configuration by configuration, or seed by seed), each at
           the same pace per training step, reporting its logged metric at every log point as a live trial does:
           the live sweep's stops reproduced (a check of the simulation), then other orders and rungs
  live     a sweep that ran (bench run --sweep kM_asha -e EXPERIMENT, in the same store) against the grid:
           each trial's outcome and steps, the configuration it picks, compute and wall time against the grid's

    python scripts/sweep_signal_evidence.py STORE {rule,rank,asha,live} [--out results/sweep-signals]
        [--experiment sweep-kM-asha] [--wall SECONDS]   (live: the sweep's experiment, the command's wall time)

Every figure is read from the store; nothing is trained here.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class LoggedRun:
    run_id: str
    experiment: str
    params: dict
    status: str
    tags: dict
    final: dict[int, float]  # n -> final FID
    seconds: float = math.nan  # the run's wall time (start to end, as the store records them)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]

    @property
    def role(self) -> str:
        """What the run is in the evidence: paper | forced | profile | smoke | grid (its params decide)."""
        p = self.params
        if p.get("profile") == "smoke":
            return "smoke"
        if p.get("train.lr") not in (None, "0.002") or p.get("method.bootstrap_ema") == "False":
            return "forced"
        if p.get("method.levels") == "uniform" and float(p.get("method.bootstrap_weight", 0)) == 1.0:
            return "paper"
        if p.get("method.k") == "0.25" and p.get("method.M") == "32":
            return "profile"
        return "grid"

    @property
    def seed(self) -> int:
        return int(self.params["seed"])

    @property
    def steps(self) -> int:
        return int(self.params["train.steps"])

    def config(self) -> tuple[float, int]:
        return float(self.params["method.k"]), int(self.params["method.M"])

    def label(self) -> str:
        k, M = self.config()
        extra = {"paper": " paper recipe", "forced": " forced: " + (
            f"lr {self.params['train.lr']}, clip {self.params.get('method.clip')}" if self.params.get("train.lr") != "0.002"
            else f"live-weight targets, lr {self.params['train.lr']}")}.get(self.role, "")
        return f"{self.params['method']} {self.params['profile']} k={k:g} M={M} seed {self.seed}{extra}"

    def at(self, metric: str, step: int) -> float:
        for s, v in self.series.get(metric, []):
            if s == step:
                return v
        return math.nan


def level_ratio_series(run: LoggedRun, points: int = 5) -> list[tuple[int, float]]:
    """train/level_ratio as bench.train.run logs it (bench.evaluation.levels.LevelWindows), fed the run's
    logged train/loss_<group> and train/target2_<group> log point by log point."""
    from bench.evaluation.levels import LevelWindows
    from methods.base import LossLadder

    levels = sorted(k[len("train/loss_"):] for k in run.series if k.startswith("train/loss_sc_level_"))
    if not levels:
        return []
    w = LevelWindows(LossLadder(tuple(levels) + ("flow",), tuple(levels) + ("flow",), "flow"), points)
    by_step: dict[int, dict[str, float]] = {}
    for g in levels:
        for key in (f"train/loss_{g}", f"train/target2_{g}"):
            for step, v in run.series.get(key, []):
                by_step.setdefault(step, {})[key] = v
    out = []
    for step in sorted(by_step):
        if w.add(by_step[step]):
            out.append((step, w.mean_ratio()))
    return out


def load(store: str, experiments=("evidence-digits", "evidence-smoke")) -> list[LoggedRun]:
    os.environ["BENCH_STORE"] = store
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(store).resolve()}/mlflow.db")
    from bench.store.tracking import RunStore

    s = RunStore()
    out = []
    for name in experiments:
        for r in s.find(name, limit=1000):
            if r.status not in ("FINISHED", "FAILED"):
                continue
            run = LoggedRun(r.run_id, name, dict(r.params), r.status, dict(r.tags),
                            {int(m.step): m.value for m in s.history(r.run_id, "fid")},
                            seconds=(r.end_time - r.start_time) / 1000 if r.end_time else math.nan)
            for key in r.metrics:
                if key.startswith(("train/loss", "train/target2_", "train/level_ratio", "during/")):
                    run.series[key] = sorted((int(m.step), m.value) for m in s.history(r.run_id, key))
            if "train/level_ratio" not in run.series:  # runs from before bench logged it: the same computation
                run.series["train/level_ratio"] = level_ratio_series(run)
            out.append(run)
    return sorted(out, key=lambda r: (r.experiment, r.role, r.config(), r.seed))


def replay_rule(run: LoggedRun, **kw):
    """FailureRule fed the run's logged train/* means in the order of their steps, as a live run feeds it."""
    from bench.evaluation.levels import FailureRule
    from methods.shortcut import Shortcut, ShortcutOptions

    from bench.config import resolve

    ladder = Shortcut(ShortcutOptions(M=int(run.params["method.M"])), num_classes=0).loss_ladder()
    tc = resolve("shortcut", run.params["profile"], []).train  # the rule as the profile sets it today
    kw = {"growth": tc.failure_growth, "ceiling": tc.failure_ceiling, **kw}
    rule = FailureRule(ladder, tc.divergence_points, **kw)
    steps = sorted({s for k, v in run.series.items() if k.startswith("train/") for s, _ in v})
    by_key = {k: dict(v) for k, v in run.series.items() if k.startswith("train/")}
    for s in steps:
        fired = rule.update({k: v[s] for k, v in by_key.items() if s in v}, s)
        if fired:
            return rule, s
    return rule, None


def cmd_rule(runs: list[LoggedRun], out: Path) -> str:
    rows, lines = [], []
    # a forced run is a positive control only when it did fail: 1-step FID beyond 3x the profile's median
    profile_median = float(np.median([r.final[1] for r in runs if r.role == "profile" and 1 in r.final] or [math.nan]))
    for r in runs:
        if r.role not in ("paper", "forced", "profile", "smoke"):
            continue
        failing = r.role == "paper" or (r.role == "forced" and not r.final.get(1, math.inf) <= 3 * profile_median)
        nonfinite = r.tags.get("failure.reason") == "nonfinite"
        rule, step = replay_rule(r)
        flagged = step is not None or nonfinite
        when = (f"non-finite at {r.tags.get('failure.step')}" if nonfinite and step is None
                else f"step {step} ({step / r.steps:.0%})" if step is not None else "-")
        rows.append({"run": r.label(), "role": r.role + ("" if failing or r.role != "forced" else " (did not fail)"), "failing": failing, "flagged": flagged, "when": when,
                     "fid_n1": r.final.get(1, math.nan), "reason": rule.reason() if step is not None else ""})
    tp = sum(x["failing"] and x["flagged"] for x in rows)
    fn = sum(x["failing"] and not x["flagged"] for x in rows)
    fp = sum(not x["failing"] and x["flagged"] for x in rows)
    tn = sum(not x["failing"] and not x["flagged"] for x in rows)
    lines.append("| | flagged | not flagged |\n|---|---|---|")
    lines.append(f"| failing (paper recipe; forced runs that failed) | {tp} | {fn} |")
    lines.append(f"| healthy (profile's shortcut, smoke; forced runs that did not fail) | {fp} | {tn} |")
    lines.append(f"\nA forced run counts as failing when its final 1-step FID exceeds 3x the profile's median "
                 f"({profile_median:.3g}); the rule as each profile sets it today (digits: ceiling on the d = 1 level; "
                 f"smoke: growth only), replayed on the logged train/* means.")
    lines.append("\n| run | role | final FID n=1 | flagged | when | reason |\n|---|---|---|---|---|---|")
    for x in rows:
        lines.append(f"| {x['run']} | {x['role']} | {x['fid_n1']:.4g} | {'yes' if x['flagged'] else 'no'} | {x['when']} | {x['reason']} |")
    grid = [r for r in runs if r.role == "grid"]
    if grid:
        lines.append("\nThe same rule on the k x M grid's other runs (not controls: what it says about them):\n")
        lines.append("| run | final FID n=1 | flagged | when |\n|---|---|---|---|")
        for r in grid:
            _, step = replay_rule(r)
            lines.append(f"| {r.label()} | {r.final.get(1, math.nan):.4g} | {'yes' if step else 'no'} | "
                         f"{f'step {step} ({step / r.steps:.0%})' if step else '-'} |")
    _write_csv(out / "failure_rule.csv", rows)
    return "\n".join(lines)


SIGNALS = {
    "during FID n=1": lambda r, s: r.at("during/fid_n1", s),
    "during FID n=4": lambda r, s: r.at("during/fid_n4", s),
    "paired_to_2n n=1": lambda r, s: r.at("during/paired_to_2n_n1", s),
    "paired_to_2n n=2": lambda r, s: r.at("during/paired_to_2n_n2", s),
    "level d=1 loss / target2": lambda r, s: _norm(r, "sc_level_0", s),
    "mean level loss / target2": lambda r, s: float(np.nanmean([_norm(r, g, s) for g in _levels(r)])),
    "train/level_ratio (as logged)": lambda r, s: r.at("train/level_ratio", s),
    "level d=1 loss (raw)": lambda r, s: _mean_near(r, "train/loss_sc_level_0", s),
    "flow loss (raw)": lambda r, s: _mean_near(r, "train/loss_flow", s),
}


def _levels(r: LoggedRun) -> list[str]:
    return [k[len("train/loss_"):] for k in r.series if k.startswith("train/loss_sc_level_")]


def _mean_near(r: LoggedRun, key: str, step: int, span: int = 250) -> float:
    """The mean of the logged points in (step - span, step]: log-point noise averaged, as a scheduler would."""
    v = [x for s, x in r.series.get(key, []) if step - span < s <= step and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _norm(r: LoggedRun, group: str, step: int) -> float:
    lo, t2 = _mean_near(r, f"train/loss_{group}", step), _mean_near(r, f"train/target2_{group}", step)
    return lo / t2 if t2 > 0 else math.nan


def spearman_ci(x, y, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rho = spearmanr(x, y).statistic
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(rho), float(lo), float(hi)


def grid_runs(runs: list[LoggedRun], seeds=(0, 1, 2)) -> list[LoggedRun]:
    return [r for r in runs if r.experiment == "evidence-digits" and r.role in ("grid", "profile")
            and r.seed in seeds and r.status == "FINISHED"]


def cmd_rank(runs: list[LoggedRun], out: Path) -> str:
    grid = grid_runs(runs)
    configs = sorted({r.config() for r in grid})
    lines = [f"{len(grid)} runs: {len(configs)} configurations (k, M) x seeds "
             f"{sorted({r.seed for r in grid})}; Spearman rho of the signal (lower = better) against the final FID, "
             "95 % bootstrap interval over runs (2,000 resamples)\n",
             "| signal | at | vs final FID n=1 | vs final FID n=4 |", "|---|---|---|---|"]
    rows = []
    for name, fn in SIGNALS.items():
        for share in (0.1, 0.2, 0.4):
            cells = []
            for n in (1, 4):
                xs = [fn(r, int(round(share * r.steps))) for r in grid]
                ys = [r.final.get(n, math.nan) for r in grid]
                rho, lo, hi = spearman_ci(xs, ys)
                cells.append(f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]")
                rows.append({"signal": name, "share": share, "n": n, "rho": rho, "lo": lo, "hi": hi,
                             "runs": int(np.sum(np.isfinite(xs) & np.isfinite(ys)))})
            lines.append(f"| {name} | {share:.0%} | {cells[0]} | {cells[1]} |")
    lines.append("\nFinal FID per configuration (mean over seeds):\n\n| k | M | n=1 | n=4 | seeds |\n|---|---|---|---|---|")
    for k, M in configs:
        rs = [r for r in grid if r.config() == (k, M)]
        lines.append(f"| {k:g} | {M} | {np.mean([r.final[1] for r in rs]):.2f} | {np.mean([r.final[4] for r in rs]):.2f} | {len(rs)} |")
    _write_csv(out / "signal_ranking.csv", rows)
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("what", choices=["rule", "rank", "asha", "simulate", "live"])
    ap.add_argument("--concurrent", type=int, default=2, help="simulate: trials at once")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "sweep-signals")
    ap.add_argument("--metric", default="during/fid_n1")
    ap.add_argument("--orders", type=int, default=5, help="asha: random orders of the trials")
    ap.add_argument("--grace", type=int, default=1000, help="asha: grace_period in training steps")
    ap.add_argument("--reduction", type=int, default=2, help="asha: reduction_factor")
    ap.add_argument("--experiment", default="sweep-kM-asha", help="live: the sweep's experiment")
    ap.add_argument("--wall", type=float, default=math.nan, help="live: the sweep command's wall time in seconds")
    a = ap.parse_args()
    runs = load(a.store)
    if a.what == "asha":
        text = cmd_asha(runs, a.out, a.metric, a.orders, a.grace, a.reduction)
    elif a.what == "simulate":
        text = cmd_simulate(runs, a.metric, a.grace, a.reduction, a.concurrent, a.experiment)
    elif a.what == "live":
        text = cmd_live(runs, a.store, a.experiment, a.wall, a.out)
    else:
        text = {"rule": cmd_rule, "rank": cmd_rank}[a.what](runs, a.out)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    name = {"rule": "failure_rule.md", "rank": "signal_ranking.md", "asha": "asha_vs_grid.md", "live": "sweep_vs_grid.md",
            "simulate": "asha_simulated.md"}[a.what]
    (a.out / name).write_text(text + "\n")


def _paired(diff: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t interval of paired differences."""
    from scipy import stats

    m = float(np.mean(diff))
    return m, float(stats.t.ppf(0.975, len(diff) - 1) * np.std(diff, ddof=1) / np.sqrt(len(diff)))


def cmd_live(runs: list[LoggedRun], store: str, experiment: str, wall: float, out: Path) -> str:
    """The sweep's child runs (tags sweep.role = trial) against the grid's runs of the same (k, M, seed)."""
    from bench.store.tracking import RunStore

    grid = grid_runs(runs)
    by_key = {(r.config(), r.seed): r for r in grid}
    configs = sorted({r.config() for r in grid})
    steps = grid[0].steps
    gmean = {c: float(np.mean([by_key[(c, s)].final[1] for s in (0, 1, 2)])) for c in configs}
    gmedian = {c: float(np.median([by_key[(c, s)].final[1] for s in (0, 1, 2)])) for c in configs}
    winner = min(gmean, key=gmean.get)
    st = RunStore()
    rows, spent, fin = [], 0, {}
    trials = st.find(experiment, tags={"sweep.role": "trial"}, limit=1000)
    for r in sorted(trials, key=lambda r: (float(r.params["method.k"]), int(r.params["method.M"]), int(r.params["seed"]))):
        c, seed = (float(r.params["method.k"]), int(r.params["method.M"])), int(r.params["seed"])
        outcome = r.tags.get("sweep.outcome", r.status.lower())
        at = {"finished": steps, "stopped": r.tags.get("sweep.stopped_at_step"), "failed": r.tags.get("failure.step")}.get(outcome)
        at = int(at) if at not in (None, "") else max((m.step for m in st.history(r.run_id, "train/loss")), default=0)
        spent += at
        f1 = {int(m.step): m.value for m in st.history(r.run_id, "fid")}.get(1, math.nan)
        g = by_key.get((c, seed))
        same = "" if g is None or not math.isfinite(f1) else ("yes" if f1 == g.final[1] else f"no ({g.final[1]:.4g})")
        if outcome == "finished":
            fin.setdefault(c, {})[seed] = f1
        lr = {int(m.step): m.value for m in st.history(r.run_id, "train/level_ratio")}
        rows.append({"k": c[0], "M": c[1], "seed": seed, "outcome": outcome, "steps": at, "level_ratio_at_250": lr.get(250, math.nan),
                     "final_fid_n1": f1, "grid_final_fid_n1": g.final[1] if g else math.nan})
        reason = r.tags.get("failure.reason", "")
        lines_row = (f"| {c[0]:g} | {c[1]} | {seed} | {outcome}{' (' + reason + ')' if reason else ''} | {at:,} | "
                     f"{lr.get(250, math.nan):.4g} | {f1:.4g} | {g.final[1] if g else math.nan:.4g} | {same} |")
        rows[-1]["line"] = lines_row
    grid_steps = len(grid) * steps
    picked = min(fin, key=lambda c: np.mean(list(fin[c].values()))) if fin else None
    grid_wall = sum(r.seconds for r in grid) / 2  # the grid's runs ran two at a time, one thread each
    lines = [f"Sweep `{experiment}` ({len(trials)} trials) against the grid of the same (k, M, seed) runs ({len(grid)} runs, "
             f"{steps:,} steps each, {grid_steps:,} in all). Grid winner by mean final FID at n = 1: k={winner[0]:g} M={winner[1]} "
             f"({gmean[winner]:.2f}; by the median of its seeds: {gmedian[winner]:.2f}).", "",
             "| k | M | seed | outcome | steps trained | train/level_ratio at 250 | final FID n=1 | the grid run's | identical |",
             "|---|---|---|---|---|---|---|---|---|"] + [r["line"] for r in rows]
    lines += ["", f"Training compute: {spent:,} steps, {spent / grid_steps:.2f} of the grid's {grid_steps:,}."]
    if picked is not None:
        diff = [by_key[(picked, s)].final[1] - by_key[(winner, s)].final[1] for s in (0, 1, 2)]
        m, h = _paired(diff) if picked != winner else (0.0, 0.0)
        verdict = "the same configuration" if picked == winner else (
            "within the winner's paired interval" if m - h <= 0 <= m + h else "worse than the winner")
        lines.append(f"Picked (best mean final FID n=1 over its finished seeds): k={picked[0]:g} M={picked[1]} "
                     f"({np.mean(list(fin[picked].values())):.2f} over seeds {sorted(fin[picked])}); on the grid's runs, picked - winner "
                     f"paired over seeds 0-2: {m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]: {verdict}.")
        lines.append("Grid, every configuration (mean / median of seeds 0-2, final FID n=1): " + "; ".join(
            f"k={c[0]:g} M={c[1]} {gmean[c]:.2f} / {gmedian[c]:.2f}" for c in configs))
    lines.append(f"Wall time: the sweep {wall / 60:.1f} min (two trials at once, one thread each); the grid's runs "
                 f"{grid_wall / 60:.1f} min at two at a time (their summed durations / 2), ratio {wall / grid_wall:.2f}. "
                 "One shared 2-core machine, one measurement each: a ratio, not a speed.")
    _write_csv(out / "sweep_vs_grid.csv", [{k: v for k, v in r.items() if k != "line"} for r in rows])
    return "\n".join(lines)


class _SimTrial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def simulate_asha(trials: list[tuple[str, list[tuple[int, float]]]], steps: int, grace: int,
                  reduction: int, concurrent: int) -> dict[str, int]:
    """Run Ray Tune's own ASHAScheduler (its on_trial_add / on_trial_result) over `trials` [(id, [(step, value)])],
    in that order, `concurrent` at a time, every trial at one pace (a log point per 50 steps, the slots in
    lockstep, ties in slot order); a stopped or finished trial's slot takes the next trial. Returns id -> steps
    trained. A finished trial's final report (step = train.steps) is past the last rung, as live."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    sched = ASHAScheduler(time_attr="step", metric="score", mode="min", grace_period=grace, reduction_factor=reduction,
                          max_t=steps)
    queue = list(trials)
    running: list[tuple[float, int, _SimTrial, list]] = []  # (clock at its next report, slot, trial, remaining points)
    out: dict[str, int] = {}
    clock, slot = 0.0, 0

    def start(at: float, slot: int) -> None:
        tid, pts = queue.pop(0)
        t = _SimTrial(tid)
        sched.on_trial_add(None, t)
        pts = [(s, v) for s, v in pts if s < steps]  # the last step goes with the final report
        running.append((at + pts[0][0] if pts else at + steps, slot, t, pts, at))

    for slot in range(min(concurrent, len(queue))):
        start(0.0, slot)
    while running:
        running.sort(key=lambda r: (r[0], r[1]))
        clock, slot, t, pts, began = running.pop(0)
        if not pts:  # trained to the end
            out[t.trial_id] = steps
            if queue:
                start(clock, slot)
            continue
        step, value = pts[0]
        action = sched.on_trial_result(None, t, {"step": step, "score": value}) if math.isfinite(value) else TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP:
            out[t.trial_id] = step
            sched.on_trial_remove(None, t)
            if queue:
                start(clock, slot)
            continue
        rest = pts[1:]
        nxt = began + (rest[0][0] if rest else steps)
        running.append((nxt, slot, t, rest, began))
    return out


def _pick(got: dict[str, int], keys, by_key, steps: int):
    """(configuration -> final FIDs n=1 of its finished trials, the configuration with the best mean of them)."""
    fin: dict = {}
    for k in keys:
        if got[f"{k}"] == steps:
            fin.setdefault(k[0], []).append(by_key[k].final[1])
    return fin, min(fin, key=lambda c: np.mean(fin[c]))


def cmd_simulate(runs: list[LoggedRun], metric: str, grace: int, reduction: int, concurrent: int, experiment: str) -> str:
    """The grid's trials through simulate_asha in Tune's order for the sweep (k, M, seed nested, seed innermost:
    the live sweep's), and seed outermost; the live sweep's steps per trial beside the first."""
    from bench.store.tracking import RunStore

    grid = grid_runs(runs)
    steps = grid[0].steps
    by_key = {(r.config(), r.seed): r for r in grid}
    configs = sorted({r.config() for r in grid})
    mean = {c: float(np.mean([by_key[(c, s)].final[1] for s in (0, 1, 2)])) for c in configs}
    winner = min(mean, key=mean.get)
    live = {}
    for r in RunStore().find(experiment, tags={"sweep.role": "trial"}, limit=1000):
        c, seed = (float(r.params["method.k"]), int(r.params["method.M"])), int(r.params["seed"])
        o = r.tags.get("sweep.outcome", "")
        live[(c, seed)] = steps if o == "finished" else int(r.tags.get("sweep.stopped_at_step") or r.tags.get("failure.step") or 0)
    lines = [f"Ray Tune's ASHAScheduler (metric {metric}, grace_period {grace}, reduction_factor {reduction}, max_t {steps}) "
             f"driven by the {len(grid)} grid trials' logged values, {concurrent} at a time at one pace per step. "
             f"Grid: {len(grid) * steps:,} steps; winner by mean final FID n=1 k={winner[0]:g} M={winner[1]} ({mean[winner]:.2f}).", "",
             "| trial order | steps | share of the grid's | finished | picked (mean final FID n=1 of its finished seeds) | picked - winner, paired over seeds 0-2 | matches the live sweep's steps |",
             "|---|---|---|---|---|---|---|"]
    orders = {"configuration by configuration (Tune's grid order: the live sweep's)": sorted(by_key, key=lambda k: (k[0], k[1])),
              "seed by seed": sorted(by_key, key=lambda k: (k[1], k[0]))}
    for name, keys in orders.items():
        trials = [(f"{k}", [(s, v) for s, v in by_key[k].series.get(metric, [])]) for k in keys]
        got = simulate_asha(trials, steps, grace, reduction, concurrent)
        spent = sum(got.values())
        fin, picked = _pick(got, keys, by_key, steps)
        diff = [by_key[(picked, s)].final[1] - by_key[(winner, s)].final[1] for s in (0, 1, 2)]
        m, h = _paired(diff) if picked != winner else (0.0, 0.0)
        verdict = "same" if picked == winner else ("within" if m - h <= 0 <= m + h else "worse")
        match = ""
        if live and "live sweep" in name:
            diffs = [k for k in keys if live.get(k) != got[f"{k}"]]
            match = "yes, every trial" if not diffs else f"{len(keys) - len(diffs)} of {len(keys)}; " + ", ".join(
                f"k={k[0][0]:g} M={k[0][1]} seed {k[1]}: live {live.get(k)}, here {got[f'{k}']}" for k in diffs)
        lines.append(f"| {name} | {spent:,} | {spent / (len(grid) * steps):.2f} | {sum(len(v) for v in fin.values())} | "
                     f"k={picked[0]:g} M={picked[1]} ({np.mean(fin[picked]):.2f}) | {m:+.2f} [{m - h:+.2f}, {m + h:+.2f}] {verdict} | {match} |")
    lines += ["", "Where the live sweep differs, the simulation's one pace per step is the cause: live, the trials drift "
              "(final evaluations, evaluations during training, k's cost per step, two trials started together), so "
              "which of two trials reaches a rung first can differ, and the first at a rung is judged against fewer. Sensitivity, chosen after seeing these runs (not the shipped "
              "file; share of the grid's steps and the pick, by trial order):", ""]
    for g, rf in ((250, 3), (250, 4), (500, 2), (500, 3)):
        cells = []
        for name, keys in orders.items():
            got = simulate_asha([(f"{k}", by_key[k].series.get(metric, [])) for k in keys], steps, g, rf, concurrent)
            _, pk = _pick(got, keys, by_key, steps)
            cells.append(f"{name.split(' (')[0]}: {sum(got.values()) / (len(grid) * steps):.2f}, k={pk[0]:g} M={pk[1]}")
        lines.append(f"- grace_period {g}, reduction_factor {rf}: " + "; ".join(cells))
    return "\n".join(lines)


def _replay(config: dict) -> None:
    """A Tune function trainable that replays one logged trial: its signal at every evaluation step, then
    its final FID at n = 1 at the last step (what a live trial reports, without the training)."""
    from ray import tune

    for step, value in config["points"]:
        tune.report({"step": step, "score": value})


def cmd_asha(runs: list[LoggedRun], out: Path, metric: str, orders: int = 5, grace: int = 1000,
             reduction: int = 2) -> str:
    """Every grid trial (k, M, seed) replayed through ray.tune.schedulers.ASHAScheduler, one at a time (a
    2-core machine runs them so), in `orders` random orders; the scheduler keeps or stops each at its rungs."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    grid = grid_runs(runs)
    steps = grid[0].steps
    trials = []
    for r in grid:
        pts = [(s, v) for s, v in r.series.get(metric, []) if math.isfinite(v)]
        pts.append((steps, r.final[1]))  # the final evaluation, at the end of training
        trials.append({"key": f"k={r.config()[0]:g} M={r.config()[1]} seed {r.seed}", "config": r.config(), "seed": r.seed,
                       "points": pts})
    configs = sorted({t["config"] for t in trials})
    final = {c: {t["seed"]: r.final[1] for t, r in zip(trials, grid) if t["config"] == c} for c in configs}
    grid_mean = {c: float(np.mean(list(v.values()))) for c, v in final.items()}
    winner = min(grid_mean, key=grid_mean.get)
    lines = [f"{len(trials)} trials ({len(configs)} configurations x seeds), {steps} steps each: the grid spends "
             f"{len(trials) * steps:,} steps. Grid winner by mean final FID at n = 1: k={winner[0]:g} M={winner[1]} "
             f"({grid_mean[winner]:.2f}).", "",
             f"ASHA (Ray Tune's ASHAScheduler: time_attr step, metric {metric} then the final FID n=1 at step {steps}, "
             f"mode min, grace_period {grace}, reduction_factor {reduction}, max_t {steps}), trials one at a time in "
             f"{orders} random orders:", "",
             "| order | steps spent | share of the grid's | trials finished | picked (best mean final FID n=1 of its finished trials) | picked - winner, paired over seeds: mean [95 % CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    import tempfile

    tmp = tempfile.mkdtemp(prefix="asha-replay-")  # Tune's experiment state: not a result
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for o in range(orders):
            order = list(np.random.default_rng(o).permutation(len(trials)))
            sched = ASHAScheduler(time_attr="step", metric="score", mode="min", grace_period=grace,
                                  reduction_factor=reduction, max_t=steps)
            tuner = tune.Tuner(_replay, param_space={"points": tune.grid_search([trials[i]["points"] for i in order])},
                               tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
                               run_config=tune.RunConfig(verbose=0, storage_path=tmp))
            res = tuner.fit()
            spent, done = 0, []
            for r in res:
                pts = r.config["points"]
                i = next(i for i in order if trials[i]["points"] == pts)
                last = int(r.metrics["step"])
                spent += last
                if last == steps:
                    done.append(trials[i])
            by_cfg: dict = {}
            for t in done:
                by_cfg.setdefault(t["config"], []).append(final[t["config"]][t["seed"]])
            picked = min(by_cfg, key=lambda c: np.mean(by_cfg[c]))
            diff = [final[picked][s] - final[winner][s] for s in final[winner] if s in final[picked]]
            m = float(np.mean(diff))
            if picked == winner:
                ci, verdict = "0", "same"
            else:
                from scipy import stats

                h = stats.t.ppf(0.975, len(diff) - 1) * np.std(diff, ddof=1) / np.sqrt(len(diff))
                ci = f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]"
                verdict = "within the interval" if m - h <= 0 <= m + h else "worse"
            lines.append(f"| {o} | {spent:,} | {spent / (len(trials) * steps):.2f} | {len(done)} | k={picked[0]:g} M={picked[1]} "
                         f"({np.mean(by_cfg[picked]):.2f}) | {ci} | {verdict} |")
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
