"""One sweep trial on a Ray worker: trains its first point with bench.train.run.execute, evaluates that final
checkpoint at its other sampling-time points, and keeps its runs' ids in its Ray checkpoint for --resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _save_runs(runs: dict[str, str], metrics: dict[str, Any]) -> None:
    """Report to Tune with a checkpoint that holds the trial's MLflow run ids (point key -> run id)."""
    from ray import tune

    d = tempfile.mkdtemp(prefix="bench-trial-")
    try:
        (Path(d) / "runs.json").write_text(json.dumps(runs))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def runs_of_trial(store, experiment: str, parent_run_id: str, trial_key: str) -> dict[str, Any]:
    """Point key -> its run (a bench.store.tracking.StoredRun: FINISHED first, then the newest), found by tags
    in `store` (a RunStore)."""
    runs = store.find(experiment, tags={"mlflow.parentRunId": parent_run_id, "sweep.trial": trial_key}, newest_first=True)
    out: dict[str, Any] = {}
    for r in runs:
        pk = r.tags.get("sweep.point")
        if pk not in out or (r.status == "FINISHED" and out[pk].status != "FINISHED"):
            out[pk] = r
    return out


def stored_results(store, run_id: str) -> dict[int, dict[str, float]]:
    return {m.step: {"fid": m.value} for m in store.history(run_id, "fid")}


def _summary(lbl: str, results: dict[int, dict[str, float]]) -> str:
    ns = sorted(results)
    shown = [n for n in (1, 4, ns[-1] if ns else 0) if n in results]
    fids = ", ".join(f"{results[n].get('fid', math.nan):.4g} (n={n})" for n in dict.fromkeys(shown))
    return f"{lbl}: fid {fids}" if fids else f"{lbl}: no metrics"


def _finite_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return {k: v for k, v in out.items() if math.isfinite(v)}


def run_trial(config: dict[str, Any], template: dict[str, Any] | None = None) -> None:
    """A Ray Tune function trainable: one training configuration, every sampling-time point.

    It reports each training log point (and each evaluation during training) to Tune as {metrics, "step"},
    so a scheduler (ASHA) can stop it; a checkpoint (the run ids) only when a run is created and at the end.
    The last report carries the final metrics as <metric>_n<n> (the training point's) and "outcome":
    finished, or failed when training stopped on its own evidence (TrainingFailed: the trial returns, the sweep
    goes on). A trial the scheduler stops never sends one; the driver marks its run (sweep.tune.mark_stopped).
    template: search = "optuna", where Tune drew config["values"] and the trial resolves them here."""
    os.environ.update(config["env"])  # absolute store, tracking URI (trials run in their own cwd, maybe elsewhere)
    import ray
    from ray import tune

    from bench.files import checkpoint as ckpt
    from bench.config import Config
    from bench.errors import TrainingFailed
    from bench.train.run import evaluate_checkpoint, execute
    from bench.store.session import checkpoint_dir
    from bench.store.tracking import RunStore

    if "trial" in config:
        trial = config["trial"]
    else:
        from bench.sweep.plan import make_trial

        trial = make_trial(template["resolve"], -1, config["values"], template["sampling"]).payload()
    experiment, parent = config["experiment"], config["parent_run_id"]
    store = RunStore()
    runs: dict[str, str] = {}
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            runs.update(json.loads((Path(d) / "runs.json").read_text()))
    stored = runs_of_trial(store, experiment, parent, trial["key"])
    for pk, r in stored.items():  # a run created after the driver's last look at this trial's checkpoint
        runs.setdefault(pk, r.run_id)
    node = ray.get_runtime_context().get_node_id()
    ident = {"trial_key": trial["key"], "trial_label": trial["label"]}
    last: dict[str, float] = {}  # the latest value of every metric reported

    steps = Config.from_dict(trial["points"][0]["cfg"]).train.steps

    def on_metrics(step: int, metrics: dict[str, Any]) -> None:
        values = _finite_numbers(metrics)
        last.update(values)
        last["step"] = step
        if step < steps:  # the last step goes with the final report: ASHA stops at max_t, before the final evaluation
            tune.report({**values, "step": step, **ident})  # when the scheduler has stopped this trial: SystemExit

    lines, train_run, first_results = [], None, {}
    for i, point in enumerate(trial["points"]):
        cfg = Config.from_dict(point["cfg"])
        rid = runs.get(point["key"])
        run = store.get(rid) if rid else None
        if run is not None and run.status == "FINISHED":
            results = stored_results(store, rid)
        else:
            tags = {"sweep.role": "trial", "sweep.name": config["sweep_name"], "sweep.keys": config["sweep_keys"],
                    "sweep.trial": trial["key"], "sweep.point": point["key"], "sweep.attempts": "1"}
            if run is not None:  # continue this point's own run
                last_pt = checkpoint_dir(rid) / "last.pt"
                step = int(ckpt.load(last_pt, mmap=True)["step"]) if (i == 0 and last_pt.is_file()) else 0
                attempts = int(run.tags.get("sweep.attempts", "1")) + 1
                store.mark(rid, tags={"sweep.attempts": str(attempts), "sweep.resumed_at_step": str(step)})

            def on_run(run_id: str, pk: str = point["key"]) -> None:
                runs[pk] = run_id
                store.mark(run_id, tags={"sweep.node": node})
                _save_runs(runs, {"phase": f"point {pk}", "done": False, **ident})

            common = dict(resume_run_id=rid, parent_run_id=parent, run_name=f"{cfg.method_name} {point['label']}",
                          progress=False, echo=lambda *a, **k: None, on_run=on_run)
            if i == 0:
                try:
                    out = execute(cfg, experiment, extra_tags=tags, on_metrics=on_metrics, **common)
                except TrainingFailed as e:  # a result, not an error: recorded, and the sweep goes on
                    if point["key"] in runs:
                        store.mark(runs[point["key"]], tags={"sweep.outcome": "failed"})
                    _save_runs(runs, {"outcome": "failed", "failed_at_step": e.step, "failure_reason": e.reason,
                                      "summary": f"{trial['label']}: FAILED at step {e.step} ({e.reason})",
                                      "done": True, **ident})
                    return
            else:
                final = checkpoint_dir(train_run) / "final.pt"
                out = evaluate_checkpoint(cfg, final, experiment, extra_tags={**tags, "sweep.trained_in": train_run},
                                          extra_params={"sweep.trained_in": train_run}, **common)
            rid, results = out.run_id, out.results
            store.mark(rid, tags={"sweep.outcome": "finished"})
        if i == 0:
            train_run, first_results = rid, results
        lines.append(_summary(point["label"], results))
    final_metrics = {f"{k}_n{n}": v for n, m in first_results.items() for k, v in m.items()}
    _save_runs(runs, {**last, **_finite_numbers(final_metrics), "step": steps, "outcome": "finished",
                      "summary": "; ".join(lines), "done": True, **ident})


def trial_name(trial) -> str:
    if "trial" in trial.config:  # a planned trial (grid, random)
        return f"trial_{trial.config['trial']['index']:03d}"
    return f"trial_{trial.trial_id}"  # drawn by the searcher at run time


