"""Sweeps on Ray Tune: sweeps/*.toml -> trials -> one MLflow child run per swept point.

A sweep file names config keys, their values, and whether each key is *training-time* (one
model trained per value) or *sampling-time* (one trained model evaluated per value). For
`method.*` keys the method has the last word (`Method.sampling_time_options`): flow matching's
CFG scale is sampling-time, the shortcut's is baked into its bootstrap targets.

    description = "..."
    samples = 1          # draws of the random keys (choice, uniform, loguniform, randint)
    seed = 0             # seed of those draws
    [keys."method.k"]
    grid = ["1/8", "1/4", "1/2"]  # or choice = [...], uniform = [lo, hi], loguniform = [lo, hi], randint = [lo, hi)
    time = "training"             # or "sampling"
    [resources]          # optional, per trial; torch threads = the CPU share (at least 1)
    cpus = 1
    gpus = 0.5

The driver draws every value (seeded), resolves and checks every configuration, connects to
Ray, then creates the tracking store, the experiment and the sweep's parent run, and only then
starts one Ray trial per training configuration. A trial trains its first point with
`bench.train.run.execute` and evaluates that final checkpoint at its other sampling-time points with
`bench.train.run.evaluate_checkpoint`; every point is a child run with the layout of a single run.
The trial keeps its runs' ids in its Ray checkpoint (and tags them `sweep.trial`/`sweep.point`),
so `--resume` continues each run where it stopped and does not rerun finished ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, RunFailed
from bench.train.ray_session import RaySession, check_ray_address
from bench.sweep.plan import Plan, build_plan, format_value, preflight
from bench.sweep.trial import run_trial, runs_of_trial, stored_results, trial_name


def _fits(plan: Plan, gpus: float, session: RaySession) -> None:
    nodes = session.nodes()
    if not any(n.get("CPU", 0) >= plan.cpus and n.get("GPU", 0) >= gpus for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        raise BenchError(f"No node of {session.describe()} has {plan.cpus:g} CPUs and {gpus:g} GPUs for one trial "
                         f"(the largest has {most:g} CPUs); lower [resources] in the sweep file or train.threads.")


def _progress_callback(total: int, quiet: bool):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished or failed trial (picklable: Tune stores it with the experiment)."""

        def __init__(self):
            self.total, self.quiet, self.done, self.t0 = total, quiet, 0, time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if not self.quiet:
                summary = (trial.last_result or {}).get("summary", "")
                print(f"[{self.done}/{self.total}] {time.time() - self.t0:6.0f} s  {summary}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            if not self.quiet:
                err = str(trial.get_error() or "").strip().splitlines()
                print(f"[{self.done}/{self.total}] {time.time() - self.t0:6.0f} s  {trial.config['trial']['label']}: FAILED "
                      f"({err[-1] if err else 'see ' + str(trial.path)})", flush=True)

    return Progress()


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    status: str
    rows: list[dict[str, Any]]  # one per point: swept values, run_id, status, fid per n
    seconds: float
    notes: list[str] = field(default_factory=list)


def find_unfinished_sweep(plan: Plan, uri: str) -> str:
    from bench.store.tracking import RunStore

    for r in RunStore(uri).find(plan.experiment, tags={"sweep.hash": plan.hash(), "sweep.role": "parent"}, newest_first=True):
        if r.status != "FINISHED":
            return r.run_id
    raise BenchError(f"No unfinished sweep of this configuration in experiment {plan.experiment!r}; nothing to resume.")


def sweep_rows(plan: Plan, parent_run_id: str, uri: str) -> list[dict[str, Any]]:
    """Every point of the plan with its run's status and FID per n (from the tracking store)."""
    from bench.store.tracking import RunStore

    store = RunStore(uri)
    rows = []
    for t in plan.trials:
        found = runs_of_trial(store, plan.experiment, parent_run_id, t.key)
        for p in t.points:
            r = found.get(p.key)
            rows.append({**p.values, "trial": t.index, "run_id": r.run_id if r else "",
                         "status": r.status if r else "NOT STARTED",
                         "fid": stored_results(store, r.run_id) if r else {}, "M": p.cfg["method"]["M"]})
    return rows


def format_rows(plan: Plan, rows: list[dict[str, Any]]) -> str:
    keys = plan.keys
    head = [k.split(".")[-1] for k in keys] + ["fid n=1", "fid n=4", "fid n=M", "status", "run"]
    table = []
    for r in rows:
        fid = {n: m["fid"] for n, m in r["fid"].items()}
        cell = lambda n: f"{fid[n]:.4g}" if n in fid else "-"  # noqa: E731
        table.append([format_value(r[k]) for k in keys] + [cell(1), cell(4), cell(r["M"]), r["status"], r["run_id"]])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), "-" * len(line(head))] + [line(row) for row in table])


