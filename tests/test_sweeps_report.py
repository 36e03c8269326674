"""`bench report` on a sweep: FID against the swept value at n = 1, 4 and M, mean and spread over
seeds, and trials a scheduler stopped or that failed marked there and nowhere else. Runs are written straight
into a fresh store with hand-picked FIDs; the expected means and standard deviations are worked out by hand below."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report import collect, swept_table, write_from_csv, write_report
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


def test_a_sweep_over_k_and_M_draws_k_on_x_and_a_line_per_M_with_a_stopped_trial(tmp_path):
    from bench.report import plot_fid_vs_swept
    from bench.report.frames import sweep_axes

    def run(k, M, seed, fid1, outcome="finished"):
        t = Tracker("kM", tags={"method": "shortcut", "sweep.keys": "method.k,method.M", "sweep.role": "trial",
                                **({"sweep.outcome": "stopped", "sweep.stopped_at_step": "250"} if outcome == "stopped" else {})})
        t.log_params({"method.k": k, "method.M": M, "seed": seed, "eval.num_samples": 100, "eval.feature_space": "coords",
                      "train.steps": 1000})
        if outcome == "stopped":
            t.log_metrics({"during/fid_n1": 9.0}, step=250)
        else:
            t.log_metrics({"fid": fid1}, step=1)
            t.log_metrics({"fid": fid1 / 2}, step=M)
        t.end("KILLED" if outcome == "stopped" else "FINISHED")

    run(0.25, 4, 0, 1.0)
    run(0.25, 4, 1, 3.0)
    run(0.5, 4, 0, 2.0)
    run(0.25, 8, 0, 5.0)
    run(0.5, 8, 0, 0.0, outcome="stopped")
    df = collect("kM")
    assert sweep_axes(df) == ("method.k", "method.M")  # the sweep file's order: k first
    t = swept_table(df)
    done = t[t["outcome"] == "finished"].set_index(["method.k", "method.M", "at"])
    assert done.loc[(0.25, 4.0, "n = 1"), "mean"] == pytest.approx(2.0) and done.loc[(0.25, 4.0, "n = 1"), "count"] == 2
    assert done.loc[(0.25, 8.0, "n = M"), "mean"] == pytest.approx(2.5)  # each run's own largest n
    assert done.loc[(0.5, 4.0, "n = 1"), "mean"] == pytest.approx(2.0)
    stopped = t[t["outcome"] == "stopped"]
    assert stopped[["method.k", "method.M"]].drop_duplicates().values.tolist() == [[0.5, 8.0]]
    assert stopped.set_index("at").loc["n = 1", "mean"] == 9.0
    plot_fid_vs_swept(df, tmp_path / "kM.png", "kM")
    svg = (tmp_path / "kM.svg").read_text()
    assert "<!-- method.M = 4 -->" in svg and "<!-- method.M = 8 -->" in svg and "one line per method.M" in svg
    assert "<!-- stopped @ step 250/1000 -->" in svg
    # a single-key sweep keeps its one line
    add_run("konly", "method.k", 0.25, 0, {1: 1.0})
    add_run("konly", "method.k", 0.5, 0, {1: 2.0})
    assert sweep_axes(collect("konly")) == ("method.k", None)


def test_runs_of_several_methods_get_no_swept_plot(tmp_path):
    for method in ("shortcut", "flow_matching"):
        t = Tracker("plain", tags={"method": method})
        t.log_params({"seed": 0, "eval.num_samples": 100, "eval.feature_space": "coords"})
        t.log_metrics({"fid": 1.0}, step=1)
        t.end("FINISHED")
    assert "fid_vs_swept.png" not in {p.name for p in write_report("plain", tmp_path / "o")}


# -- trials a scheduler stopped or that failed (sweep.outcome, sweep.stopped_at_step, failure.*) -----------------
def add_trial(experiment: str, k: float, seed: int, status: str, tags: dict[str, str] | None = None,
              fids: dict[int, float] | None = None, during: dict[int, list[tuple[int, float]]] | None = None) -> str:
    """A k-sweep trial with M = 8 and 1,000 training steps: final FIDs `fids` (n -> FID) and during-training
    histories `during` (n -> [(training step, FID), ...]), ended with `status`."""
    t = Tracker(experiment, tags={"method": "shortcut", "sweep.keys": "method.k", "sweep.role": "trial", **(tags or {})})
    t.log_params({"method.k": k, "method.M": 8, "train.steps": 1000, "seed": seed, "eval.num_samples": 100,
                  "eval.feature_space": "coords"})
    for n, points in (during or {}).items():
        for step, v in points:
            t.log_metrics({f"during/fid_n{n}": v}, step=step)
    for n, v in (fids or {}).items():
        t.log_metrics({"fid": v}, step=n)
    t.end(status)
    return t.run_id


FINAL = {1: 0.9, 2: 0.7, 4: 0.5, 8: 0.3}


def mixed_sweep(experiment: str) -> dict[str, str]:
    """Two finished k values over two seeds, a trial the scheduler stopped at step 200 (status FINISHED, as
    Ray leaves it, and a final FID of 0.01 that must not reach any table) and one that failed at step 300
    with no FID during training at all."""
    ids = {}
    for k, shift in ((0.125, 0.0), (0.5, 0.2)):
        for seed in (0, 1):
            ids[f"{k}/{seed}"] = add_trial(experiment, k, seed, "FINISHED", {"sweep.outcome": "finished"},
                                           {n: v + shift + 0.05 * seed for n, v in FINAL.items()})
    ids["stopped"] = add_trial(experiment, 0.25, 0, "FINISHED", {"sweep.outcome": "stopped", "sweep.stopped_at_step": "200"},
                               fids={n: 0.01 for n in FINAL},
                               during={1: [(100, 3.0), (200, 2.5)], 4: [(100, 2.0), (200, 1.5)], 8: [(100, 1.2), (200, 1.1)]})
    ids["failed"] = add_trial(experiment, 1.0, 0, "FAILED", {"sweep.outcome": "failed", "failure.step": "300",
                                                             "failure.reason": "nonfinite", "failure.message": "loss is nan"})
    return ids


def test_stopped_and_failed_trials_are_collected_with_their_last_fid_during_training():
    ids = mixed_sweep("mix")
    df = collect("mix")
    runs = df.drop_duplicates("run_id").set_index("run_id")
    assert runs.loc[ids["stopped"], "outcome"] == "stopped" and runs.loc[ids["failed"], "outcome"] == "failed"
    assert (runs.loc[[ids[f"{k}/{s}"] for k in (0.125, 0.5) for s in (0, 1)], "outcome"] == "finished").all()
    assert runs.loc[ids["stopped"], "stopped_at_step"] == 200 and runs.loc[ids["failed"], "stopped_at_step"] == 300
    assert runs.loc[ids["stopped"], "train_steps"] == 1000 and runs.loc[ids["failed"], "failure_reason"] == "nonfinite"
    stopped = df[df["run_id"] == ids["stopped"]].set_index("steps")
    assert set(stopped["metric"]) == {"during/fid"}  # its final FIDs (0.01) are not read
    assert stopped["value"].to_dict() == {1: 2.5, 4: 1.5, 8: 1.1}  # the last point of each history, not the first
    failed = df[df["run_id"] == ids["failed"]]
    assert sorted(failed["steps"]) == [1, 4, 8] and failed["value"].isna().all()


def test_old_runs_without_the_outcome_tag_read_their_status():
    add_trial("old", 0.125, 0, "FINISHED", fids=FINAL)
    killed = add_trial("old", 0.25, 0, "KILLED", during={1: [(50, 4.0)]})
    failed = add_trial("old", 0.5, 0, "FAILED")
    plain = Tracker("old", tags={"method": "shortcut"})  # a failed run outside a sweep stays out, as before
    plain.log_params({"seed": 1})
    plain.end("FAILED")
    runs = collect("old").drop_duplicates("run_id").set_index("run_id")["outcome"].to_dict()
    assert runs.pop(killed) == "stopped" and runs.pop(failed) == "failed"
    assert list(runs.values()) == ["finished"]


def _csv(path):
    return pd.read_csv(path, dtype={"failure_reason": str})


def test_sweep_figure_marks_stopped_and_failed_trials_and_nothing_else_sees_them(tmp_path):
    ids = mixed_sweep("mix")
    groups = collect("mix").drop_duplicates("run_id").set_index("run_id")["group"]
    done = {groups[ids[f"{k}/{s}"]] for k in (0.125, 0.5) for s in (0, 1)}
    ended = {groups[ids["stopped"]], groups[ids["failed"]]}
    assert len(done) == 2 and len(ended) == 2 and not done & ended
    out = tmp_path / "out"
    written = {p.name for p in write_report("mix", out)}
    assert {"fid_vs_swept.png", "fid_vs_swept.svg", "fid_vs_swept.csv", "leaderboard.csv", "paired.csv"} <= written
    assert (out / "fid_vs_swept.png").stat().st_size > 10_000
    svg = (out / "fid_vs_swept.svg").read_text()
    assert "stopped @ step 200/1000" in svg and "failed @ step 300/1000 (nonfinite)" in svg

    swept = _csv(out / "fid_vs_swept.csv")
    assert {"outcome", "stopped_at_step"} <= set(swept.columns)
    fin = swept[swept["outcome"] == "finished"].set_index(["method.k", "at"])
    assert fin.loc[(0.125, "n = M"), "mean"] == pytest.approx(0.325) and fin.loc[(0.5, "n = 1"), "mean"] == pytest.approx(1.125)
    assert fin["stopped_at_step"].isna().all() and set(fin.index.get_level_values(0)) == {0.125, 0.5}
    stopped = swept[swept["outcome"] == "stopped"].set_index("at")
    assert stopped["mean"].to_dict() == pytest.approx({"n = 1": 2.5, "n = 4": 1.5, "n = M": 1.1})
    assert (stopped["stopped_at_step"] == 200).all() and (stopped["method.k"] == 0.25).all()
    failed = swept[swept["outcome"] == "failed"]
    assert len(failed) == 3 and (failed["stopped_at_step"] == 300).all() and (failed["failure_reason"] == "nonfinite").all()
    assert failed["mean"].isna().all() and (failed["count"] == 0).all()

    board, tests, pairs = _csv(out / "leaderboard.csv"), _csv(out / "comparisons.csv"), _csv(out / "paired.csv")
    assert set(board["group"]) == done
    assert set(tests["group_a"]) | set(tests["group_b"]) == done and set(pairs["group_a"]) | set(pairs["group_b"]) == done
    assert board["mean"].min() > 0.3  # the stopped trial's final 0.01 would lead every n
    rows = {line.split(" | ")[0].lstrip("| ") for line in (out / "table.md").read_text().splitlines()[2:] if line.startswith("|")}
    assert rows == done
    metrics = _csv(out / "metrics.csv")
    outcomes = metrics.drop_duplicates("run_id").set_index("run_id")["outcome"]
    assert outcomes[ids["stopped"]] == "stopped" and outcomes[ids["failed"]] == "failed"
    assert (metrics.loc[metrics["metric"] == "fid", "outcome"] == "finished").all()
    assert "6 runs: 4 finished, 1 stopped, 1 failed" in (out / "index.html").read_text()

    # --from-csv: the same sweep CSV and leaderboard from metrics.csv alone
    again = tmp_path / "again"
    write_from_csv(out / "metrics.csv", again)
    pd.testing.assert_frame_equal(_csv(again / "fid_vs_swept.csv"), swept)
    assert set(_csv(again / "leaderboard.csv")["group"]) == done

    # a metrics.csv that holds final FIDs of the stopped trial (0.01 at every n): the report still leaves them out
    row = metrics[metrics["run_id"] == ids["stopped"]].iloc[0]
    extra = pd.DataFrame([{**row.to_dict(), "metric": "fid", "steps": n, "value": 0.01} for n in FINAL])
    (tmp_path / "edited").mkdir()
    pd.concat([metrics, extra], ignore_index=True).to_csv(tmp_path / "edited" / "metrics.csv", index=False)
    write_from_csv(tmp_path / "edited" / "metrics.csv")
    board = _csv(tmp_path / "edited" / "leaderboard.csv")
    assert set(board["group"]) == done and board["mean"].min() > 0.3
    assert set(_csv(tmp_path / "edited" / "comparisons.csv")[["group_a", "group_b"]].stack()) == done
    edited = _csv(tmp_path / "edited" / "fid_vs_swept.csv")
    assert set(edited.loc[edited["outcome"] == "finished", "method.k"]) == {0.125, 0.5}


def test_a_metrics_csv_without_outcomes_reads_as_finished_runs(tmp_path):
    mixed_sweep("mix")
    out = tmp_path / "out"
    write_report("mix", out)
    old = _csv(out / "metrics.csv")
    old = old[old["outcome"] == "finished"].drop(columns=["outcome", "stopped_at_step", "train_steps", "failure_reason"])
    (tmp_path / "old").mkdir()
    old.to_csv(tmp_path / "old" / "metrics.csv", index=False)
    written = {p.name for p in write_from_csv(tmp_path / "old" / "metrics.csv")}
    assert {"fid_vs_swept.png", "fid_vs_swept.csv", "leaderboard.csv"} <= written
    swept = _csv(tmp_path / "old" / "fid_vs_swept.csv")
    assert set(swept["outcome"]) == {"finished"} and swept["stopped_at_step"].isna().all()
    assert len(swept) == 6  # two k values x (n = 1, 4, M)
    assert swept.set_index(["method.k", "at"]).loc[(0.5, "n = M"), "mean"] == pytest.approx(0.525)


def test_a_sweep_of_names_draws_its_values_in_order_with_a_stopped_trial(tmp_path):
    from bench.report import plot_fid_vs_swept

    for levels, seed in (("uniform", 0), ("quarter_large", 0)):
        add_run("names", "method.levels", levels, seed, {1: 0.8, 4: 0.4, 8: 0.2})
    t = Tracker("names", tags={"method": "shortcut", "sweep.keys": "method.levels", "sweep.role": "trial",
                               "sweep.outcome": "stopped", "sweep.stopped_at_step": "50"})
    t.log_params({"method.levels": "half", "method.M": 8, "seed": 0, "eval.num_samples": 100, "eval.feature_space": "coords"})
    t.log_metrics({"during/fid_n4": 2.0}, step=50)
    t.end("KILLED")
    df = collect("names")
    table = swept_table(df)
    stopped = table[table["outcome"] == "stopped"].set_index("at")["mean"]
    assert stopped["n = 4"] == 2.0 and stopped[["n = 1", "n = M"]].isna().all()  # no FID logged at 1 and M
    written = plot_fid_vs_swept(df, tmp_path / "swept.png", "names")
    assert [p.name for p in written] == ["swept.png", "swept.svg"]
    svg = (tmp_path / "swept.svg").read_text()
    # matplotlib keeps each text as a comment beside its glyphs: one note per panel, no "/steps" without train.steps
    assert svg.count("<!-- stopped @ step 50 -->") == 1 and svg.count("<!-- stopped @ step 50, no FID yet -->") == 2
    ticks = [svg.index(f"<!-- {v} -->") for v in ("half", "quarter_large", "uniform")]
    assert ticks == sorted(ticks)  # the stopped trial's value takes its place among the categories, in order
