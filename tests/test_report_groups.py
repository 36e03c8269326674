"""`bench report` never pools unlike runs: a group is every run with the same method, dataset,
profile and config, only the seed differs; groups are labelled by what differs. Cells are
mean ± half-width of the 95 % Student-t interval, worked out by hand below."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report import collect, fid_table, group_keys, mean_ci, ratio_table, write_report, write_reports
from bench.store.tracking import Tracker

T_975_2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)


def add_run(experiment: str, method: str, spec: str, seed: int, fids: dict[int, float], **params) -> str:
    t = Tracker(experiment, tags={"method": method, "dataset": spec, "profile": "smoke"})
    t.log_params({"seed": seed, "eval.seed": 10_007 + seed, "data.spec": spec, "data.fingerprint": f"fp-{spec}",
                  "eval.num_samples": 100, "eval.feature_space": "coords", "method.M": 8, "budget.train_steps": 10,
                  "budget.forward_rows_per_step": 4, "budget.backward_rows_per_step": 4, "budget.nograd_rows_per_step": 0,
                  **params})
    for n, v in fids.items():
        t.log_metrics({"fid": v}, step=n)
    t.end("FINISHED")
    return t.run_id


def test_a_mixed_experiment_keeps_methods_and_datasets_apart_with_t_intervals(tmp_path):
    for seed, v in enumerate((1.0, 2.0, 3.0)):
        add_run("mixed", "shortcut", "toy:eight_gaussians", seed, {1: v, 4: 0.5, 8: 0.25}, **{"method.k": 0.25})
    add_run("mixed", "shortcut", "toy:checkerboard", 0, {1: 4.0, 4: 0.7, 8: 0.3}, **{"method.k": 0.25})
    add_run("mixed", "flow_matching", "toy:eight_gaussians", 0, {1: 5.0, 4: 0.6, 8: 0.2})
    df = collect("mixed")
    assert df.attrs["group_keys"] == ["method", "data.spec"]
    # labels: the method plus what differs from the defaults (data.spec's default is digits)
    fm, sc8, scc = ("flow_matching: data.spec=toy:eight_gaussians", "shortcut: data.spec=toy:eight_gaussians",
                    "shortcut: data.spec=toy:checkerboard")
    assert sorted(df["group"].unique()) == [fm, scc, sc8]
    rows = {ln.split(" | ")[0].strip("| "): ln.strip("|").split(" | ") for ln in fid_table(df).splitlines()[2:5]}
    # 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) * 1 / sqrt(3) = 2.484
    assert rows[sc8][1:] == ["8", "0.25 ± 0", "0.5 ± 0", "2 ± 2.5", "3 "]
    assert rows[scc][1:] == ["8", "0.3", "0.7", "4", "1 "]
    assert rows[fm][1:] == ["8", "0.2", "0.6", "5", "1 "]
    assert "95 % Student-t interval" in fid_table(df)
    # shortcut over flow matching, only for the dataset both ran: 2 / 5, 0.5 / 0.6, 0.25 / 0.2
    ratio = ratio_table(df, "shortcut", "flow_matching").splitlines()
    assert ratio[2] == f"| {sc8} | 3 / 1 | 0.4 | 0.833 | 1.25 |" and ratio[3] == ""
    m, h, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(T_975_2 / math.sqrt(3))
    written = {p.name for p in write_report("mixed", tmp_path / "out")}
    assert {"fid_vs_steps.png", "fid_vs_steps.svg", "fid_vs_compute.png", "fid_vs_compute.svg", "table.md"} <= written
    csv = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert csv.groupby("group")["run_id"].nunique().to_dict() == {fm: 1, scc: 1, sc8: 3}
    assert csv.drop_duplicates("group").set_index("group")["data.spec"].to_dict() == {  # every key stays in the CSV
        fm: "toy:eight_gaussians", scc: "toy:checkerboard", sc8: "toy:eight_gaussians"}


def test_cells_have_no_exponent():
    from bench.report.tables import format_ci

    assert format_ci(439.4, 940.0) == "439.4 ± 940" and format_ci(197.04, 7.6) == "197 ± 7.6"
    assert format_ci(0.0123, 0.00045) == "0.0123 ± 0.00045" and format_ci(3.5, math.nan) == "3.5"


def test_a_single_run_has_no_interval():
    assert mean_ci([0.7]) == (0.7, pytest.approx(float("nan"), nan_ok=True), 1)
    assert math.isnan(mean_ci([0.7])[1])


def test_labels_name_every_config_key_that_differs_and_derived_ones_only_when_needed():
    a = {"method": "shortcut", "data.spec": "toy:a", "method.k": "0.25", "data.fingerprint": "1", "train.steps": "10"}
    b = {**a, "data.spec": "toy:b", "method.k": "0.5", "data.fingerprint": "2"}  # two settable keys differ: both shown
    assert group_keys([a, b]) == ["data.spec", "method.k"]
    c = {**a, "data.fingerprint": "3"}  # the same spec, other data on disk: the fingerprint tells them apart
    assert group_keys([a, c]) == ["data.fingerprint"]
    fm = {"method": "flow_matching", "data.spec": "toy:a", "data.fingerprint": "1", "train.steps": "10"}
    assert group_keys([a, fm]) == ["method"]  # method.k exists for one method only: not a difference
    assert group_keys([a, {**a, "train.steps": "20"}, fm]) == ["method", "train.steps"]


def test_seeds_alone_pool_and_a_changed_config_value_splits(tmp_path):
    add_run("s", "shortcut", "toy:a", 0, {1: 1.0}, **{"train.steps": 10})
    add_run("s", "shortcut", "toy:a", 1, {1: 3.0}, **{"train.steps": 10})
    add_run("s", "shortcut", "toy:a", 0, {1: 9.0}, **{"train.steps": 20})
    df = collect("s")
    assert df.attrs["group_keys"] == ["train.steps"]
    assert df.groupby("group")["run_id"].nunique().to_dict() == {"shortcut: train.steps=10": 2, "shortcut: train.steps=20": 1}


def test_the_default_report_goes_beside_the_store_not_into_the_working_tree(tmp_path, isolated_store):
    add_run("d", "shortcut", "toy:a", 0, {1: 1.0, 2: 0.5})
    add_run("d", "shortcut", "toy:b", 0, {1: 2.0, 2: 0.7})
    paths = write_reports(["d"])
    assert paths and all(p.is_relative_to(isolated_store / "reports" / "d") for p in paths)
    assert not (tmp_path / "results").exists()
    assert "fid_vs_swept.png" not in {p.name for p in paths}  # two datasets are two lines, not a curve over datasets


def test_plots_are_deterministic_vector_copies(tmp_path):
    add_run("v", "shortcut", "toy:a", 0, {1: 1.0, 2: 0.5, 4: 0.4})
    add_run("v", "shortcut", "toy:a", 1, {1: 1.2, 2: 0.1, 4: 0.3})  # a lower t-bound far below 0: clipped, not lost
    write_report("v", tmp_path / "a")
    write_report("v", tmp_path / "b")
    svg = (tmp_path / "a" / "fid_vs_steps.svg").read_bytes()
    assert svg.startswith(b"<?xml") and svg == (tmp_path / "b" / "fid_vs_steps.svg").read_bytes()


def test_runs_through_different_classifiers_are_apart_the_same_file_at_two_paths_is_not():
    """CFD/RDD runs record classifier.sha256: another file is another group; its path is per run."""
    for seed, (sha, path) in enumerate((("aaa", "/a/r18.pth"), ("aaa", "/b/r18.pth"), ("bbb", "/a/r18.pth"))):
        add_run("clf", "cfd", "npz:/x.npz", seed, {1: 1.0 + seed, 8: 0.5},
                **{"classifier.name": "resnet18", "classifier.sha256": sha, "method.classifier_weights": path})
    df = collect("clf")
    assert df.groupby("group")["run_id"].nunique().sort_values().tolist() == [1, 2]


def test_an_option_only_some_methods_have_labels_rows_only_where_it_splits_a_method():
    add_run("opt", "meanflow", "toy:eight_gaussians", 0, {1: 1.0, 8: 0.5}, **{"method.time_sampling": "uniform"})
    add_run("opt", "flow_matching", "toy:eight_gaussians", 0, {1: 2.0, 8: 0.5}, **{"method.time_sampling": "grid"})
    add_run("opt", "shortcut", "toy:eight_gaussians", 0, {1: 3.0, 8: 0.5}, **{"method.k": 0.25})
    assert collect("opt").attrs["group_keys"] == ["method"]
    add_run("opt", "shortcut", "toy:eight_gaussians", 0, {1: 3.0, 8: 0.5}, **{"method.k": 0.125})
    assert collect("opt").attrs["group_keys"] == ["method", "method.k"]