def run_sweep(plan: Plan, *, address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              progress: bool = True, echo=print) -> SweepOutcome:
    """Run the plan on Ray Tune; returns every point's run. `address`: an existing cluster
    (default $RAY_ADDRESS); without one a local Ray is started for this call and shut down after."""
    from bench.store.session import RunSession
    from bench.store.tracking import Tracker, check_reachable, ensure_experiment, git_commit, store_root, tracking_uri

    t0 = time.time()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    if address:
        check_ray_address(address)
    else:
        preflight(plan)
    uri = tracking_uri()
    check_reachable(uri)
    if resume:
        find_unfinished_sweep(plan, uri)  # fail before starting Ray when there is nothing to resume

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no boxed tables; we print one line per trial
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a checkpoint per run id forces a state snapshot (num_to_keep=1): wanted, so no warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with RaySession(address, num_cpus) as session:
        from ray import tune

        gpus = plan.gpus
        if gpus is None:
            has_gpu = any(n.get("GPU", 0) > 0 for n in session.nodes())
            gpus = 1.0 if has_gpu and plan.base.train.device != "cpu" else 0.0
        _fits(plan, gpus, session)

        ensure_experiment(plan.experiment, uri)  # once, here, before any trial writes
        parent_id = find_unfinished_sweep(plan, uri) if resume else None
        tracker = Tracker(plan.experiment, run_name=f"sweep {plan.name} ({plan.method})", uri=uri, resume_run_id=parent_id,
                          tags={"sweep.role": "parent", "sweep.hash": plan.hash(), "sweep.name": plan.name,
                                "sweep.keys": ",".join(plan.report_keys), "method": plan.method,
                                "profile": plan.base.profile, "git_commit": git_commit()})
        parent_id = tracker.run_id
        with RunSession(tracker, lock=False, before_end=lambda: _stop_children(plan, parent_id, uri)) as parent:
            swept = set(plan.keys)
            tracker.log_params({
                "sweep.files": ",".join(str(s.path) for s in plan.sweeps),
                **{f"sweep.file.{s.name}": s.text for s in plan.sweeps},
                **{f"sweep.values.{k}": ",".join(map(format_value, v)) for k, v in plan.values.items()},
                **{f"sweep.time.{k}": t for k, t in plan.times.items()},
                "sweep.trials": len(plan.trials), "sweep.points": len(plan.points()),
                "sweep.trial_cpus": plan.cpus, "sweep.trial_gpus": gpus, "sweep.torch_threads": plan.threads,
                **{k: v for k, v in plan.base.flat().items() if k not in swept and k != "train.threads"},
            })
            if not resume:
                for s in plan.sweeps:
                    tracker.log_artifact(s.path, "sweep")
            echo(f"sweep {plan.name}: {len(plan.trials)} trained model(s), {len(plan.points())} run(s) of {plan.method} "
                 f"on {session.describe()}; {plan.cpus:g} CPU(s){f', {gpus:g} GPU(s)' if gpus else ''} and "
                 f"{plan.threads} torch thread(s) per trial")
            for k, t in plan.times.items():
                echo(f"  {k} ({t}-time): {', '.join(map(format_value, plan.values[k]))}")
            for note in plan.notes:
                echo(f"  note: {note}")
            echo(f"parent run {parent_id} in experiment {plan.experiment!r} at {uri}"
                 + (" (resumed)" if resume else ""))

            env = {"BENCH_STORE": str(store_root()), "MLFLOW_TRACKING_URI": uri}
            for var in ("BENCH_INCEPTION_WEIGHTS", "BENCH_CLASSIFIER_WEIGHTS", "TORCH_HOME"):  # paths: absolute for other nodes
                if os.environ.get(var):
                    env[var] = str(Path(os.environ[var]).expanduser().resolve())
            for var in ("BENCH_OFFLINE", "BENCH_INCEPTION_URL", "BENCH_CLASSIFIER_URL", "BENCH_CIFAR10_URL"):  # the driver's download policy holds in every trial
                if os.environ.get(var):
                    env[var] = os.environ[var]
            trainable = tune.with_resources(run_trial, {"cpu": plan.cpus, "gpu": gpus})
            storage = store_root() / "ray"
            path = storage / f"sweep-{parent_id}"
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                name = path.name if not path.exists() else f"{path.name}-{int(time.time())}"
                tuner = tune.Tuner(
                    trainable,
                    param_space={"env": env, "experiment": plan.experiment, "parent_run_id": parent_id,
                                 "sweep_name": plan.name, "sweep_keys": ",".join(plan.report_keys),
                                 "trial": tune.grid_search([t.payload() for t in plan.trials])},
                    tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                    run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              callbacks=[_progress_callback(len(plan.trials), not progress)]),
                )
            tuner.fit()
            rows = sweep_rows(plan, parent_id, uri)
            parent.status = "FINISHED" if all(r["status"] == "FINISHED" for r in rows) else "FAILED"
    status = parent.status
    out = SweepOutcome(parent_id, plan.experiment, uri, status, rows, time.time() - t0, plan.notes)
    if status != "FINISHED":
        bad = sum(r["status"] != "FINISHED" for r in rows)
        raise SweepFailed(out, f"{bad} of {len(rows)} runs of sweep {plan.name} did not finish; fix the cause and continue them with --resume.")
    return out


