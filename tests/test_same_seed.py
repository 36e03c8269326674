"""scripts/same_seed.py, the check behind "no behaviour change": two stores whose runs agree pass,
and a run whose EMA, samples or one metric point differs fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.files.checkpoint import save
from bench.store.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent


def make_store(path: Path, monkeypatch, loss=(1.0, 0.5), ema=0.0, sample=0.0, teacher=True) -> None:
    monkeypatch.setenv("BENCH_STORE", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the last store's
    t = Tracker("same-seed", tags={"method": "progressive"})
    t.log_params({"method": "progressive", "seed": 0})
    for step, v in enumerate(loss):
        t.log_metrics({"train/loss": v}, step=step)
    t.log_metrics({"fid": 3.0}, step=1)
    save({"ema": {"w": torch.full((2, 2), ema)}}, path / "checkpoints" / t.run_id / "last.pt")
    npz = path / "tmp" / "steps_1.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, samples=np.full((3, 2), sample, np.float32))
    t.log_artifact(npz, "samples")
    if teacher:  # a nested run is left out of the comparison, whatever it holds
        nested = Tracker("same-seed", tags={"method": "flow_matching"}, parent_run_id=t.run_id)
        nested.log_params({"method": "flow_matching"})
        nested.log_metrics({"fid": float(np.random.rand())}, step=1)
        nested.end("FINISHED")
    t.end("FINISHED")


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "same_seed.py"), str(a), str(b)],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_identical_runs_pass_and_any_difference_fails(tmp_path, monkeypatch):
    make_store(tmp_path / "a", monkeypatch)
    make_store(tmp_path / "b", monkeypatch)
    make_store(tmp_path / "loss", monkeypatch, loss=(1.0, 0.5000001))
    make_store(tmp_path / "ema", monkeypatch, ema=1e-7)
    make_store(tmp_path / "samples", monkeypatch, sample=1e-7)
    same = compare(tmp_path / "a", tmp_path / "b")
    assert same.returncode == 0 and "every method identical" in same.stdout, same.stdout + same.stderr
    assert "| progressive |" in same.stdout and "flow_matching" not in same.stdout  # the nested teacher is left out
    for changed in ("loss", "ema", "samples"):
        out = compare(tmp_path / "a", tmp_path / changed)
        assert out.returncode == 1 and "DIFFERENT" in out.stdout, (changed, out.stdout + out.stderr)
    assert "differs: train/loss at step 1" in compare(tmp_path / "a", tmp_path / "loss").stdout
