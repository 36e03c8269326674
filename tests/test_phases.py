"""bench.phases: a run's wall time by phase, each second counted once; and a run logs it."""

from __future__ import annotations

import json
import time

import pytest

from bench.phases import PhaseClock, current_clock, recording, span


def test_spans_are_exclusive_and_add_up_to_the_clock():
    clock = PhaseClock(count_startup=False)
    with recording(clock):
        with span("outer"):
            time.sleep(0.05)
            with span("inner"):
                time.sleep(0.1)
            with span("inner"):
                time.sleep(0.1)
        time.sleep(0.03)  # no span: other
    rows = {r["phase"]: r for r in clock.rows()}
    assert rows["inner"]["seconds"] == pytest.approx(0.2, abs=0.04) and rows["inner"]["calls"] == 2
    assert rows["outer"]["seconds"] == pytest.approx(0.05, abs=0.04)  # its own time only
    assert rows["other"]["seconds"] == pytest.approx(0.03, abs=0.03)
    parts = sum(r["seconds"] for k, r in rows.items() if k != "total")
    assert parts == pytest.approx(rows["total"]["seconds"], rel=1e-6)


def test_an_absorbing_span_keeps_the_spans_inside_it():
    clock = PhaseClock(count_startup=False)
    with recording(clock):
        with span("estimate", absorb=True):
            with span("sampling"):
                time.sleep(0.05)
        with span("sampling"):
            time.sleep(0.02)
    rows = {r["phase"]: r for r in clock.rows()}
    assert rows["estimate"]["seconds"] == pytest.approx(0.05, abs=0.03)
    assert rows["sampling"]["calls"] == 1 and rows["sampling"]["seconds"] == pytest.approx(0.02, abs=0.02)


def test_without_a_clock_spans_do_nothing():
    assert current_clock() is None
    with span("anything"):
        pass
    from bench.phases import count_process_start

    assert "startup" not in PhaseClock().seconds  # a library call inside a longer process: not its start
    count_process_start()
    first, second = PhaseClock(), PhaseClock()
    assert first.seconds["startup"] > 0 and "startup" not in second.seconds  # the process's age (Linux), once


@pytest.mark.slow
def test_a_run_logs_its_phases(isolated_store):
    from bench.config import resolve
    from bench.store.tracking import RunStore
    from bench.train.run import execute

    printed = []
    out = execute(resolve("shortcut", "smoke", ["train.steps=40", "M=4", "eval.num_samples=200"]), "ph",
                  progress=False, echo=printed.append)
    run = RunStore().get(out.run_id)
    rows = json.loads(RunStore().fetch_artifact(run, "phases.json", isolated_store / "dl").read_text())
    names = [r["phase"] for r in rows]
    for phase in ("setup", "mlflow_writes", "train_steps", "checkpoints", "eval_estimate",
                  "sampling/n4", "sampling/n1", "metric/fid", "fid_floor", "other", "total"):
        assert phase in names, phase
    total = rows[-1]["seconds"]
    assert sum(r["seconds"] for r in rows[:-1]) == pytest.approx(total, rel=1e-6)
    assert rows[names.index("other")]["seconds"] < 0.1 * total  # the spans claim the run's time
    assert any("wall time by phase" in p for p in printed), "\n".join(printed)
    print(printed[-1])
