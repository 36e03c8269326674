"""Paired comparisons (bench.report.paired, `bench report`'s paired.md / paired.csv): groups run on the same
seeds with the same evaluation noise give per-seed differences whose 95 % t-interval is worked out by
hand below; groups that differ in evaluation noise or teacher are not paired and the output says why."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench.report.paired import paired_table, t_interval
from bench.report import collect, write_report
from bench.store.tracking import Tracker

T_975_4 = 2.7764451051977987  # Student t, 97.5 % quantile, 4 degrees of freedom (tables)
SEED_EFFECT = (0.0, 9.0, -7.0, 4.0, -3.0)  # what every method's run of a seed shares (evaluation noise, data order)


def add_run(experiment: str, method: str, seed: int, fids: dict[int, float], tags: dict | None = None, **params) -> str:
    t = Tracker(experiment, tags={"method": method, "dataset": "toy:a", "profile": "smoke", "git_commit": "abc1234def",
                                  **(tags or {})})
    t.log_params({"seed": seed, "eval.seed": 10_007 + seed, "data.spec": "toy:a", "eval.num_samples": 100,
                  "eval.feature_space": "coords", "eval.reference_fingerprint": "ref1", "method.M": 8,
                  "budget.train_steps": 10, "budget.forward_rows_per_step": 4, "budget.backward_rows_per_step": 4,
                  "budget.nograd_rows_per_step": 0, **params})
    t.log_metrics({"fid_floor_fresh": 0.5, "fid_floor_fresh_se": 0.01, "fid_floor_fresh_sd": 0.08, "fid_floor_copy": 0.2}, step=0)
    for n, v in fids.items():
        t.log_metrics({"fid": v}, step=n)
    t.end("FINISHED")
    return t.run_id


A_OFFSET = (-0.1, 0.1, 0.0, -0.2, 0.2)  # A = 20 + seed effect + these; B = 22 + seed effect at n = 1


def two_methods(experiment: str) -> None:
    for s, (e, o) in enumerate(zip(SEED_EFFECT, A_OFFSET)):
        add_run(experiment, "shortcut", s, {1: 20 + e + o, 2: 10 + e, 8: 5.0 + s}, **{"method.k": 0.25})
        add_run(experiment, "flow_matching", s, {1: 22 + e, 2: 10 + e, 8: 5.0 + s})


def test_the_paired_interval_separates_what_the_unpaired_ones_cannot(tmp_path):
    two_methods("p")
    pairs, skipped, unchecked = paired_table(collect("p"))
    assert skipped.empty and unchecked == []
    r = pairs[pairs["steps"] == 1].iloc[0]
    a, b = (r.group_a, r.group_b)
    assert (a, b) == ("flow_matching", "shortcut")  # groups in label order: A = flow matching, B = shortcut
    # by hand: d = FM - shortcut = 2 - offsets = 2.1, 1.9, 2.0, 2.2, 1.8: mean 2.0, sd sqrt(0.1 / 4)
    assert r.diff_mean == pytest.approx(2.0)
    assert r.diff_half == pytest.approx(T_975_4 * math.sqrt(0.1 / 4) / math.sqrt(5))
    assert r.excludes_0 and r.n_seeds == 5 and r.seeds == "0 1 2 3 4"
    # each group's own interval: the seed effect's sd (about 6.4) makes them overlap widely
    sd_a = np.std([22 + e for e in SEED_EFFECT], ddof=1)
    assert r.a_half == pytest.approx(T_975_4 * sd_a / math.sqrt(5)) and r.a_half > 5 and r.unpaired_overlap
    # n = 2: identical values, d = 0 every seed: an interval of width 0 that does not exclude 0
    r2 = pairs[pairs["steps"] == 2].iloc[0]
    assert r2.diff_mean == 0 and r2.diff_half == 0 and not r2.excludes_0
    # n = 8: equal too (5 + s on both sides)
    assert not pairs[pairs["steps"] == 8].iloc[0].excludes_0

    written = {p.name for p in write_report("p", tmp_path / "out")}
    assert {"paired.md", "paired.csv", "metrics.csv", "leaderboard.md", "index.html"} <= written
    md = (tmp_path / "out" / "paired.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| flow_matching | shortcut |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0 1 2 3 4" and cells[3] == f"+2 ± {r.diff_half:.2g} **B** †"  # shortcut lower, only pairing calls it
    assert cells[4] == "+0 ± 0" and cells[5] == "-" and cells[6] == "(8) +0 ± 0"  # no n = 4 run
    assert "- n = 1: shortcut < flow_matching" in md
    csv = pd.read_csv(tmp_path / "out" / "paired.csv")
    assert len(csv) == 3 and set(csv["steps"]) == {1, 2, 8}
    # metrics.csv carries the run's commit, its evaluation seed and its floor
    m = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert set(m["git_commit"]) == {"abc1234def"} and sorted(m["eval_seed"].unique()) == [10_007 + s for s in range(5)]
    assert set(m["fid_floor_fresh"]) == {0.5} and set(m["fid_floor_fresh_sd"]) == {0.08}


def test_metrics_csv_and_the_source_line_name_the_machine_each_run_trained_on(tmp_path):
    # one commit and seed train to other weights on another machine: the report says which ran where
    epyc = {"env.torch": "2.14.1", "env.cpu": "AMD EPYC", "env.cpu_capability": "AVX512", "env.threads": "1"}
    add_run("mach", "flow_matching", 0, {1: 20.0}, tags=epyc)
    add_run("mach", "flow_matching", 1, {1: 21.0}, tags={**epyc, "env.cpu_capability": "AVX2", "env.gpu": "NVIDIA H200"})
    add_run("mach", "flow_matching", 2, {1: 22.0})  # stored before runs tagged their machine
    write_report("mach", tmp_path / "out")
    m = pd.read_csv(tmp_path / "out" / "metrics.csv", keep_default_na=False).set_index("seed")
    assert m.loc[0, "machine"] == "AMD EPYC (AVX512), torch 2.14.1"
    assert m.loc[1, "machine"] == "AMD EPYC (AVX2), NVIDIA H200, torch 2.14.1" and m.loc[2, "machine"] == ""
    source = next(ln for ln in (tmp_path / "out" / "leaderboard.md").read_text().splitlines() if "made on" in ln)
    assert ("made on 1 commit: abc1234; on 2 machines: AMD EPYC (AVX2), NVIDIA H200, torch 2.14.1; "
            "AMD EPYC (AVX512), torch 2.14.1 (1 run stored before runs recorded their machine)") in source


def test_groups_with_other_evaluation_noise_or_teachers_are_not_paired():
    two_methods("q")
    for s, e in enumerate(SEED_EFFECT):  # the same seeds, evaluated with another noise seed
        add_run("q", "meanflow", s, {1: 21 + e, 8: 5.0}, **{"eval.seed": 77 + s})
    for s, e in enumerate(SEED_EFFECT):  # another reference set
        add_run("q", "reflow", s, {1: 21 + e, 8: 5.0}, **{"eval.reference_fingerprint": "ref2", "teacher.ema_sha256": f"t1-{s}"})
    for method, sha in (("progressive", "t1"), ("cfd", "t2")):  # both distil, from other teachers
        for s, e in enumerate(SEED_EFFECT):
            add_run("q", method, s, {1: 21 + e, 8: 5.0}, **{"teacher.ema_sha256": f"{sha}-{s}"})
    for s, e in enumerate(SEED_EFFECT):  # the same teacher as progressive: paired with it
        add_run("q", "rdd", s, {1: 21.5 + e, 8: 5.0}, **{"teacher.ema_sha256": f"t1-{s}"})
    add_run("q", "diffusion", 0, {1: 1.0, 8: 1.0})  # one seed: no interval
    pairs, skipped, _ = paired_table(collect("q"))
    why = {(r.group_a, r.group_b): r.reason for r in skipped.itertuples()}
    paired = set(zip(pairs["group_a"], pairs["group_b"]))
    assert "evaluation seed differs at seed 0 (10007 vs 77)" in why[("flow_matching", "meanflow")]
    assert "reference set differs" in why[("meanflow", "reflow")] or "evaluation seed" in why[("meanflow", "reflow")]
    assert "reference set differs at seed 0 (ref1 vs ref2)" in why[("flow_matching", "reflow")]
    assert "different teachers" in why[("cfd", "progressive")]
    assert ("progressive", "rdd") in paired and ("cfd", "rdd") in why
    assert ("flow_matching", "progressive") in paired  # one side distils, the other has no teacher
    assert why[("diffusion", "shortcut")] == "1 shared seed: no paired interval"
    r = pairs[(pairs["group_a"] == "progressive") & (pairs["group_b"] == "rdd") & (pairs["steps"] == 1)].iloc[0]
    assert r.diff_mean == pytest.approx(-0.5) and r.diff_half == pytest.approx(0, abs=1e-9)


def test_groups_evaluated_with_other_sample_counts_are_not_paired():
    two_methods("r")
    for s, e in enumerate(SEED_EFFECT):
        add_run("r", "consistency_training", s, {1: 21 + e, 8: 5.0}, **{"eval.num_samples": 200})
    df = collect("r")
    pairs, skipped, _ = paired_table(df)
    label = {m: df.loc[df["method"] == m, "group"].iloc[0] for m in ("consistency_training", "flow_matching", "shortcut")}
    why = {(r.group_a, r.group_b): r.reason for r in skipped.itertuples()}
    assert "samples per n differs at seed 0 (200 vs 100)" in why[(label["consistency_training"], label["flow_matching"])]
    assert set(zip(pairs["group_a"], pairs["group_b"])) == {(label["flow_matching"], label["shortcut"])}


def test_t_interval_by_hand():
    m, h, n = t_interval([1.0, 2.0, 4.0, 5.0, 3.0])
    assert (m, n) == (3.0, 5) and h == pytest.approx(T_975_4 * math.sqrt(2.5) / math.sqrt(5))
    assert math.isnan(t_interval([1.0])[1])


def bench(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def test_from_csv_applies_the_same_pairing_to_a_metrics_csv(tmp_path):
    two_methods("c")
    write_report("c", tmp_path / "rep")
    first = (tmp_path / "rep" / "paired.md").read_text()
    r = bench("report", "--from-csv", str(tmp_path / "rep" / "metrics.csv"), "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    again = (tmp_path / "again" / "paired.md").read_text()
    assert "made on 1 commit: abc1234" in again
    body = lambda t: t.split("Each cell:")[1]  # noqa: E731  (the header names the source)
    assert body(again) == body(first)
    # an old CSV without the evaluation columns: paired on what it has, and it says what it could not check
    old = pd.read_csv(tmp_path / "rep" / "metrics.csv").drop(columns=["eval_seed", "reference", "teacher_sha256", "git_commit"])
    old.to_csv(tmp_path / "old.csv", index=False)
    r = bench("report", "--from-csv", str(tmp_path / "old.csv"), "--out", str(tmp_path / "old"))
    text = (tmp_path / "old" / "paired.md").read_text()
    assert r.returncode == 0 and "not checked before pairing: evaluation seed, reference set, teachers" in text
    assert "does not record the commits" in text


@pytest.mark.parametrize("args, message", [
    (["--from-csv", "/no/such.csv"], "No metrics file"),
    (["--from-csv", "{bad}", "--experiment", "x"], "takes no --experiment"),
])
def test_from_csv_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = bench("report", *[a.replace("{bad}", str(bad)) for a in args])
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = bench("report", "--from-csv", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "lacks the columns" in r.stderr and not (tmp_path / "o").exists()
