"""scripts/run_distillation_variants.sh (the digits runs issue 23 leaves to a machine with the time): its commands, printed
by --dry-run, parse as `bench run` arguments and resolve to valid configs; nothing is trained here."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path


SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_distillation_variants.sh"


def dry_run(*args: str) -> list[list[str]]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=True,
                         env={"BENCH": "bench", "PATH": "/usr/bin:/bin"})
    return [shlex.split(line) for line in out.stdout.splitlines()]


def parse_run(argv: list[str]) -> dict:
    """`bench run ARGS` through the CLI's own parser, without invoking it: the options it would get."""
    import typer

    from bench.cli import app

    assert argv[:2] == ["bench", "run"], argv
    command = typer.main.get_command(app).commands["run"]
    return command.make_context("run", argv[2:]).params


def test_first_command_parses_and_every_run_resolves():
    from bench.config import resolve

    commands = dry_run("--seeds", "0 1", "--cfg-scale", "2")
    assert commands[-1] == ["bench", "report", "-e", "digits-distillation-variants"]
    runs = commands[:-1]
    assert len(runs) == 2 * 5
    first = parse_run(runs[0])
    assert (first["method"], first["profile"], first["experiment"], first["seed"], first["set_"]) == (
        "flow_matching", "digits", "digits-distillation-variants", 0, [])
    seen = []
    for argv in runs:
        p = parse_run(argv)
        cfg = resolve(p["method"], p["profile"], p["set_"], seed=p["seed"])
        seen.append((cfg.method_name, cfg.seed, getattr(cfg.method, "cfg", None), getattr(cfg.method, "final_steps", None),
                     cfg.method.cfg_scale, getattr(cfg.method, "teacher", None)))
    for s in (0, 1):
        assert seen[5 * s: 5 * s + 5] == [
            ("flow_matching", s, None, None, 1.0, None),
            ("progressive", s, "baked", 1, 2.0, f"FM_{s}"),
            ("progressive", s, "sampling", 1, 2.0, f"FM_{s}"),  # the logged deviation it measures
            ("cfd", s, "baked", 4, 1.0, f"FM_{s}"),
            ("rdd", s, "baked", 4, 1.0, f"FM_{s}"),
        ]


def test_unknown_argument_exits_2():
    out = subprocess.run(["bash", str(SCRIPT), "--seed", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --seed" in out.stderr and out.stdout == ""


def test_teachers_from_distils_from_that_experiments_flow_matching_run_of_each_seed(tmp_path, monkeypatch):
    """--teachers-from looks each seed's teacher up in the store (no new flow-matching run); a seed with
    none stops the script with exit 1 before anything else of that seed runs."""
    import sys

    from bench.store.tracking import Tracker

    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ids = {}
    for seed, status in ((0, "FINISHED"), (0, "FAILED"), (1, "FINISHED")):
        t = Tracker("digits-regen", tags={"method": "flow_matching"})
        t.log_params({"method": "flow_matching", "seed": seed})
        t.end(status)
        if status == "FINISHED":
            ids[seed] = t.run_id
    stub = tmp_path / "bench.sh"  # prints what `bench run` prints, records its arguments
    stub.write_text(f'echo "$@" >> {tmp_path}/calls\necho "run abc123 in experiment \'x\' at somewhere"\n')
    env = {"BENCH": f"bash {stub}", "PYTHON": sys.executable, "PYTHONPATH": str(SCRIPT.parent.parent),
           "BENCH_STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", str(SCRIPT), "--seeds", "0 1", "--experiment", "digits-i23", "--teachers-from",
                          "digits-regen", "--threads", "1", "--out", "o"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert len(calls) == 2 * 4 + 1 and not any("flow_matching" in c for c in calls)
    for s in (0, 1):
        for c in calls[4 * s: 4 * s + 4]:
            assert f"teacher={ids[s]}" in c and "train.threads=1" in c and c[c.index("--seed") + 1] == str(s), c
    assert calls[-1] == ["report", "-e", "digits-i23", "--out", "o"]
    (tmp_path / "calls").unlink()
    missing = subprocess.run(["bash", str(SCRIPT), "--seeds", "1 2", "--teachers-from", "digits-regen"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "no finished flow_matching run of seed 2" in missing.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 4  # seed 1's runs, nothing of seed 2
