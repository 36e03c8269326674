"""Sweeps: sweep files -> plans (fast, no Ray), then sweeps on a local Ray, on a two-node Ray
cluster, and a driver killed mid-sweep and resumed (slow: they train tiny models).

Expected answers are written out by hand from the sweep files and the method docs (which
options each method reads only when sampling), never read back from the code under test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.sweep.plan import build_plan
from bench.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
BENCH = str(Path(sys.executable).with_name("bench"))

# a tiny smoke run: a few hundred steps, few samples, n = 1, 2, 4
TINY = ["train.steps=200", "train.checkpoint_every=100", "train.log_every=50", "eval.num_samples=300",
        "eval.batch_size=300", "eval.save_samples=10", "eval.kid=false", "eval.prc=false", "method.M=4",
        "model.hidden=64", "model.depth=2"]


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


# ----------------------------------------------------------------------------- plans (no Ray)


def test_shipped_sweep_files_hold_the_issue_values():
    assert [k.spec for k in load_sweep("k").keys] == [["1/8", "1/4", "1/2"]]
    assert [k.spec for k in load_sweep("M").keys] == [[32, 64, 128, 256]]
    assert [k.key for k in load_sweep("cfg").keys] == ["method.cfg_scale"]
    assert [k.key for k in load_sweep("seeds").keys] == ["seed"]
    plan = build_plan("shortcut", "smoke", [], ["k"])
    assert [t.values for t in plan.trials] == [{"method.k": 0.125}, {"method.k": 0.25}, {"method.k": 0.5}]
    assert plan.times == {"method.k": "training"}
    assert [t.points[0].cfg["method"]["k"] for t in plan.trials] == [0.125, 0.25, 0.5]
    plan = build_plan("shortcut", "digits", [], ["M"])
    assert [t.points[0].cfg["method"]["M"] for t in plan.trials] == [32, 64, 128, 256]


def test_cfg_scale_is_sampling_time_for_flow_matching_and_training_time_for_the_shortcut():
    # flow matching: one trained model evaluated at the 4 scales of sweeps/cfg.toml
    fm = build_plan("flow_matching", "digits", [], ["cfg"])
    assert fm.times == {"method.cfg_scale": "sampling"}
    assert len(fm.trials) == 1
    assert [p.cfg["method"]["cfg_scale"] for p in fm.trials[0].points] == [1.0, 1.5, 2.0, 3.0]
    # the shortcut bakes w into its bootstrap targets: one model per scale
    sc = build_plan("shortcut", "digits", [], ["cfg"])
    assert sc.times == {"method.cfg_scale": "training"}
    assert [len(t.points) for t in sc.trials] == [1, 1, 1, 1]
    assert any("training-time for shortcut" in n for n in sc.notes)


def test_eval_keys_can_be_sampling_time_and_train_keys_cannot(tmp_path):
    f = write(tmp_path / "ns.toml", """
        [keys."eval.num_samples"]
        grid = [200, 400]
        time = "sampling"
        """)
    plan = build_plan("shortcut", "smoke", [], [f])
    assert len(plan.trials) == 1 and len(plan.trials[0].points) == 2
    bad = write(tmp_path / "bad.toml", """
        [keys."train.lr"]
        grid = [1e-3, 1e-4]
        time = "sampling"
        """)
    with pytest.raises(BenchError, match="fixed before training"):
        build_plan("shortcut", "smoke", [], [bad])


def test_sweeps_cross_and_seeds_are_spread_not_coloured():
    plan = build_plan("shortcut", "smoke", [], ["k", "seeds"])
    assert len(plan.trials) == 9
    assert {(t.values["method.k"], t.values["seed"]) for t in plan.trials} == {
        (k, s) for k in (0.125, 0.25, 0.5) for s in (0, 1, 2)}
    assert {t.points[0].cfg["seed"] for t in plan.trials} == {0, 1, 2}
    assert plan.report_keys == ["method.k"]
    assert plan.experiment == "smoke-k+seeds-shortcut"


def test_random_draws_are_seeded_and_inside_their_range(tmp_path):
    f = write(tmp_path / "lr.toml", """
        samples = 5
        seed = 3
        [keys."train.lr"]
        loguniform = [1e-4, 1e-2]
        time = "training"
        [keys."model.depth"]
        choice = [2, 3]
        time = "training"
        [keys."method.k"]
        grid = [0.25, 0.5]
        time = "training"
        """)
    a = build_plan("shortcut", "smoke", [], [f])
    b = build_plan("shortcut", "smoke", [], [f])
    assert len(a.trials) == 10  # 5 draws x 2 grid values
    lrs = [t.values["train.lr"] for t in a.trials]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and len(set(lrs)) == 5
    assert {t.values["model.depth"] for t in a.trials} <= {2, 3}
    assert a.hash() == b.hash() and lrs == [t.values["train.lr"] for t in b.trials]


def test_threads_follow_the_trials_cpu_share(tmp_path):
    two = write(tmp_path / "two.toml", """
        [keys."method.k"]
        grid = [0.25]
        time = "training"
        [resources]
        cpus = 2
        gpus = 0.5
        """)
    plan = build_plan("shortcut", "smoke", [], [two])
    assert (plan.cpus, plan.gpus, plan.threads) == (2.0, 0.5, 2)
    assert plan.trials[0].points[0].cfg["train"]["threads"] == 2
    half = write(tmp_path / "half.toml", """
        [keys."method.k"]
        grid = [0.25]
        time = "training"
        [resources]
        cpus = 0.5
        """)
    assert build_plan("shortcut", "smoke", [], [half]).threads == 1
    # without [resources]: train.threads (the smoke profile says 1; --set raises it)
    assert build_plan("shortcut", "smoke", ["train.threads=2"], ["k"]).cpus == 2.0


def test_relative_data_paths_become_absolute(tmp_path):
    plan = build_plan("flow_matching", "smoke", [], ["seeds"], data_spec="npz:data/points.npz")
    assert plan.trials[0].points[0].cfg["data"]["spec"] == f"npz:{tmp_path / 'data' / 'points.npz'}"


@pytest.mark.parametrize("text, message", [
    ("[keys.\"method.k\"]\ngrid = [0.25]\n", "time must be"),
    ("[keys.\"method.kk\"]\ngrid = [0.25]\ntime = \"training\"\n", "Unknown config key"),
    ("[keys.\"method.k\"]\nuniform = [0.5, 0.25]\ntime = \"training\"\n", "low < high"),
    ("[keys.\"method.k\"]\ngrid = []\ntime = \"training\"\n", "non-empty list"),
    ("[keys.\"method.k\"]\ngrid = [0.25]\nchoice = [0.5]\ntime = \"training\"\n", "exactly one of"),
    ("[keys.\"method.M\"]\ngrid = [3]\ntime = \"training\"\n", "power of two"),
    ("[keys.\"method.k\"]\ngrid = [0.25, 0.25]\ntime = \"training\"\n", "same training configuration twice"),
    ("description = \"nothing swept\"\n", "sweeps no keys"),
    ("[keys.\"method.k\"\ngrid = [0.25]\n", "not valid TOML"),
    ("[keys.\"method.k\"]\ngrid = [0.25]\ntime = \"training\"\n[resources]\ncpus = 0\n", "resources.cpus"),
])
def test_bad_sweep_files_say_why(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(BenchError, match=message):
        build_plan("shortcut", "smoke", [], [str(f)])


def test_unknown_sweep_and_conflicts(tmp_path):
    with pytest.raises(BenchError, match="Unknown sweep 'kk'.*Did you mean k"):
        build_plan("shortcut", "smoke", [], ["kk"])
    with pytest.raises(BenchError, match="does not exist"):
        build_plan("shortcut", "smoke", [], [str(tmp_path / "missing.toml")])
    with pytest.raises(BenchError, match="both swept .* and set with --set"):
        build_plan("shortcut", "smoke", ["k=0.5"], ["k"])
    with pytest.raises(BenchError, match="swept by both"):
        build_plan("shortcut", "smoke", [], ["k", "k"])


def test_unreachable_ray_address_is_one_sentence_and_writes_nothing(tmp_path, isolated_store):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([BENCH, "run", "-m", "shortcut", "-p", "smoke", "--sweep", "k", "--address", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: The Ray cluster at 127.0.0.1:{port} is unreachable (Connection refused)."]
    assert not isolated_store.exists()


# ----------------------------------------------------------------------------- evaluate a checkpoint (no Ray)


@pytest.mark.slow
def test_evaluating_a_checkpoint_reproduces_its_run_and_applies_sampling_settings():
    from dataclasses import replace

    from bench.config import resolve
    from bench.train.run import checkpoint_dir, evaluate_checkpoint, execute

    cfg = resolve("flow_matching", "digits", TINY + ["model.hidden=64"])
    trained = execute(cfg, "ckpt", progress=False, echo=lambda *a: None)
    final = checkpoint_dir(trained.run_id) / "final.pt"
    # the same configuration on the same weights and evaluation seed: the very same numbers
    again = evaluate_checkpoint(cfg, final, "ckpt", progress=False, echo=lambda *a: None)
    assert again.run_id != trained.run_id
    assert {n: m["fid"] for n, m in again.results.items()} == {n: m["fid"] for n, m in trained.results.items()}
    # a sampling-time change (CFG at w = 3) gives other samples, same layout
    guided = evaluate_checkpoint(replace(cfg, method=replace(cfg.method, cfg_scale=3.0)), final, "ckpt", progress=False,
                                 echo=lambda *a: None)
    assert sorted(guided.results) == [1, 2, 4]
    assert guided.results[4]["fid"] != trained.results[4]["fid"]
    with pytest.raises(BenchError, match="another method, model or data"):
        evaluate_checkpoint(replace(cfg, model=replace(cfg.model, hidden=32)), final, "ckpt", progress=False)


# ----------------------------------------------------------------------------- on Ray (slow)


def _store_client():
    from bench.store.tracking import client

    return client()


def _children(c, experiment: str):
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'")
    parents = c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'parent'")
    return runs, parents


def _ray_processes(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (our own Ray temp dir)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(pid))
            except OSError:
                pass
    return out


@pytest.fixture
def own_ray_tmp(monkeypatch):
    """RAY_TMPDIR of this test only (short: Ray's socket paths must stay under 107 bytes)."""
    d = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    os.makedirs(os.path.join(d, "ray"))  # where Ray writes the address of a cluster it starts
    monkeypatch.setenv("RAY_TMPDIR", d)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield d
    for pid in _ray_processes(d):  # never expected; do not leave anything behind if it happens
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_sampling_time_sweep_on_local_ray_trains_once_and_leaves_nothing_running(tmp_path, own_ray_tmp):
    from bench.sweep.tune import run_sweep

    f = write(tmp_path / "w.toml", """
        [keys."method.cfg_scale"]
        grid = [1.0, 2.5]
        time = "sampling"
        """)
    plan = build_plan("flow_matching", "digits", TINY, [f])
    out = run_sweep(plan, progress=False, echo=lambda *a: None)
    assert out.status == "FINISHED"
    c = _store_client()
    runs, parents = _children(c, plan.experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["sweep.values.method.cfg_scale"] == "1,2.5"
    assert parent.data.params["sweep.time.method.cfg_scale"] == "sampling"
    assert "sweep.file.w" in parent.data.params
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert {r.data.params["method.cfg_scale"] for r in runs} == {"1.0", "2.5"}
    trainers = [r for r in runs if "train/loss" in r.data.metrics]
    evaluators = [r for r in runs if "train/loss" not in r.data.metrics]
    assert len(trainers) == 1 and len(evaluators) == 1  # one model trained, evaluated at both scales
    assert evaluators[0].data.tags["sweep.trained_in"] == trainers[0].info.run_id
    for r in runs:  # same layout as a single run: fid at step = n
        assert [m.step for m in c.get_metric_history(r.info.run_id, "fid")] == [1, 2, 4]
        assert r.data.tags["sweep.keys"] == "method.cfg_scale"
    assert _ray_processes(own_ray_tmp) == []
    assert [p for p in os.listdir(own_ray_tmp) if p.startswith("bench-sweep-")] == []  # its temp dir is gone too


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster_places_trials_on_both(tmp_path, own_ray_tmp):
    import ray
    from ray.cluster_utils import Cluster

    from bench.sweep.tune import run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": own_ray_tmp, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        f = write(tmp_path / "k2.toml", """
            [keys."method.k"]
            grid = [0.25, 0.5]
            time = "training"
            [resources]
            cpus = 1
            """)
        plan = build_plan("shortcut", "smoke", TINY, [f])
        out = run_sweep(plan, address=cluster.address, progress=False, echo=lambda *a: None)
        assert out.status == "FINISHED"
        assert not ray.is_initialized()  # the driver disconnected; the cluster is still there
        nodes = {n.node_id for n in cluster.list_all_nodes()}
        assert len(nodes) == 2
        runs, _ = _children(_store_client(), plan.experiment)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["sweep.node"] for r in runs} == nodes  # one trial on each node (1 CPU each)
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_killed_driver_resumes_unfinished_trials_in_their_own_runs(tmp_path, own_ray_tmp, isolated_store):
    """A short trial finishes, a long one is mid-training when the driver gets SIGKILL; --resume
    must continue the long one from its last checkpoint in the same MLflow run and leave the
    short one alone."""
    from bench.train.run import checkpoint_dir
    from bench.store.tracking import client
    import torch

    f = write(tmp_path / "steps.toml", """
        [keys."train.steps"]
        grid = [100, 3000]
        time = "training"
        [resources]
        cpus = 1
        """)
    args = [BENCH, "run", "-m", "shortcut", "-p", "smoke", "--sweep", f, "-q",
            *[a for s in TINY if not s.startswith("train.steps") and not s.startswith("train.checkpoint")
              for a in ("--set", s)], "--set", "train.checkpoint_every=300", "--set", "train.threads=1"]
    experiment = "smoke-steps-shortcut"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    c = None
    short = long_ = None
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            if "parent run" not in (tmp_path / "driver.log").read_text():
                continue  # opening the store while the driver creates it would race its migrations
            c = c or client()
            exp = c.get_experiment_by_name(experiment)
            if exp is None:
                continue
            runs = {r.data.params.get("train.steps"): r for r in c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'")}
            short, long_ = runs.get("100"), runs.get("3000")
            if (short and long_ and short.info.status == "FINISHED" and long_.info.status == "RUNNING"
                    and (checkpoint_dir(long_.info.run_id) / "last.pt").is_file()):
                break
        else:
            pytest.fail("the sweep did not reach the state to kill it in")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
    short_end = short.info.end_time
    short_final = checkpoint_dir(short.info.run_id) / "final.pt"
    short_mtime = short_final.stat().st_mtime_ns
    killed_at = torch.load(checkpoint_dir(long_.info.run_id) / "last.pt", weights_only=False)["step"]
    assert 300 <= killed_at < 3000
    for _ in range(100):  # Ray's processes die with their driver
        if not _ray_processes(own_ray_tmp):
            break
        time.sleep(0.2)
    assert _ray_processes(own_ray_tmp) == []

    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr

    runs, parents = _children(c, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent, finished
    assert len(runs) == 2  # no second run for either trial
    exp = c.get_experiment_by_name(experiment)
    assert c.search_runs([exp.experiment_id], "attributes.status != 'FINISHED'") == []  # nothing left RUNNING
    by_steps = {r.data.params["train.steps"]: r for r in runs}
    s, l = by_steps["100"], by_steps["3000"]
    assert s.info.run_id == short.info.run_id and l.info.run_id == long_.info.run_id
    # the finished trial was not run again
    assert s.info.end_time == short_end and short_final.stat().st_mtime_ns == short_mtime
    assert s.data.tags["sweep.attempts"] == "1"
    # the killed one continued from a checkpoint it had written, in its own run
    assert l.data.tags["sweep.attempts"] == "2"
    resumed_at = int(l.data.tags["sweep.resumed_at_step"])
    assert resumed_at >= killed_at and resumed_at % 300 == 0
    loss_steps = [m.step for m in c.get_metric_history(l.info.run_id, "train/loss")]
    assert sorted(loss_steps) == list(range(50, 3001, 50))  # full curve, each point once
    assert sorted(m.step for m in c.get_metric_history(l.info.run_id, "fid")) == [1, 2, 4]
    assert torch.load(checkpoint_dir(l.info.run_id) / "last.pt", weights_only=False)["step"] == 3000
    assert (checkpoint_dir(l.info.run_id) / "final.pt").is_file()
    # each Ray trial's own checkpoint names its MLflow run
    import json

    assert len(list((isolated_store / "ray").glob("sweep-*"))) == 1  # the Tune experiment was restored, not redone
    ray_dirs = list((isolated_store / "ray").glob("sweep-*/trial_*"))
    held = set()
    for d in ray_dirs:
        ckpts = sorted(d.glob("checkpoint_*"))
        assert ckpts, d
        held |= set(json.loads((ckpts[-1] / "runs.json").read_text()).values())
    assert held == {s.info.run_id, l.info.run_id}
    assert _ray_processes(own_ray_tmp) == []
