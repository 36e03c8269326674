"""One sweep trial on a Ray worker: trains its first point with bench.run.execute, evaluates that final
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


def runs_of_trial(c, experiment: str, parent_run_id: str, trial_key: str) -> dict[str, Any]:
    """Point key -> its run (FINISHED first, then the newest), found by tags."""
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`sweep.trial` = '{trial_key}'",
                         order_by=["attributes.start_time DESC"])
    out: dict[str, Any] = {}
    for r in runs:
        pk = r.data.tags.get("sweep.point")
        if pk not in out or (r.info.status == "FINISHED" and out[pk].info.status != "FINISHED"):
            out[pk] = r
    return out


def stored_results(c, run_id: str) -> dict[int, dict[str, float]]:
    return {int(m.step): {"fid": float(m.value)} for m in c.get_metric_history(run_id, "fid")}


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

    from bench import checkpoint as ckpt
    from bench.config import Config
    from bench.run import evaluate_checkpoint, execute
    from bench.session import checkpoint_dir
    from bench.tracking import client

    trial, experiment, parent = config["trial"], config["experiment"], config["parent_run_id"]
    c = client()
    runs: dict[str, str] = {}
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            runs.update(json.loads((Path(d) / "runs.json").read_text()))
    stored = runs_of_trial(c, experiment, parent, trial["key"])
    for pk, r in stored.items():  # a run created after the driver's last look at this trial's checkpoint
        runs.setdefault(pk, r.info.run_id)
    node = ray.get_runtime_context().get_node_id()

    lines, train_run = [], None
    for i, point in enumerate(trial["points"]):
        cfg = Config.from_dict(point["cfg"])
        rid = runs.get(point["key"])
        run = c.get_run(rid) if rid else None
        if run is not None and run.info.status == "FINISHED":
            results = stored_results(c, rid)
        else:
            tags = {"sweep.role": "trial", "sweep.name": config["sweep_name"], "sweep.keys": config["sweep_keys"],
                    "sweep.trial": trial["key"], "sweep.point": point["key"], "sweep.attempts": "1"}
            if run is not None:  # continue this point's own run
                last = checkpoint_dir(rid) / "last.pt"
                step = int(ckpt.load(last, mmap=True)["step"]) if (i == 0 and last.is_file()) else 0
                attempts = int(run.data.tags.get("sweep.attempts", "1")) + 1
                c.set_tag(rid, "sweep.attempts", str(attempts))
                c.set_tag(rid, "sweep.resumed_at_step", str(step))

            def on_run(run_id: str, pk: str = point["key"]) -> None:
                runs[pk] = run_id
                c.set_tag(run_id, "sweep.node", node)
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


