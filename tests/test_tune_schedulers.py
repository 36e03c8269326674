"""Sweeps that decide: the [tune] table (metric, ASHA, Optuna, seeds), failures as results, and axes that
cannot change anything refused before training.

The planted trials are built to be decided one way: a learning rate of 1e-9 cannot lower the loss in
200 steps while 1e-3 does (so ASHA must cut it), and Adam at lr = 1e6 takes steps of size 1e6 (the loss
must overflow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.sweep.plan import build_plan
from bench.sweep.spec import load_sweep

BENCH = str(Path(sys.executable).with_name("bench"))

# a tiny smoke run: 200 steps, a loss point every 20, few samples, n = 1, 2, 4
TINY = ["train.steps=200", "train.checkpoint_every=100", "train.log_every=20", "eval.num_samples=200",
        "eval.batch_size=200", "eval.save_samples=10", "eval.kid=false", "eval.prc=false", "method.M=4",
        "model.hidden=32", "model.depth=2", "train.batch_size=64"]


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


# ----------------------------------------------------------------------------- the [tune] table (no Ray)


def test_k_as_typed_today_is_the_same_plain_grid():
    plan = build_plan("shortcut", "smoke", [], ["k"])
    assert [t.values for t in plan.trials] == [{"method.k": 0.125}, {"method.k": 0.25}, {"method.k": 0.5}]
    assert [len(t.points) for t in plan.trials] == [1, 1, 1]
    assert (plan.tune.scheduler, plan.tune.search, plan.tune.metric, plan.tune.given) == ("fifo", "grid", None, False)
    assert not plan.drawn_at_run_time and plan.num_trials == 3
    # the hash --resume finds the parent by: a file without [tune] hashes as before it existed
    assert plan.hash() == build_plan("shortcut", "smoke", [], ["k"]).hash()
    from bench.sweep.tune import tune_config

    tc = tune_config(plan)
    assert tc.scheduler is None and tc.search_alg is None and tc.metric is None and tc.num_samples == 1


def test_shipped_asha_and_optuna_files():
    asha = build_plan("shortcut", "digits", ["train.eval_every=250"], ["k_asha"])
    assert asha.tune.scheduler == "asha" and asha.tune.metric == "during/fid_n1"
    # k in {1/8, 1/4, 1/2} x seeds {0, 1, 2}: nine trials, each its own model
    assert sorted((t.values["method.k"], t.values["seed"]) for t in asha.trials) == [
        (k, s) for k in (0.125, 0.25, 0.5) for s in (0, 1, 2)]
    from ray.tune.schedulers import ASHAScheduler

    from bench.sweep.tune import tune_config

    tc = tune_config(asha)
    assert isinstance(tc.scheduler, ASHAScheduler) and tc.scheduler._time_attr == "step"
    km = build_plan("shortcut", "digits", ["train.eval_every=250"], ["kM_asha"])
    assert km.tune.metric == "train/level_ratio" and km.cpus == 1 and km.threads == 1  # two at once on 2 cores
    assert sorted((t.values["method.k"], t.values["method.M"], t.values["seed"]) for t in km.trials) == [
        (k, M, s) for k in (0.125, 0.25, 0.5) for M in (16, 32) for s in (0, 1, 2)]
    assert [m for m, _ in tune_config(km).scheduler._brackets[0]._rungs] == [2000, 1000, 500, 250]  # rungs from 10 %
    # the pre-registered check on fresh seeds: the same axes, reduction 4 (rungs 250 and 1,000), against a FIFO grid
    fresh, grid = (build_plan("shortcut", "digits", ["train.eval_every=250"], [name]) for name in ("kM_asha_fresh", "kM_fresh_grid"))
    assert sorted((t.values["method.k"], t.values["method.M"], t.values["seed"]) for t in fresh.trials) == sorted(
        (t.values["method.k"], t.values["method.M"], t.values["seed"]) for t in grid.trials) == [
        (k, M, s) for k in (0.125, 0.25, 0.5) for M in (16, 32) for s in (3, 4, 5)]
    assert [m for m, _ in tune_config(fresh).scheduler._brackets[0]._rungs] == [1000, 250]
    assert grid.tune.scheduler == "fifo" and tune_config(grid).scheduler is None and fresh.cpus == grid.cpus == 1
    opt = build_plan("shortcut", "digits", [], ["k_optuna"])
    assert opt.drawn_at_run_time and opt.num_trials == opt.tune.num_samples
    assert opt.starts == [{"method.k": 0.25}]  # the paper's k goes first
    from ray.tune.search.optuna import OptunaSearch

    assert opt.hash() == build_plan("shortcut", "digits", [], ["k_optuna"]).hash()  # --resume finds its parent
    limited = tune_config(opt).search_alg  # max_concurrent = 1: Tune's ConcurrencyLimiter around the searcher
    assert limited.max_concurrent == 1 and isinstance(limited.searcher, OptunaSearch)


def test_random_keys_are_drawn_by_tunes_own_samplers(tmp_path):
    f = write(tmp_path / "lr.toml", """
        [keys."train.lr"]
        loguniform = [1e-4, 1e-2]
        time = "training"
        [tune]
        search = "random"
        num_samples = 3
        """)
    import numpy as np
    from ray import tune

    rng = np.random.default_rng(0)  # the file's seed (default 0)
    expected = [tune.loguniform(1e-4, 1e-2).sample(random_state=rng) for _ in range(3)]
    assert [t.values["train.lr"] for t in build_plan("shortcut", "smoke", [], [f]).trials] == pytest.approx(expected)


def test_optuna_checks_every_end_of_its_space_before_anything_runs(tmp_path):
    f = write(tmp_path / "o.toml", """
        [keys."train.lr"]
        loguniform = [1e-4, 1e-2]
        time = "training"
        [keys."model.depth"]
        randint = [2, 4]
        time = "training"
        [tune]
        search = "optuna"
        metric = "train/loss"
        mode = "min"
        num_samples = 5
        """)
    plan = build_plan("shortcut", "smoke", [], [f])
    checked = {(t.values["train.lr"], t.values["model.depth"]) for t in plan.trials}
    assert checked == {(1e-4, 2), (1e-2, 2), (1e-4, 3)}  # randint's high end is exclusive
    # a bad value at an end fails when planning: M must be a power of two
    bad = write(tmp_path / "bad.toml", """
        [keys."method.M"]
        randint = [4, 7]
        time = "training"
        [tune]
        search = "optuna"
        metric = "train/loss"
        mode = "min"
        """)
    with pytest.raises(BenchError, match="power of two"):
        build_plan("shortcut", "smoke", [], [bad])


TUNE = "[keys.\"method.k\"]\ngrid = [0.25, 0.5]\ntime = \"training\"\n[tune]\n"


@pytest.mark.parametrize("tune, message", [
    ("metrik = \"train/loss\"\n", "unknown entries metrik"),
    ("metric = \"loss\"\nmode = \"min\"\n", "must name what a run logs"),
    ("metric = \"train/loss\"\nmode = \"lowest\"\n", "mode must be"),
    ("metric = \"train/loss\"\n", "go together"),
    ("scheduler = \"hyperband\"\n", "scheduler must be one of fifo, asha"),
    ("scheduler = \"asha\"\n", "decides by a metric"),
    ("search = \"bayes\"\n", "search must be one of grid, random, optuna"),
    ("grace_period = 10\nmetric = \"train/loss\"\nmode = \"min\"\n", "ASHA setting"),
    ("scheduler = \"asha\"\nmetric = \"train/loss\"\nmode = \"min\"\ngrace_period = 0\n", "grace_period must be an integer >= 1"),
    ("scheduler = \"asha\"\nmetric = \"train/loss\"\nmode = \"min\"\nreduction_factor = 1\n", "reduction_factor must be a number > 1"),
    ("scheduler = \"asha\"\nmetric = \"train/loss\"\nmode = \"min\"\ngrace_period = 500\nmax_t = 100\n", "must not exceed"),
    ("num_samples = 4\n", "needs search"),
    ("seeds = [0, 0]\n", "distinct integers"),
    ("seeds = [0]\nsearch = \"optuna\"\nmetric = \"train/loss\"\nmode = \"min\"\n", "not supported"),
    ("points_to_evaluate = [{k = 0.25}]\n", "starting points of search"),
    ("search = \"optuna\"\nmetric = \"train/loss\"\nmode = \"min\"\npoints_to_evaluate = [{k = 0.3}]\n", "outside"),
    ("search = \"optuna\"\nmetric = \"train/loss\"\nmode = \"min\"\npoints_to_evaluate = [{lr = 0.3}]\n", "does not draw"),
    ("scheduler = \"asha\"\nmetric = \"fid_n1\"\nmode = \"min\"\n", "known only when a trial ends"),
    ("metric = \"during/fid_n1\"\nmode = \"min\"\n", "train.eval_every > 0"),
    ("metric = \"fid_n3\"\nmode = \"min\"\n", "n = 3"),
])
def test_bad_tune_tables_say_why(tmp_path, tune, message):
    f = tmp_path / "bad.toml"
    f.write_text(TUNE + tune)
    with pytest.raises(BenchError, match=message):
        build_plan("shortcut", "smoke", ["method.M=4"], [str(f)])


def test_seeds_repeat_each_configuration():
    sweep = load_sweep("k_asha")
    assert [k.key for k in sweep.keys][-1] == "seed"
    plan = build_plan("shortcut", "digits", ["train.eval_every=250"], ["k_asha"])
    assert len({t.key for t in plan.trials}) == 9


# ----------------------------------------------------------------------------- axes that change nothing


@pytest.mark.parametrize("method, profile, sets, sweep, message", [
    ("flow_matching", "smoke", [], "cfg", "method.cfg_scale on toy:eight_gaussians changes nothing"),
    ("shortcut", "smoke", [], "cfg", "the data have no labels"),
    ("flow_matching", "digits", ["data.labels=false"], "cfg", "the data have no labels"),
    ("flow_matching", "digits", ["method.time_sampling=uniform"], "M", "does not use M"),
    ("meanflow", "digits", [], "M", "does not use M"),
])
def test_no_op_axes_are_refused(method, profile, sets, sweep, message):
    with pytest.raises(BenchError, match=message):
        build_plan(method, profile, sets, [sweep])


def test_axes_that_do_change_the_model_are_kept():
    assert len(build_plan("flow_matching", "digits", [], ["M"]).trials) == 4  # t on the grid {0, 1/M, ...}
    assert len(build_plan("shortcut", "digits", [], ["M"]).trials) == 4
    assert len(build_plan("flow_matching", "digits", [], ["cfg"]).trials[0].points) == 4


def test_refusal_exits_2_before_any_run(isolated_store):
    r = subprocess.run([BENCH, "run", "-m", "shortcut", "-p", "smoke", "--sweep", "cfg"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "changes nothing" in r.stderr
    assert not isolated_store.exists()  # no tracking store, no run


# ----------------------------------------------------------------------------- on Ray (slow)


@pytest.fixture
def own_ray_tmp(monkeypatch):
    import os
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="bt-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    os.makedirs(os.path.join(d, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", d)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _trial_runs(experiment: str):
    from bench.store.tracking import client

    c = client()
    exp = c.get_experiment_by_name(experiment)
    return {r.data.params["train.lr"]: r for r in c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'")}


@pytest.mark.slow
def test_asha_stops_a_hopeless_trial(tmp_path, own_ray_tmp):
    from bench.sweep.tune import run_sweep

    f = write(tmp_path / "lr_asha.toml", """
        [keys."train.lr"]
        grid = [1e-3, 2e-3, 1e-9]   # the last cannot learn in 200 steps; it reaches each rung after the others
        time = "training"
        [resources]
        cpus = 1
        [tune]
        metric = "train/loss"
        mode = "min"
        scheduler = "asha"
        grace_period = 40
        reduction_factor = 2
        max_concurrent = 1
        """)
    plan = build_plan("flow_matching", "smoke", TINY, [f])
    out = run_sweep(plan, num_cpus=2, progress=False, echo=lambda *a: None)
    by_lr = {format(r["train.lr"], "g"): r for r in out.rows}
    assert by_lr["1e-09"]["outcome"] == "stopped" and int(by_lr["1e-09"]["outcome_step"]) < 200
    assert by_lr["0.001"]["outcome"] == "finished" and by_lr["0.001"]["fid"]
    runs = _trial_runs(plan.experiment)
    hopeless = runs["1e-09"]
    assert hopeless.info.status == "KILLED"  # not left RUNNING
    assert hopeless.data.tags["sweep.outcome"] == "stopped"
    assert int(hopeless.data.tags["sweep.stopped_at_step"]) < 200
    assert "fid" not in hopeless.data.metrics  # never evaluated
    assert runs["0.001"].info.status == "FINISHED" and runs["0.001"].data.tags["sweep.outcome"] == "finished"


@pytest.mark.slow
def test_a_diverging_trial_is_a_result_and_the_sweep_exits_0(tmp_path, own_ray_tmp, isolated_store):
    f = write(tmp_path / "lr_div.toml", """
        [keys."train.lr"]
        grid = [1e-3, 1e6]   # Adam at 1e6: the loss overflows within a few steps
        time = "training"
        [resources]
        cpus = 1
        """)
    args = [BENCH, "run", "-m", "flow_matching", "-p", "smoke", "--sweep", f, "-q",
            *[a for s in TINY for a in ("--set", s)]]
    r = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    failed_line = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("1e+06")]
    assert len(failed_line) == 1 and "failed at step" in failed_line[0] and "FAILED" in failed_line[0]
    runs = _trial_runs("smoke-lr_div-flow_matching")
    bad, good = runs["1000000.0"], runs["0.001"]
    assert bad.info.status == "FAILED"
    assert bad.data.tags["sweep.outcome"] == "failed" and bad.data.tags["failure.reason"] == "nonfinite"
    assert 0 < int(bad.data.tags["failure.step"]) <= 200
    assert good.info.status == "FINISHED" and good.data.tags["sweep.outcome"] == "finished"
    from bench.store.tracking import client

    c = client()
    exp = c.get_experiment_by_name("smoke-lr_div-flow_matching")
    parent = c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'parent'")[0]
    assert parent.info.status == "FINISHED"  # every trial decided: nothing for --resume to continue


def test_a_sweep_stops_failing_trials_unless_told_to_warn():
    from bench.sweep.plan import build_plan

    plan = build_plan("shortcut", "smoke", [], ["k"])
    assert {p.cfg["train"]["failure_rule"] for t in plan.trials for p in t.points} == {"stop"}
    plan = build_plan("shortcut", "smoke", ["train.failure_rule=warn"], ["k"])
    assert {p.cfg["train"]["failure_rule"] for t in plan.trials for p in t.points} == {"warn"}
