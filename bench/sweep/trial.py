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


def run_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one training configuration, every sampling-time point."""
    os.environ.update(config["env"])  # absolute store, tracking URI (trials run in their own cwd, maybe elsewhere)
    import ray
    from ray import tune

    from bench.files import checkpoint as ckpt
    from bench.config import Config
    from bench.train.run import evaluate_checkpoint, execute
    from bench.store.session import checkpoint_dir
    from bench.store.tracking import RunStore

    trial, experiment, parent = config["trial"], config["experiment"], config["parent_run_id"]
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

    lines, train_run = [], None
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
                last = checkpoint_dir(rid) / "last.pt"
                step = int(ckpt.load(last, mmap=True)["step"]) if (i == 0 and last.is_file()) else 0
                attempts = int(run.tags.get("sweep.attempts", "1")) + 1
                store.mark(rid, tags={"sweep.attempts": str(attempts), "sweep.resumed_at_step": str(step)})

            def on_run(run_id: str, pk: str = point["key"]) -> None:
                runs[pk] = run_id
                store.mark(run_id, tags={"sweep.node": node})
                _save_runs(runs, {"phase": f"point {pk}", "done": False})

            common = dict(resume_run_id=rid, parent_run_id=parent, run_name=f"{cfg.method_name} {point['label']}",
                          progress=False, echo=lambda *a, **k: None, on_run=on_run)
            if i == 0:
                out = execute(cfg, experiment, extra_tags=tags, **common)
            else:
                final = checkpoint_dir(train_run) / "final.pt"
                out = evaluate_checkpoint(cfg, final, experiment, extra_tags={**tags, "sweep.trained_in": train_run},
                                          extra_params={"sweep.trained_in": train_run}, **common)
            rid, results = out.run_id, out.results
        if i == 0:
            train_run = rid
        lines.append(_summary(point["label"], results))
    _save_runs(runs, {"summary": "; ".join(lines), "done": True})


def trial_name(trial) -> str:
    return f"trial_{trial.config['trial']['index']:03d}"


