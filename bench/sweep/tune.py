"""Sweeps on Ray Tune: sweeps/*.toml -> trials -> one MLflow child run per swept point.

A sweep file names config keys, their values, and whether each key is *training-time* (one
model trained per value) or *sampling-time* (one trained model evaluated per value). For
`method.*` keys the method has the last word (`Method.sampling_time_options`): flow matching's
CFG scale is sampling-time, the shortcut's is baked into its bootstrap targets.

    description = "..."
    samples = 1          # files without [tune]: draws of the random keys (choice, uniform, loguniform, randint)
    seed = 0             # seed of those draws (and of Optuna's sampler)
    [keys."method.k"]
    grid = ["1/8", "1/4", "1/2"]  # or choice = [...], uniform = [lo, hi], loguniform = [lo, hi], randint = [lo, hi)
    time = "training"             # or "sampling"
    [resources]          # optional, per trial; torch threads = the CPU share (at least 1)
    cpus = 1
    gpus = 0.5
    [tune]               # optional; Ray Tune's own names. Without it: every configuration, FIFO, as before
    metric = "during/fid_n1"  # what a run logs: train/loss, train/loss_<part>, train/level_ratio, during/<metric>_n<n>, <metric>_n<n> (final)
    mode = "min"              # or "max"; metric and mode go together
    scheduler = "asha"        # "fifo" (default) or "asha": stops trials that trail at each rung
    grace_period = 500        # asha, in training steps (default: a tenth of train.steps); time attribute: "step"
    reduction_factor = 3      # asha (default 4): the best 1/3 go on at each rung
    max_t = 2500              # asha (default and least: train.steps; a trial evaluates only at its end)
    search = "grid"           # "grid" (default), "random" (grid keys crossed with num_samples draws) or "optuna"
    num_samples = 8           # random, optuna: configurations drawn
    seeds = [0, 1, 2]         # every configuration once per seed (grid and random)
    max_concurrent = 1        # trials at once (default: what the resources allow)
    points_to_evaluate = [{ k = 0.25 }]  # optuna: known good configurations tried first (every drawn key)

Random keys are drawn with Tune's own samplers (tune.uniform, tune.loguniform, tune.choice, tune.randint),
when the plan is made (bench.sweep.spec._draw says why); search = "optuna" hands them to Tune's
OptunaSearch (TPE, seeded), which draws at run time (grid keys become tune.choice). Each trial reports every
training log point (and evaluation during training) to Tune as {metric: value, "step": step}, so ASHA can
stop it; its final report carries the final metrics as <metric>_n<n> and the last value of every other.

Outcomes: a trial finishes (sweep.outcome = finished), fails on its own evidence (a non-finite loss or
the failure rule: the run ends FAILED with failure.* tags, sweep.outcome = failed; the sweep goes on), or
is stopped by the scheduler (KILLED, sweep.outcome = stopped, sweep.stopped_at_step). The sweep exits 0
when at least one trial finished and every trial reached an outcome; any other exception in a trial is
a bug and fails the sweep as before (exit 1, --resume continues it). Axes that cannot change anything are
refused before anything is written (exit 2): the CFG scale on data without labels, M for a method
whose training does not read it (`Method.trains_on_M`).

The driver draws every value (seeded), resolves and checks every configuration (with Optuna: every
listed value, both ends of each range and the starting points), connects to Ray, then creates the
tracking store, the experiment and the sweep's parent run, and only then starts one Ray trial per
training configuration. A trial trains its first point with `bench.train.run.execute` and evaluates
that final checkpoint at its other sampling-time points with `bench.train.run.evaluate_checkpoint`;
every point is a child run with the layout of a single run. The trial keeps its runs' ids in its Ray
checkpoint (written when a run is created and at the end, not at every report) and tags them
`sweep.trial`/`sweep.point`, so `--resume` continues each run where it stopped and does not rerun
finished ones.

Not Tune's MLflow integration (ray.air.integrations.mlflow: MLflowLoggerCallback, setup_mlflow): it logs
one flat run per Tune trial from Tune's results; ours are child runs of the sweep's parent with the
layout of a single run (params, fid at step n, checkpoints, phases), one per sampling-time point, written
by execute() itself, which the callback would duplicate.
"""

from __future__ import annotations

import json
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
                last = trial.last_result or {}
                summary = last.get("summary") or (f"{last.get('trial_label', trial.trial_id)}: stopped by the scheduler "
                                                  f"at step {last.get('step', '?')}")
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


