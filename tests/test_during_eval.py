"""The evaluation during training (train.eval_every): its own n list and sample count, logged as
during/<metric>_n<n> at the training step and handed to on_metrics, its cost said before training,
and training itself untouched by it."""

from __future__ import annotations

import pytest

from bench.config import resolve
from bench.errors import BenchError

BASE = ["train.steps=120", "train.log_every=20", "train.checkpoint_every=1000", "M=8", "eval.num_samples=300",
        "eval.batch_size=300"]


def test_during_evaluation_logs_its_own_n_and_samples_and_leaves_training_alone():
    from bench.store.tracking import client
    from bench.train.run import execute

    said, heard = [], []
    cfg = resolve("shortcut", "smoke", BASE + ["train.eval_every=40", "eval.during_steps=1,2,4", "eval.during_samples=200"])
    out = execute(cfg, "during", progress=False, echo=said.append, on_metrics=lambda step, m: heard.append((step, dict(m))))
    plain = execute(resolve("shortcut", "smoke", BASE), "plain", progress=False, echo=lambda *_: None)
    assert out.results == plain.results  # the EMA, the final samples and every metric: as without it

    c = client()
    rid = out.run_id
    for n in (1, 2, 4):
        assert [m.step for m in c.get_metric_history(rid, f"during/fid_n{n}")] == [40, 80]  # not at the last step
    assert not c.get_metric_history(rid, "during/fid_n8")
    # paired_to_2n needs the 2n-step samples from the same noise: n = 1 and 2 have them, 4 does not
    assert len(c.get_metric_history(rid, "during/paired_to_2n_n1")) == 2
    assert not c.get_metric_history(rid, "during/paired_to_2n_n4")
    during = [(s, m) for s, m in heard if any(k.startswith("during/") for k in m)]
    assert [s for s, _ in during] == [40, 80]
    assert during[0][1]["during/fid_n1"] == c.get_metric_history(rid, "during/fid_n1")[0].value
    assert any("train/loss" in m for _, m in heard)  # the training log points too
    line = next(s for s in said if s.startswith("evaluation during training"))
    assert "every 40 steps (2 more)" in line and "200 samples at n = 1,2,4" in line
    assert float(c.get_run(rid).data.tags["eval.during_estimate_seconds"]) > 0


def test_during_evaluation_draws_the_same_noise_each_time_and_its_own_sample_count():
    """A fixed model scores the same at every call (the signal moves with the model, not the draw), and
    the sample count is eval.during_samples, not eval.num_samples."""
    import torch

    from bench.train.run import prepare

    cfg = resolve("shortcut", "smoke", BASE + ["train.eval_every=40", "eval.during_samples=150"])
    p = prepare(cfg, progress=False)
    ev = p.evaluator.during()
    assert ev.cfg.eval.num_samples == 150 and p.evaluator.cfg.eval.num_samples == 300
    model = p.model.eval()
    a = {r.num_sampling_steps: (r.metrics, r.samples.shape[0]) for r in ev.evaluate_steps(p.method, model, [1, 4], 8)}
    b = {r.num_sampling_steps: (r.metrics, r.samples.shape[0]) for r in ev.evaluate_steps(p.method, model, [1, 4], 8)}
    assert a == b and a[1][1] == 150


@pytest.mark.parametrize("over, words", [
    (["train.eval_every=10", "eval.during_steps=3"], "eval.during_steps: 3 sampling steps do not divide M = 8"),
    (["train.eval_every=10", "eval.during_steps=1,x"], "comma list of integers"),
    (["train.eval_every=10", "eval.during_samples=0"], "eval.during_samples must be >= 1"),
    (["train.eval_every=-1"], "train.eval_every must be >= 0"),
])
def test_bad_during_settings_are_one_sentence(over, words):
    with pytest.raises(BenchError, match=words):
        resolve("shortcut", "smoke", BASE + over)


def test_during_steps_are_not_read_when_nothing_is_evaluated_during_training():
    cfg = resolve("shortcut", "smoke", ["M=2"])  # the default list 1,4 does not divide M = 2; unused
    assert cfg.train.eval_every == 0


def test_the_estimate_takes_eval_save_samples_0():
    """No samples kept: the estimate's output timing is 0 instead of concatenating nothing."""
    import numpy as np
    import torch

    from bench.train.run import prepare

    p = prepare(resolve("shortcut", "smoke", BASE + ["eval.save_samples=0"]), progress=False)
    x = torch.zeros(4, *p.data.shape)
    assert p.evaluator._time_output(x, torch.zeros(4, dtype=torch.long), np.zeros((10, 2))) == 0.0
