"""scripts/issue23_runs.sh (the digits runs issue 23 leaves to a machine with the time): its commands, printed
by --dry-run, parse as `bench run` arguments and resolve to valid configs; nothing is trained here."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path


SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "issue23_runs.sh"


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
    assert commands[-1] == ["bench", "report", "-e", "digits-issue23"]
    runs = commands[:-1]
    assert len(runs) == 2 * 5
    first = parse_run(runs[0])
    assert (first["method"], first["profile"], first["experiment"], first["seed"], first["set_"]) == (
        "flow_matching", "digits", "digits-issue23", 0, [])
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