def _outcome(r, first) -> tuple[str, str]:
    """(outcome, step) of a point's run: finished | failed | stopped | unfinished; `first`: its trial's training run."""
    if r is None:
        if first is not None and first.tags.get("sweep.outcome") in ("failed", "stopped"):
            return first.tags["sweep.outcome"], ""  # never evaluated: its model did not finish training
        return "unfinished", ""
    out = r.tags.get("sweep.outcome", "finished" if r.status == "FINISHED" else "unfinished")
    step = r.tags.get("failure.step", "") if out == "failed" else r.tags.get("sweep.stopped_at_step", "") if out == "stopped" else ""
    return out, step


def sweep_rows(plan: Plan, parent_run_id: str, uri: str) -> list[dict[str, Any]]:
    """Every point of the sweep with its run's status, outcome (finished, failed or stopped, at which step)
    and FID per n (from the tracking store). Trials the searcher drew are found by their tags."""
    from bench.store.tracking import RunStore

    store = RunStore(uri)
    rows = []
    if plan.drawn_at_run_time:
        children = store.find(plan.experiment, tags={"mlflow.parentRunId": parent_run_id, "sweep.role": "trial"})
        trials = []
        for tk in dict.fromkeys(r.tags["sweep.trial"] for r in children):
            found = runs_of_trial(store, plan.experiment, parent_run_id, tk)
            trials.append((len(trials), found, [(pk, {k: _param(r, k) for k in plan.keys}, int(r.params.get("method.M", 0)))
                                                for pk, r in found.items()]))
    else:
        trials = [(t.index, runs_of_trial(store, plan.experiment, parent_run_id, t.key),
                   [(p.key, p.values, p.cfg["method"]["M"]) for p in t.points]) for t in plan.trials]
    for index, found, points in trials:
        first = found.get(points[0][0]) if points else None
        for pk, values, M in points:
            r = found.get(pk)
            outcome, step = _outcome(r, first)
            rows.append({**values, "trial": index, "run_id": r.run_id if r else "",
                         "status": r.status if r else "NOT STARTED", "outcome": outcome, "outcome_step": step,
                         "fid": stored_results(store, r.run_id) if r else {}, "M": M})
    return rows


def _param(run, key: str) -> Any:
    v = run.params.get(key, "")
    try:
        return json.loads(v)
    except ValueError:
        return v


def format_rows(plan: Plan, rows: list[dict[str, Any]]) -> str:
    keys = plan.keys
    head = [k.split(".")[-1] for k in keys] + ["fid n=1", "fid n=4", "fid n=M", "outcome", "status", "run"]
    table = []
    for r in rows:
        fid = {n: m["fid"] for n, m in r["fid"].items()}
        cell = lambda n: f"{fid[n]:.4g}" if n in fid else "-"  # noqa: E731
        outcome = r["outcome"] + (f" at step {r['outcome_step']}" if r["outcome_step"] else "")
        table.append([format_value(r.get(k, "")) for k in keys] + [cell(1), cell(4), cell(r["M"]), outcome,
                                                                   r["status"], r["run_id"]])
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
    # a metric such as during/fid_n1 is in the reports of evaluation steps only, not in every report
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
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
                "sweep.trials": plan.num_trials, "sweep.points": len(plan.points()),
                **({f"sweep.tune.{k}": v for k, v in vars(plan.tune).items() if k != "given" and v not in (None, [])}
                   if plan.tune.given else {}),
                "sweep.trial_cpus": plan.cpus, "sweep.trial_gpus": gpus, "sweep.torch_threads": plan.threads,
                **{k: v for k, v in plan.base.flat().items() if k not in swept and k != "train.threads"},
            })
            if not resume:
                for s in plan.sweeps:
                    tracker.log_artifact(s.path, "sweep")
            ts = plan.tune
            echo(f"sweep {plan.name}: {plan.num_trials} trained model(s), "
                 f"{'drawn by ' + ts.search if plan.drawn_at_run_time else str(len(plan.points())) + ' run(s)'} of {plan.method} "
                 f"on {session.describe()}; {plan.cpus:g} CPU(s){f', {gpus:g} GPU(s)' if gpus else ''} and "
                 f"{plan.threads} torch thread(s) per trial")
            for k, t in plan.times.items():
                echo(f"  {k} ({t}-time): {', '.join(map(format_value, plan.values[k]))}")
            if ts.metric:
                echo(f"  deciding by {ts.metric} ({ts.mode}); scheduler {ts.scheduler}, search {ts.search}")
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
            trainable = run_trial if plan.template is None else tune.with_parameters(run_trial, template=plan.template)
            trainable = tune.with_resources(trainable, {"cpu": plan.cpus, "gpu": gpus})
            storage = store_root() / "ray"
            path = storage / f"sweep-{parent_id}"
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                name = path.name if not path.exists() else f"{path.name}-{int(time.time())}"
                space = ({"values": plan.space} if plan.drawn_at_run_time else
                         {"trial": tune.grid_search([t.payload() for t in plan.trials])})
                tuner = tune.Tuner(
                    trainable,
                    param_space={"env": env, "experiment": plan.experiment, "parent_run_id": parent_id,
                                 "sweep_name": plan.name, "sweep_keys": ",".join(plan.report_keys), **space},
                    tune_config=tune_config(plan),
                    run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              callbacks=[_progress_callback(plan.num_trials, not progress)]),
                )
            results = tuner.fit()
            mark_stopped(plan, results, parent_id, uri)
            rows = sweep_rows(plan, parent_id, uri)
            # decided: every run finished, failed (TrainingFailed) or was stopped by the scheduler; else --resume continues it
            decided = rows and all(r["outcome"] != "unfinished" for r in rows)
            parent.status = "FINISHED" if decided else "FAILED"
    status = parent.status
    out = SweepOutcome(parent_id, plan.experiment, uri, status, rows, time.time() - t0, plan.notes)
    if status != "FINISHED":
        bad = sum(r["outcome"] == "unfinished" for r in rows)
        raise SweepFailed(out, f"{bad} of {len(rows)} runs of sweep {plan.name} did not finish; fix the cause and continue them with --resume.")
    if not any(r["outcome"] == "finished" for r in rows):
        failed, stopped = (sum(r["outcome"] == o for r in rows) for o in ("failed", "stopped"))
        raise SweepFailed(out, f"No run of sweep {plan.name} finished ({failed} failed, {stopped} stopped by the scheduler); "
                               f"see the failure.message tag of the failed runs.")
    return out


