"""No checkpoint can run code: every file the harness reads back goes through
torch.load(weights_only=True). A crafted file whose unpickling would create a marker file is
refused with one sentence, as a teacher and as a resumed checkpoint, and the marker never appears."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.files import checkpoint as ckpt
from bench.errors import BenchError


class _Payload:
    """Unpickling calls os.system(touch MARKER): what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path: Path, marker: Path) -> Path:
    """A file shaped like a harness checkpoint, with the payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": {}, "model": {}, "config": {"method_name": "flow_matching"}, "step": 1, "x": _Payload(marker)}, path)
    assert not marker.exists()  # saving does not run it
    return path


def one_sentence(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln]
    assert len(lines) == 1, text
    body = lines[0].removeprefix("error: ")
    assert body.endswith(".") and body.count(". ") == 0, body
    return body


def test_the_payload_would_run_under_the_old_load(tmp_path):
    # the test's premise: without weights_only the file executes its payload
    path = crafted(tmp_path / "evil.pt", tmp_path / "marker")
    torch.load(path, weights_only=False)
    assert (tmp_path / "marker").exists()


def test_load_refuses_a_payload_and_does_not_run_it(tmp_path):
    path = crafted(tmp_path / "evil.pt", tmp_path / "marker")
    with pytest.raises(ckpt.CheckpointRefused) as e:
        ckpt.load(path)
    assert "refused" in one_sentence(str(e.value)) and str(path) in str(e.value)
    with pytest.raises(ckpt.CheckpointRefused):
        ckpt.load(path, mmap=True)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_bare_pickle_payload_is_not_run_either(tmp_path, protocol):
    import pickle

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Payload(tmp_path / "marker")}, protocol=protocol))
    with pytest.raises(BenchError, match="refused|corrupt"):
        ckpt.load(path)
    assert not (tmp_path / "marker").exists()


def test_a_refused_last_checkpoint_is_not_worked_around_with_the_previous_one(tmp_path):
    last = tmp_path / "last.pt"
    ckpt.save({"step": 3}, ckpt.previous(last))
    crafted(last, tmp_path / "marker")
    with pytest.raises(ckpt.CheckpointRefused):
        ckpt.load_latest(last, warn=lambda *_: pytest.fail("fell back to the previous checkpoint"))
    assert not (tmp_path / "marker").exists()


def test_what_the_harness_saves_loads_with_weights_only(tmp_path):
    from bench.config import resolve
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    for method in ("shortcut", "consistency_training"):
        p = prepare(resolve(method, "smoke", ["train.steps=2"]), progress=False)
        trainer = Trainer(p.cfg, p.method, p.model, p.data, p.device, progress=False)
        trainer.fit()
        state = trainer.state_dict()
        ckpt.save(state, tmp_path / f"{method}.pt")
        back = ckpt.load(tmp_path / f"{method}.pt")
        assert back["step"] == 2 and back["config"] == state["config"]
        assert ckpt.state_hash(back["ema"]) == ckpt.state_hash(state["ema"])


def test_a_crafted_teacher_file_is_refused(tmp_path):
    from bench.config import resolve
    from bench.train.run import prepare
    from bench.train.teachers import TeacherPlan

    path = crafted(tmp_path / "teacher.pt", tmp_path / "marker")
    p = prepare(resolve("progressive", "smoke", [f"teacher={path}"]), progress=False)
    with pytest.raises(BenchError, match="refused"):
        TeacherPlan.check(p)
    assert not (tmp_path / "marker").exists()


def test_a_crafted_resume_checkpoint_is_refused_before_the_store_is_touched(tmp_path, isolated_store):
    from bench.config import resolve
    from bench.train.run import checkpoint_dir, execute

    run_id = "0123456789abcdef0123456789abcdef"
    crafted(checkpoint_dir(run_id) / "last.pt", tmp_path / "marker")
    with pytest.raises(BenchError, match="refused"):
        execute(resolve("shortcut", "smoke", []), "x", resume_run_id=run_id, progress=False, echo=lambda *_: None)
    assert not (tmp_path / "marker").exists()
    assert not (isolated_store / "mlflow.db").exists()


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def test_cli_refuses_a_crafted_teacher_and_a_crafted_resume_with_exit_2(tmp_path, isolated_store):
    teacher = crafted(tmp_path / "teacher.pt", tmp_path / "marker")
    r = _bench("run", "-m", "progressive", "-p", "smoke", "--set", f"teacher={teacher}")
    assert r.returncode == 2, r.stderr
    assert "refused and not loaded" in one_sentence(r.stderr)
    from bench.train.run import checkpoint_dir

    run_id = "fedcba9876543210fedcba9876543210"
    crafted(checkpoint_dir(run_id) / "last.pt", tmp_path / "marker")
    r = _bench("resume", run_id)
    assert r.returncode == 2, r.stderr
    assert "refused and not loaded" in one_sentence(r.stderr)
    assert not (tmp_path / "marker").exists()
    assert not (isolated_store / "mlflow.db").exists()
