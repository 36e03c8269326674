"""The FID floor (bench.evaluation.metrics.fid_floor): what a perfect sampler scores at N samples against a
finite reference set. Checked against fresh draws from a known Gaussian, where the floor can be
measured directly; logged by every run and printed under the report's table."""

from __future__ import annotations

import numpy as np
import pytest

from bench.evaluation.metrics import fid_floor, frechet_distance


def gaussian(rng: np.random.Generator, dim: int):
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    cov = a @ a.T + 0.1 * np.eye(dim)
    mean = rng.normal(size=dim)
    return lambda n: rng.multivariate_normal(mean, cov, size=n)


@pytest.mark.parametrize("n_ref, num_samples", [(600, 900), (300, 1500)])
def test_the_fresh_floor_matches_fresh_samples_of_the_reference_distribution(n_ref, num_samples):
    rng = np.random.default_rng(0)
    draw = gaussian(rng, 8)
    est, fresh, copy = [], [], []
    for _ in range(6):  # the floor is an expectation over reference sets too: several of them
        ref = draw(n_ref)
        floor = fid_floor(ref, num_samples, splits=16)
        est.append(floor["fid_floor_fresh"])
        copy.append(floor["fid_floor_copy"])
        # measured: FID of fresh samples of the same distribution against this reference set
        fresh += [frechet_distance(draw(num_samples), ref) for _ in range(15)]
    est, fresh, copy = np.mean(est), np.mean(fresh), np.mean(copy)
    assert est == pytest.approx(fresh, rel=0.15)
    # 1/N alone (the reference side's error left out) would be more than twice as far off
    share = (1 / num_samples) / (1 / num_samples + 1 / n_ref)
    assert abs(share * est - fresh) > 2 * abs(est - fresh)
    # copies of the reference carry only the sample side's error: about c / N, well under fresh data
    assert copy == pytest.approx(share * est, rel=0.35) and copy < est


def test_the_sd_of_one_run_matches_the_spread_of_simulated_perfect_sampler_runs():
    """fid_floor_fresh_sd against the measured sd of FID(num_samples fresh samples, a fresh reference
    set of n_ref) from a known Gaussian; the s.e. of the floor's mean is several times smaller."""
    rng = np.random.default_rng(3)
    draw = gaussian(rng, 8)
    n_ref, num_samples = 600, 900
    floors = [fid_floor(draw(n_ref), num_samples, splits=32) for _ in range(6)]
    sd = np.mean([f["fid_floor_fresh_sd"] for f in floors])
    runs = np.array([frechet_distance(draw(num_samples), draw(n_ref)) for _ in range(300)])  # independent perfect runs
    assert sd == pytest.approx(runs.std(ddof=1), rel=0.2)
    # the floor is the runs' mean within a few sd of its own estimate; one run is spread about it by sd
    assert np.mean([f["fid_floor_fresh"] for f in floors]) == pytest.approx(runs.mean(), rel=0.1)
    # the s.e. (Monte-Carlo error of the mean over splits) is no run's spread: sqrt(32) times smaller
    se = np.mean([f["fid_floor_fresh_se"] for f in floors])
    assert se < runs.std(ddof=1) / 4 and se == pytest.approx(sd / np.sqrt(32), rel=1e-9)
    # a fixed reference set alone would understate it: the sd covers the reference's draw too
    ref = draw(n_ref)
    fixed = np.array([frechet_distance(draw(num_samples), ref) for _ in range(150)]).std(ddof=1)
    assert fixed < 0.9 * runs.std(ddof=1)


def test_the_floor_falls_with_more_samples_and_is_deterministic():
    ref = gaussian(np.random.default_rng(1), 4)(500)
    small, large = fid_floor(ref, 200), fid_floor(ref, 5000)
    assert large["fid_floor_fresh"] < small["fid_floor_fresh"] and large["fid_floor_copy"] < small["fid_floor_copy"]
    assert fid_floor(ref, 200) == small
    assert 0 < small["fid_floor_fresh_se"] < small["fid_floor_fresh"] / 4  # 64 splits for 4-d features
    assert fid_floor(ref, 200, splits=4)["fid_floor_fresh_se"] > small["fid_floor_fresh_se"]


