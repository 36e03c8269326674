"""Teachers of the distilling methods, end to end through bench.train.run.execute and the tracking store:
teacher=RUN_ID, teacher=PATH, a nested teacher run when none is given (reused on resume), and
the errors a user can cause. Tiny configs: 2-D toy, a 2-layer MLP of 32, tens of steps."""

from __future__ import annotations

import pytest
import torch

from bench.files.checkpoint import load, state_hash
from bench.config import resolve
from bench.errors import BenchError
from bench.train.run import checkpoint_dir, execute
from bench.store.tracking import client

pytestmark = pytest.mark.slow

TINY = ["train.steps=20", "train.batch_size=64", "model.hidden=32", "model.depth=2", "train.log_every=10",
        "train.checkpoint_every=10", "eval.num_samples=200", "eval.batch_size=200", "eval.steps=1,8", "method.M=8"]


def run(method, *extra, teacher=None):
    return execute(resolve(method, "smoke", TINY + list(extra)), "t", progress=False, echo=lambda *a: None, teacher=teacher)


def params(run_id):
    return client().get_run(run_id).data.params


def test_teacher_from_a_run_id_or_a_checkpoint_path_is_frozen_hashed_and_charged():
    fm = run("flow_matching")
    final = checkpoint_dir(fm.run_id) / "final.pt"
    state = load(final)
    # train.steps=0: the student's final weights are its initial ones, i.e. the teacher's
    st = run("progressive", "train.steps=0", f"teacher={fm.run_id}")
    p = params(st.run_id)
    assert p["teacher.source"] == "run" and p["teacher.run_id"] == fm.run_id
    assert p["teacher.ema_sha256"] == state["ema_sha256"] == state_hash(state["ema"])
    assert p["budget.teacher_train_steps"] == "20" and p["budget.teacher_examples"] == str(20 * 64)
    assert p["budget.total_train_examples"] == str(20 * 64) and p["method.teacher"] == fm.run_id
    student = load(checkpoint_dir(st.run_id) / "final.pt")
    assert all(torch.equal(student["model"][k], state["ema"][k]) for k in state["ema"])  # starts from the teacher

    cd = run("consistency_distillation", f"teacher={final}")
    p = params(cd.run_id)
    assert p["teacher.source"] == "checkpoint" and p["teacher.path"] == str(final.resolve())
    assert p["teacher.ema_sha256"] == state["ema_sha256"]
    assert p["budget.total_train_steps"] == "40" and p["budget.nograd_rows_per_step"] == str(2 * 64)


def test_without_a_teacher_one_is_trained_as_a_nested_run_and_found_again_on_resume():
    st = run("reflow", "num_pairs=64")
    c = client()
    exp = c.get_experiment_by_name("t")
    runs = {r.info.run_id: r for r in c.search_runs([exp.experiment_id])}
    assert len(runs) == 2
    child = next(r for rid, r in runs.items() if rid != st.run_id)
    assert child.data.tags["mlflow.parentRunId"] == st.run_id and child.data.tags["bench.role"] == "teacher"
    assert child.data.tags["method"] == "flow_matching" and child.info.status == "FINISHED"
    p = params(st.run_id)
    assert p["teacher.source"] == "trained" and p["teacher.run_id"] == child.info.run_id
    assert p["teacher.ema_sha256"] == load(checkpoint_dir(child.info.run_id) / "final.pt")["ema_sha256"]
    assert p["budget.teacher_train_steps"] == "20"
    # continuing the student's run reuses its teacher instead of training another
    execute(resolve("reflow", "smoke", TINY + ["num_pairs=64"]), "t", resume_run_id=st.run_id, progress=False,
            echo=lambda *a: None)
    assert len(c.search_runs([exp.experiment_id])) == 2


def test_bad_teachers_fail_in_one_sentence_before_the_student_run_is_created():
    with pytest.raises(BenchError, match="neither a checkpoint file nor a run"):
        run("progressive", "teacher=0123456789abcdef0123456789abcdef")
    with pytest.raises(BenchError, match="does not exist"):
        run("progressive", "teacher=/no/such/final.pt")
    sc = run("shortcut", "train.steps=2")
    with pytest.raises(BenchError, match="distils a flow_matching teacher"):
        run("consistency_distillation", f"teacher={sc.run_id}")
    fm = run("flow_matching", "train.steps=2", "model.hidden=16")
    with pytest.raises(BenchError, match="another architecture"):
        run("reflow", f"teacher={fm.run_id}")
    with pytest.raises(BenchError, match="Unknown config key 'teacher'"):
        resolve("meanflow", "smoke", ["teacher=abc"])
    exp = client().get_experiment_by_name("t")
    assert len(client().search_runs([exp.experiment_id])) == 2  # only the two teachers-to-be


def test_a_teacher_with_another_d_scale_is_accepted_and_keeps_its_own():
    """model.d_scale is no weight, and the flow teacher is only queried at d = 0: a teacher trained
    with another d_scale (e.g. before the key existed, 1000) distils into a student with its own."""
    fm = run("flow_matching", "model.d_scale=1000")
    st = run("progressive", "train.steps=0", f"teacher={fm.run_id}")
    teacher_state = load(checkpoint_dir(fm.run_id) / "final.pt")
    student_state = load(checkpoint_dir(st.run_id) / "final.pt")
    assert teacher_state["config"]["model"]["d_scale"] == 1000.0
    assert student_state["config"]["model"]["d_scale"] == 1.0
    assert all(torch.equal(student_state["model"][k], teacher_state["ema"][k]) for k in teacher_state["ema"])