def tune_config(plan: Plan):
    """tune.TuneConfig from the sweep file's [tune] table: today's plain grid (FIFO, every planned trial)
    unless the file asks for a metric, a scheduler (ASHA) or a searcher (Optuna)."""
    from ray import tune

    t = plan.tune
    scheduler = None
    if t.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        max_t = t.max_t or plan.base.train.steps
        # the time attribute is the training step each report carries; default grace: a tenth of the run
        scheduler = ASHAScheduler(time_attr="step", max_t=max_t, grace_period=t.grace_period or max(1, max_t // 10),
                                  reduction_factor=t.reduction_factor or 4)
    search_alg = None
    if t.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        points = [{f"values/{k}": v for k, v in start.items()} for start in plan.starts]  # Optuna's flat names
        class Searcher(OptunaSearch):
            """OptunaSearch hands each intermediate result to Optuna (for its own pruners, unused: the scheduler
            stops trials) and needs the metric in it; ours carry it only at some steps (during/*) or at the end."""

            def on_trial_result(self, trial_id, result):
                if self.metric in result:
                    super().on_trial_result(trial_id, result)

        search_alg = Searcher(points_to_evaluate=points or None, sampler=optuna.samplers.TPESampler(seed=plan.sweeps[0].seed))
        if t.max_concurrent:
            search_alg = tune.search.ConcurrencyLimiter(search_alg, max_concurrent=t.max_concurrent)
    kwargs = dict(metric=t.metric, mode=t.mode) if t.metric else {}
    return tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name, scheduler=scheduler,
                           search_alg=search_alg, num_samples=plan.num_trials if plan.drawn_at_run_time else 1,
                           max_concurrent_trials=t.max_concurrent if search_alg is None else None, **kwargs)


def mark_stopped(plan: Plan, results, parent_run_id: str, uri: str) -> None:
    """A trial the scheduler stopped exits inside tune.report (Tune raises SystemExit in its thread) and may not
    get to write its run's end: here its runs that are not finished end KILLED, tagged sweep.outcome = stopped
    and sweep.stopped_at_step (its last report's step)."""
    from bench.store.tracking import RunStore

    store = RunStore(uri)
    for r in results:
        last = r.metrics or {}
        if r.error is not None or "outcome" in last or "trial_key" not in last:
            continue  # a bug (kept for --resume), a trial that ended by itself, or one that never started a run
        for run in runs_of_trial(store, plan.experiment, parent_run_id, last["trial_key"]).values():
            if run.status != "FINISHED" and "sweep.outcome" not in run.tags:
                store.mark(run.run_id, tags={"sweep.outcome": "stopped", "sweep.stopped_at_step": str(last.get("step", ""))},
                           status="KILLED")


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