def test_no_floor_where_a_half_of_the_reference_cannot_hold_a_covariance():
    assert fid_floor(np.zeros((40, 20)), 100) == {}


def test_a_run_logs_its_floor_and_the_report_prints_it(tmp_path):
    from bench.config import resolve
    from bench.report import collect, fid_table, write_report
    from bench.train.run import execute
    from bench.store.tracking import client

    said = []
    cfg = resolve("flow_matching", "smoke", ["train.steps=20", "eval.num_samples=500", "eval.batch_size=500",
                                             "method.M=4"])
    out = execute(cfg, "floor", progress=False, echo=said.append)
    metrics = client().get_run(out.run_id).data.metrics
    # 10,000 reference points against 500 samples: the sample side's error is nearly all of it
    assert metrics["fid_floor_copy"] == pytest.approx(metrics["fid_floor_fresh"] * (1 / 500) / (1 / 500 + 1 / 10_000), rel=0.3)
    assert any(s.startswith("FID floor at 500 samples against the 10000 reference rows") for s in said)
    again = execute(cfg, "floor", progress=False, echo=lambda *_: None)  # the cached floor is the same
    assert client().get_run(again.run_id).data.metrics["fid_floor_fresh"] == metrics["fid_floor_fresh"]
    table = fid_table(collect("floor"))
    assert (f"{metrics['fid_floor_fresh']:.3g} (one perfect-sampler run against this reference set lands within "
            f"± {metrics['fid_floor_fresh_sd_fixed_ref']:.2g} of it (1 sd), ± {metrics['fid_floor_fresh_sd']:.2g} with the "
            f"reference set drawn anew too") in table
    assert "(coords, 500 samples)" in table and metrics["fid_floor_fresh_sd"] > metrics["fid_floor_fresh_se"]
    assert "table.md" in {p.name for p in write_report("floor", tmp_path / "out")}


def test_the_report_shades_the_floor_plus_minus_one_runs_sd():
    import pandas as pd

    from bench.files.plots import pyplot
    from bench.report import draw_floor

    plt = pyplot()
    fig, ax = plt.subplots()
    draw_floor(ax, pd.DataFrame({"fresh": [3.5], "fresh_sd": [1.25], "fresh_se": [0.2], "copy": [1.7]}), 1.0, 100.0)
    assert len(ax.patches) == 1  # the band: floor ± sd, in data units on y
    band = ax.patches[0]
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert min(ys) == pytest.approx(2.25) and max(ys) == pytest.approx(4.75)
    assert [ln.get_ydata()[0] for ln in ax.lines] == [3.5]
    plt.close(fig)


def test_the_sd_with_the_reference_held_fixed_matches_simulated_runs_against_one_reference():
    """fid_floor_fresh_sd_fixed_ref against the measured sd of FID(num_samples fresh samples, ONE reference
    set) over fresh sample draws, averaged over several reference sets; it sits under the sd that redraws
    the reference too (both are estimated from the reference rows alone)."""
    rng = np.random.default_rng(5)
    draw = gaussian(rng, 8)
    n_ref, num_samples = 600, 900
    floors = [fid_floor(draw(n_ref), num_samples, splits=32, seed=s) for s in range(6)]
    est = np.mean([f["fid_floor_fresh_sd_fixed_ref"] for f in floors])
    per_reference = []
    for _ in range(8):
        ref = draw(n_ref)
        per_reference.append(np.std([frechet_distance(draw(num_samples), ref) for _ in range(80)], ddof=1))
    assert est == pytest.approx(np.mean(per_reference), rel=0.2)
    assert est < np.mean([f["fid_floor_fresh_sd"] for f in floors])


def test_the_fixed_reference_sd_is_left_out_where_a_sample_set_is_too_small():
    ref = gaussian(np.random.default_rng(6), 40)(200)  # halves of 100 > 40 dims; thirds of the other half: 33
    out = fid_floor(ref, 500, splits=4)
    assert "fid_floor_fresh_sd" in out and "fid_floor_fresh_sd_fixed_ref" not in out
