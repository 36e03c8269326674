"""The command line end to end: exit codes, one-line errors, a tiny run, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--set", "train.steps=150", "--set", "M=8", "--set", "eval.num_samples=400", "--set", "train.checkpoint_every=100"]


def bench(*args, env=None, cwd=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--method", "nope"], "Unknown method 'nope'"),
        (["run", "--method", "shortcut", "--set", "M=12"], "must be a power of two"),
        (["run", "--method", "shortcut", "--set", "kk=1"], "Did you mean method.k?"),
        (["run", "--method", "shortcut", "--profile", "nope"], "Unknown profile"),
        (["run", "--method", "shortcut", "--data", "npz:/no/such.npz"], "does not exist"),
        (["run", "--method", "shortcut", "--data", "imagefolder:/no/such"], "does not exist"),
        (["run", "--method", "shortcut", "--set", "eval.steps=3"], "do not divide M"),
        (["report", "--experiment", "nothing-here"], "No tracking store"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(args, message, isolated_store):
    r = bench(*args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (isolated_store / "mlflow.db").exists()
    assert not (isolated_store / "checkpoints").exists()


def test_missing_inception_weights_fail_before_anything_is_written(tmp_path, isolated_store):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    r = bench("run", "--method", "flow_matching", "--data", f"imagefolder:{tmp_path / 'imgs'}",
              env={"TORCH_HOME": str(tmp_path / "torch")})
    assert r.returncode == 2 and "weights-inception-2015-12-05-6726825d.pth" in r.stderr
    assert not isolated_store.exists() or not any(isolated_store.iterdir())


def test_unreachable_tracking_server():
    r = bench("run", "--method", "shortcut", "--profile", "smoke", *TINY, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert r.returncode == 2 and "unreachable" in r.stderr


def test_flags_look_like_flags():
    r = bench("run", "--help")
    assert r.returncode == 0, r.stderr
    flags = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith(("--resume", "-q, --quiet", "--help"))]
    assert [f.split("  ")[0] for f in flags] == ["--resume", "-q, --quiet", "--help"], flags  # no value after a flag
    assert "--seed <int>" in r.stdout and "<bool>" not in r.stdout and "\x1b" not in r.stdout


@pytest.mark.parametrize("error, code", [("BenchError", 2), ("RunFailed", 1), ("NonFiniteLoss", 1)])
def test_exit_code_2_for_bad_input_1_for_a_failed_run(monkeypatch, capsys, error, code):
    import bench.cli
    import bench.errors

    def app(**_):
        raise getattr(bench.errors, error)("Something went wrong at step 7.")

    monkeypatch.setattr(bench.cli, "app", app)
    with pytest.raises(SystemExit) as e:
        bench.cli.main()
    assert e.value.code == code
    assert capsys.readouterr().err == "error: Something went wrong at step 7.\n"


def test_a_wrong_flag_or_stray_argument_is_a_usage_error_not_a_traceback():
    # `--set a=1 b=2` (one --set per key is right): the second is a stray argument
    for args in (("run", "-m", "shortcut", "--set", "levels=uniform", "bootstrap_weight=1"), ("run", "--nope")):
        r = bench(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "Usage: " in r.stderr and " run [OPTIONS]" in r.stderr and ("unexpected extra argument" in r.stderr or "No such option" in r.stderr)


def test_a_sweep_with_failed_trials_and_a_non_finite_loss_are_runtime_failures():
    from bench.errors import NonFiniteLoss, RunFailed
    from bench.sweep.tune import SweepFailed

    assert issubclass(SweepFailed, RunFailed) and issubclass(NonFiniteLoss, RunFailed) and RunFailed.exit_code == 1


@pytest.mark.slow
def test_run_then_report_end_to_end(isolated_store, tmp_path):
    # no -q: stderr is a pipe, so the progress bars must stay off by themselves
    r = bench("run", "--method", "shortcut", "--profile", "smoke", "--experiment", "e2e", *TINY)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for code in ("\r", "\x1b["):  # tqdm's cursor codes in a log file
        assert code not in out and code not in r.stderr
    first = out.splitlines()[0]  # where the run goes, before it trains
    assert first.startswith("run ") and "experiment 'e2e'" in first and str(isolated_store / "mlflow.db") in first
    assert str(isolated_store / "checkpoints") in first
    for n in (1, 2, 4, 8):
        assert any(line.split()[:1] == [str(n)] for line in out.splitlines())
    assert "run " in out and "experiment 'e2e'" in out and str(isolated_store) in out
    from bench.store.tracking import client

    c = client()
    exp = c.get_experiment_by_name("e2e")
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "shortcut" and run.data.tags["profile"] == "smoke"
    assert run.data.tags["seed"] == "0" and run.data.tags["git_commit"]
    # what else decides its numbers: torch's build, the CPU's kernels, the threads; and the trained weights' hash
    import torch

    from bench.files.checkpoint import state_hash

    tags = run.data.tags
    assert tags["env.torch"] == torch.__version__ and tags["env.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["env.threads"] == run.data.params["train.threads"] == "1" and tags["env.cpu"]
    final = torch.load(isolated_store / "checkpoints" / run.info.run_id / "final.pt", map_location="cpu", weights_only=False)
    assert tags["ema_sha256"] == final["ema_sha256"] == state_hash(final["ema"])
    assert run.data.params["method.k"] == "0.25" and run.data.params["eval.feature_space"] == "coords"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "fid")] == [1, 2, 4, 8]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "nfe")] == [1, 2, 4, 8]
    assert [m.value for m in c.get_metric_history(run.info.run_id, "nfe")] == [1, 2, 4, 8]
    assert len(c.get_metric_history(run.info.run_id, "train/loss")) == 3  # every 50 of 150 steps
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoint", "samples", "scatter"} <= arts
    samples = {a.path for a in c.list_artifacts(run.info.run_id, "samples")}
    assert samples == {f"samples/steps_{n}.npz" for n in (1, 2, 4, 8)}
    # MLflow's UI: the model-training view, and FID against log2(n) at evenly spaced steps
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    log2 = c.get_metric_history(run.info.run_id, "fid_by_log2_steps")
    fid = c.get_metric_history(run.info.run_id, "fid")
    assert [m.step for m in log2] == [0, 1, 2, 3] and [m.value for m in log2] == [m.value for m in fid]
    assert {a.path for a in c.list_artifacts(run.info.run_id, "plots")} == {"plots/fid_vs_steps.png", "plots/fid_vs_steps.svg",
                                                                            "plots/loss_levels.png", "plots/loss_levels.svg"}
    assert [m.step for m in c.get_metric_history(run.info.run_id, "paired_to_M")] == [1, 2, 4, 8]
    r = bench("report", "--experiment", "e2e")  # default: beside the store, not into the working tree
    assert r.returncode == 0, r.stderr
    assert (isolated_store / "reports" / "e2e" / "table.md").is_file() and not (tmp_path / "results").exists()
    assert str(isolated_store / "reports" / "e2e" / "table.md") in r.stdout
    r = bench("report", "--experiment", "e2e", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_csv(tmp_path / "rep" / "metrics.csv")
    assert set(df[df.metric == "fid"].steps) == {1, 2, 4, 8} and (df.run_id == run.info.run_id).all()
    assert (tmp_path / "rep" / "fid_vs_steps.png").stat().st_size > 10_000
    assert Path(tmp_path / "rep" / "table.md").read_text().count("| shortcut |") == 1


@pytest.mark.slow
def test_fixed_seed_gives_identical_metrics():
    from bench.config import resolve
    from bench.train.run import execute

    over = ["train.steps=120", "M=4", "eval.num_samples=300", "train.log_every=40"]
    a = execute(resolve("shortcut", "smoke", over), "det", progress=False, echo=lambda *_: None)
    b = execute(resolve("shortcut", "smoke", over), "det", progress=False, echo=lambda *_: None)
    c = execute(resolve("shortcut", "smoke", over, seed=1), "det", progress=False, echo=lambda *_: None)
    assert a.results == b.results
    assert a.results[1]["fid"] != c.results[1]["fid"]
