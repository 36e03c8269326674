"""Nothing lost: checkpoints, kill and resume, non-finite losses, concurrent writers, corrupt caches."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bench.files import checkpoint as ckpt
from bench.errors import BenchError


def test_rotating_checkpoints_keep_the_previous_good_one(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_rotating({"step": 1}, path)
    ckpt.save_rotating({"step": 2}, path)
    assert ckpt.load(path)["step"] == 2 and ckpt.load(ckpt.previous(path))["step"] == 1
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    # truncate the newest: the previous one is used, and the message names the bad file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    said = []
    state, used = ckpt.load_latest(path, warn=said.append)
    assert state["step"] == 1 and used == ckpt.previous(path)
    assert len(said) == 1 and str(path) in said[0] and "truncated or corrupt" in said[0]
    # both bad: one error naming both files
    ckpt.previous(path).write_bytes(b"garbage")
    with pytest.raises(BenchError) as e:
        ckpt.load_latest(path)
    assert str(path) in str(e.value) and str(ckpt.previous(path)) in str(e.value)
    # killed between the two renames: only prev exists and is complete
    path.unlink()
    ckpt.save({"step": 5}, ckpt.previous(path))
    assert ckpt.load_latest(path)[0]["step"] == 5
    assert ckpt.load_latest(tmp_path / "none.pt") == (None, None)


def test_a_crash_while_writing_leaves_the_old_file(tmp_path):
    path = tmp_path / "x.bin"
    ckpt.atomic_write(path, lambda fh: fh.write(b"good"))

    def dies(fh):
        fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, dies)
    assert path.read_bytes() == b"good" and len(list(tmp_path.iterdir())) == 1


def test_non_finite_loss_stops_with_step_and_parts_and_marks_the_run_failed(monkeypatch, isolated_store):
    from bench.config import resolve
    from bench.errors import NonFiniteLoss
    from bench.train.run import execute
    from bench.store.tracking import client
    from methods.shortcut import Shortcut

    original = Shortcut.targets

    def poisoned(self, model, ema, batch, step, generator):
        tg = original(self, model, ema, batch, step, generator)
        if step >= 30:  # the 31st step (steps count from 1 in messages)
            tg.target = tg.target * float("nan")
        return tg

    monkeypatch.setattr(Shortcut, "targets", poisoned)
    cfg = resolve("shortcut", "smoke", ["train.steps=100", "train.checkpoint_every=20", "train.log_every=10", "M=8"])
    with pytest.raises(NonFiniteLoss) as e:
        execute(cfg, "nan", progress=False, echo=lambda *_: None)
    msg = str(e.value)
    assert "at step 31" in msg and "loss_bootstrap" in msg and "loss_flow" in msg and "\n" not in msg
    c = client()
    (run,) = c.search_runs([c.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert e.value.step == 31 and e.value.reason == "nonfinite"
    assert run.data.tags["failure.reason"] == "nonfinite" and run.data.tags["failure.step"] == "31"
    assert run.data.tags["failure.message"] == msg
    last = isolated_store / "checkpoints" / run.info.run_id / "last.pt"
    state = ckpt.load(last)
    assert state["step"] == 20 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert max(m.step for m in c.get_metric_history(run.info.run_id, "train/loss")) == 30


def _bench(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.mark.slow
def test_kill_at_a_random_step_and_resume_matches_an_uninterrupted_run(isolated_store):
    from bench.store.tracking import client

    args = ["run", "--method", "shortcut", "--profile", "smoke", "-q", "--set", "train.steps=600",
            "--set", "train.checkpoint_every=100", "--set", "M=8", "--set", "eval.num_samples=500"]
    ref = _bench(*args, "--experiment", "straight")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    ckpt_root = isolated_store / "checkpoints"
    before = set(ckpt_root.glob("*/last.pt"))  # the uninterrupted run's
    victim = _bench(*args, "--experiment", "killed")
    deadline = time.time() + 300
    while time.time() < deadline and not set(ckpt_root.glob("*/last.pt")) - before:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere after the first checkpoint, unknown where
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (last,) = set(ckpt_root.glob("*/last.pt")) - before
    run_id = last.parent.name
    killed_at = ckpt.load_latest(last)[0]["step"]
    c = client()
    assert c.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves it so

    resumed = _bench(*args, "--experiment", "killed", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    runs = c.search_runs([c.get_experiment_by_name("killed").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    hist = c.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in hist) == list(range(50, 601, 50))  # every point once
    (straight,) = c.search_runs([c.get_experiment_by_name("straight").experiment_id])
    for key in ("fid", "sw", "modes_hit", "mode_share", "train/loss"):
        a = {m.step: m.value for m in c.get_metric_history(run_id, key)}
        b = {m.step: m.value for m in c.get_metric_history(straight.info.run_id, key)}
        assert a == b, (key, killed_at)
    print(f"killed after checkpoint step {killed_at}; resumed run {run_id} equals the uninterrupted one")


WRITER = """
import sys
from bench.store.tracking import Tracker
t = Tracker("shared", run_name=f"writer-{sys.argv[1]}")
for i in range(300):
    t.log_metrics({"x": float(i), "y": float(-i)}, step=i)
t.end()
print(t.run_id)
"""


@pytest.mark.slow
def test_four_concurrent_writers_on_a_fresh_store_lose_nothing(isolated_store):
    from bench.store.tracking import client

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    c = client()
    runs = c.search_runs([c.get_experiment_by_name("shared").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        for key, sign in (("x", 1), ("y", -1)):
            hist = c.get_metric_history(r.info.run_id, key)
            assert sorted((m.step, m.value) for m in hist) == [(i, sign * float(i)) for i in range(300)]


def test_a_corrupt_reference_cache_is_recomputed_and_named(tmp_path, capsys):
    from bench.config import resolve
    from bench.data import load_dataset
    from bench.evaluation.evaluate import Evaluator

    cfg = resolve("flow_matching", "digits")
    data = load_dataset(cfg.data)
    ev = Evaluator(cfg, data, torch.device("cpu"), tmp_path, progress=False)
    good = ev.reference_features()
    path = tmp_path / ev.cache_name()
    path.write_bytes(path.read_bytes()[:100])
    ev2 = Evaluator(cfg, data, torch.device("cpu"), tmp_path, progress=False)
    again = ev2.reference_features()
    assert np.array_equal(good, again)
    assert str(path) in capsys.readouterr().out
    with np.load(path) as f:
        assert f["features"].shape == good.shape  # rewritten whole


def test_empty_and_malformed_datasets_are_one_sentence(tmp_path):
    from bench.config import DataConfig
    from bench.data import load_dataset

    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 2), np.float32))
    with pytest.raises(BenchError, match="N > 0"):
        load_dataset(DataConfig(spec=f"npz:{tmp_path / 'empty.npz'}"))
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2), np.float32), y=np.array([0.5, 1, 2]))
    with pytest.raises(BenchError, match="integer labels"):
        load_dataset(DataConfig(spec=f"npz:{tmp_path / 'lab.npz'}"))