class SweepFailed(RunFailed):
    def __init__(self, outcome: SweepOutcome, message: str):
        super().__init__(message)
        self.outcome = outcome


def _stop_children(plan: Plan, parent_run_id: str, uri: str) -> None:
    """Runs whose trial process is gone (interrupted sweep) must not stay RUNNING; resume reopens them."""
    from bench.store.tracking import RunStore

    store = RunStore(uri)
    for r in store.find(plan.experiment, tags={"mlflow.parentRunId": parent_run_id}, status="RUNNING"):
        store.mark(r.run_id, status="KILLED")


def sweep_command(method: str, profile: str | None, overrides: list[str], sweeps: list[str], *, data_spec=None, seed=None,
                  experiment=None, config_path=None, resume=False, address=None, quiet=False) -> SweepOutcome:
    """`bench run --sweep ...`: plan, run, print one line per trial and the table of every point."""
    import typer

    plan = build_plan(method, profile, overrides, sweeps, data_spec=data_spec, seed=seed, config_path=config_path,
                      experiment=experiment)
    try:
        out = run_sweep(plan, address=address, resume=resume, progress=not quiet, echo=typer.echo)
    except SweepFailed as e:
        typer.echo("\n" + format_rows(plan, e.outcome.rows))
        raise
    typer.echo("\n" + format_rows(plan, out.rows))
    typer.echo(f"\nsweep {plan.name} finished in {out.seconds:.0f} s: parent run {out.parent_run_id} in experiment "
               f"{out.experiment!r} at {out.tracking_uri}")
    typer.echo(f"plots and tables: bench report --experiment {out.experiment}")
    return out
