"""scripts/same_seed.py, the check behind "no behaviour change": two stores whose runs agree pass,
and a run whose EMA, samples or one metric point differs fails."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from bench.files.checkpoint import save
from bench.store.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent


def make_store(path: Path, monkeypatch, loss=(1.0, 0.5), ema=0.0, sample=0.0, teacher=True, fid=3.0) -> None:
    monkeypatch.setenv("BENCH_STORE", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the last store's
    t = Tracker("same-seed", tags={"method": "progressive"})
    t.log_params({"method": "progressive", "seed": 0})
    for step, v in enumerate(loss):
        t.log_metrics({"train/loss": v}, step=step)
    t.log_metrics({"fid": fid}, step=1)
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


def load_script():
    spec = importlib.util.spec_from_file_location("same_seed", ROOT / "scripts" / "same_seed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Compared:
    def __init__(self, returncode: int, stdout: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, ""


def compare(a: Path, b: Path, monkeypatch, capsys, *extra: str) -> Compared:
    """The script's main() in this process (each store is named by its own sqlite URI, not the environment)."""
    monkeypatch.setattr(sys, "argv", ["same_seed.py", str(a), str(b), *extra])
    capsys.readouterr()
    rc = load_script().main()
    return Compared(rc, capsys.readouterr().out)


def test_identical_runs_pass_and_any_difference_fails(tmp_path, monkeypatch, capsys):
    make_store(tmp_path / "a", monkeypatch)
    make_store(tmp_path / "b", monkeypatch)
    make_store(tmp_path / "loss", monkeypatch, loss=(1.0, 0.5000001))
    make_store(tmp_path / "ema", monkeypatch, ema=1e-7)
    make_store(tmp_path / "samples", monkeypatch, sample=1e-7)
    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "elsewhere"))  # the script must read the stores it is given
    same = compare(tmp_path / "a", tmp_path / "b", monkeypatch, capsys)
    assert same.returncode == 0 and "every method identical" in same.stdout, same.stdout + same.stderr
    assert "| progressive |" in same.stdout and "flow_matching" not in same.stdout  # the nested teacher is left out
    for changed in ("loss", "ema", "samples"):
        out = compare(tmp_path / "a", tmp_path / changed, monkeypatch, capsys)
        assert out.returncode == 1 and "DIFFERENT" in out.stdout, (changed, out.stdout + out.stderr)
    assert "differs: train/loss at step 1" in compare(tmp_path / "a", tmp_path / "loss", monkeypatch, capsys).stdout


def test_a_named_metric_may_differ_within_the_bound_and_is_said(tmp_path, monkeypatch, capsys):
    make_store(tmp_path / "a", monkeypatch)
    make_store(tmp_path / "ulp", monkeypatch, fid=3.0 * (1 + 3e-15))
    make_store(tmp_path / "far", monkeypatch, fid=3.0 * (1 + 2e-6))
    assert compare(tmp_path / "a", tmp_path / "ulp", monkeypatch, capsys).returncode == 1  # not named: a difference
    out = compare(tmp_path / "a", tmp_path / "ulp", monkeypatch, capsys, "--close", "fid,kid", "--rel", "1e-6")
    assert "identical but fid, kid within 1e-06" in out.stdout
    assert out.returncode == 0 and "within 1e-06: fid (largest relative difference 3" in out.stdout, out.stdout
    far = compare(tmp_path / "a", tmp_path / "far", monkeypatch, capsys, "--close", "fid", "--rel", "1e-6")
    assert far.returncode == 1 and "differs: fid at step 1" in far.stdout
