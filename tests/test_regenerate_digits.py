"""scripts/regenerate_digits.sh, the driver that regenerates results/digits on one commit: its plan
(--dry-run) and its argument handling. The runs themselves take hours; nothing here trains."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "regenerate_digits.sh"
DISTIL = {"progressive", "cfd", "rdd", "consistency_distillation", "reflow"}


def plan(*args, cwd=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or SCRIPT.parent.parent)


def runs(stdout: str) -> list[list[str]]:
    """The arguments after `run` of each planned `bench run` command."""
    cmds = [shlex.split(ln[2:]) for ln in stdout.splitlines() if ln.startswith("+ ")]
    return [c[c.index("run") + 1:] for c in cmds if "run" in c]


def opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_the_plan_runs_every_method_with_5_or_3_seeds_and_teachers_of_the_same_seed():
    r = plan("--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = runs(r.stdout)
    by = Counter((opt(c, "-m"), " ".join(a for a in c if a.startswith(("levels=", "recipe=")))) for c in cmds)
    assert by[("flow_matching", "")] == 5 and by[("shortcut", "")] == 5 and by[("meanflow", "")] == 5
    assert by[("shortcut", "levels=uniform")] == 3 and by[("shortcut", "recipe=authors levels=authors")] == 3
    from methods import METHODS

    assert {m for m, _ in by} == set(METHODS)  # every method of the harness, none made up
    assert sum(by.values()) == 3 * 5 + 10 * 3
    assert all(n == 3 for (m, knobs), n in by.items() if knobs or m not in ("flow_matching", "meanflow", "shortcut"))
    for c in cmds:
        assert opt(c, "-e") == "digits-regen" and opt(c, "-p") == "digits"
        teacher = [a for a in c if a.startswith("teacher=")]
        if opt(c, "-m") in DISTIL:  # distilled from flow matching of its own seed
            assert teacher == [f"teacher=<flow_matching seed {opt(c, '--seed')}>"]
        else:
            assert teacher == []
    # flow matching's runs come before every run that needs them
    first_distil = min(i for i, c in enumerate(cmds) if opt(c, "-m") in DISTIL)
    assert max(i for i, c in enumerate(cmds) if opt(c, "-m") == "flow_matching") < first_distil
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("report -e digits-regen --out results/digits --ratio shortcut/flow_matching")
    assert re.search(r"on commit [0-9a-f]{40}", r.stdout)


def test_every_planned_command_resolves_to_a_valid_config():
    from bench.config import resolve

    for c in runs(plan("--dry-run").stdout):
        sets = [opt(c[i:], "--set") for i, a in enumerate(c) if a == "--set" and not c[i + 1].startswith("teacher=")]
        cfg = resolve(opt(c, "-m"), "digits", sets, seed=int(opt(c, "--seed")))
        assert cfg.seed == int(opt(c, "--seed"))


def test_options_change_the_plan():
    r = plan("--dry-run", "--seeds-main", "0 1", "--seeds-rest", "1", "--experiment", "x", "--out", "/tmp/o")
    cmds = runs(r.stdout)
    assert r.returncode == 0 and len(cmds) == 3 * 2 + 10 and all(opt(c, "-e") == "x" for c in cmds)
    assert r.stdout.strip().endswith("report -e x --out /tmp/o --ratio shortcut/flow_matching")
    r = plan("--dry-run", "--from", "reflow:1")
    assert [(opt(c, "-m"), opt(c, "--seed")) for c in runs(r.stdout)] == [("reflow", "1"), ("reflow", "2")]


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--out"], "--out needs a value"),
    (["--seeds-main", "0 x"], "seeds are non-negative integers"),
    (["--seeds-rest", "0 7"], "seed 7 of --seeds-rest is not in --seeds-main"),
    (["--from", "nope:1"], "--from takes LABEL:SEED"),
    (["--from", "reflow"], "--from takes LABEL:SEED"),
    (["--dry-run", "--from", "reflow:9"], "names no run of this plan"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    r = plan(*args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert " run " not in r.stdout


def test_a_working_tree_with_uncommitted_changes_is_refused_before_any_run(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / SCRIPT.name)
    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=repo, check=True,  # noqa: E731
                                    capture_output=True)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    (repo / "scripts" / SCRIPT.name).write_text((repo / "scripts" / SCRIPT.name).read_text() + "\n# edit\n")
    r = subprocess.run(["bash", "scripts/regenerate_digits.sh"], cwd=repo, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "BENCH": "false"})
    assert r.returncode == 2 and "uncommitted changes" in r.stderr and "+ " not in r.stdout
