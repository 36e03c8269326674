"""`bench report` on a sweep: FID against the swept value at n = 1, 4 and M, mean and spread over
seeds. Runs are written straight into a fresh store with hand-picked FIDs; the expected means and
standard deviations are worked out by hand below."""

from __future__ import annotations

import math

import pytest

from bench.report import collect, swept_table, write_report
from bench.store.tracking import Tracker


def add_run(experiment: str, key: str, value, seed: int, fids: dict[int, float]) -> None:
    t = Tracker(experiment, tags={"method": "shortcut", "sweep.keys": key, "sweep.role": "trial"})
    t.log_params({key: value, "seed": seed, "eval.num_samples": 100, "eval.feature_space": "coords"})
    for n, v in fids.items():
        t.log_metrics({"fid": v}, step=n)
    t.end("FINISHED")


def test_k_sweep_over_two_seeds_gives_mean_and_sd_at_1_4_and_M():
    # method.k = 0.125: seed 0 / seed 1          method.k = 0.5: seed 0 / seed 1
    add_run("kx", "method.k", 0.125, 0, {1: 0.30, 2: 0.9, 4: 0.20, 8: 0.10})
    add_run("kx", "method.k", 0.125, 1, {1: 0.50, 2: 0.9, 4: 0.20, 8: 0.30})
    add_run("kx", "method.k", 0.5, 0, {1: 0.70, 2: 0.9, 4: 0.40, 8: 0.05})
    add_run("kx", "method.k", 0.5, 1, {1: 0.90, 2: 0.9, 4: 0.60, 8: 0.15})
    parent = Tracker("kx", tags={"sweep.role": "parent", "sweep.keys": "method.k"})  # no metrics: not a line
    parent.end("FINISHED")
    t = swept_table(collect("kx")).set_index(["method.k", "at"])
    sd = math.sqrt(0.02)  # two values 0.1 apart from their mean: sqrt((0.01 + 0.01) / (2 - 1))
    expected = {
        (0.125, "n = 1"): (0.40, sd), (0.125, "n = 4"): (0.20, 0.0), (0.125, "n = M"): (0.20, sd),
        (0.5, "n = 1"): (0.80, sd), (0.5, "n = 4"): (0.50, sd), (0.5, "n = M"): (0.10, math.sqrt(0.005)),
    }
    assert set(t.index) == set(expected)
    for idx, (mean, std) in expected.items():
        assert t.loc[idx, "mean"] == pytest.approx(mean)
        assert t.loc[idx, "std"] == pytest.approx(std)
        assert t.loc[idx, "count"] == 2


def test_M_sweep_takes_each_runs_own_largest_n(tmp_path):
    add_run("mx", "method.M", 2, 0, {1: 1.0, 2: 0.5})
    add_run("mx", "method.M", 8, 0, {1: 0.9, 2: 0.6, 4: 0.3, 8: 0.1})
    t = swept_table(collect("mx")).set_index(["method.M", "at"])["mean"].to_dict()
    assert t == pytest.approx({(2.0, "n = 1"): 1.0, (2.0, "n = M"): 0.5,
                               (8.0, "n = 1"): 0.9, (8.0, "n = 4"): 0.3, (8.0, "n = M"): 0.1})
    written = {p.name for p in write_report("mx", tmp_path / "out")}
    assert {"fid_vs_steps.png", "fid_vs_swept.png", "fid_vs_swept.csv", "metrics.csv"} <= written
    assert (tmp_path / "out" / "fid_vs_swept.png").stat().st_size > 10_000


def test_runs_of_several_methods_get_no_swept_plot(tmp_path):
    for method in ("shortcut", "flow_matching"):
        t = Tracker("plain", tags={"method": method})
        t.log_params({"seed": 0, "eval.num_samples": 100, "eval.feature_space": "coords"})
        t.log_metrics({"fid": 1.0}, step=1)
        t.end("FINISHED")
    assert "fid_vs_swept.png" not in {p.name for p in write_report("plain", tmp_path / "o")}
