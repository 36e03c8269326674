"""CI smoke benchmark of the baselines: every method on `smoke` (eight Gaussians), its results checked
against flow matching trained the same way (which is also the distilling methods' teacher).

Checked: the few-step methods (progressive, consistency training/distillation, reflow, live reflow,
MeanFlow) at 1 step far better than flow matching at 1 step; every method covers all 8 modes at
its best n; progressive is good at 1 step and worse at M (the paper's shape)."""

from __future__ import annotations

import os
from unittest import mock

import pytest

pytestmark = pytest.mark.slow

# half the smoke profile's 4000 steps (progressive: all of them) keeps each method near 30 s on 2 idle cores
OVERRIDES = ["train.steps=2000", "train.checkpoint_every=2000", "eval.num_samples=2000", "eval.batch_size=2000",
             "eval.steps=1,4,16,128"]
M = 128
QUIET = dict(progress=False, echo=lambda *_: None)


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
    """Flow matching on smoke (its own store): the baseline to beat at 1 step and the teacher (a checkpoint path)."""
    from bench.config import resolve
    from bench.train.run import checkpoint_dir, execute

    store = tmp_path_factory.mktemp("fm-store")
    with mock.patch.dict(os.environ, {"BENCH_STORE": str(store)}):
        out = execute(resolve("flow_matching", "smoke", OVERRIDES), "smoke", **QUIET)
        return out.results, str(checkpoint_dir(out.run_id) / "final.pt")


@pytest.mark.parametrize("name", ["progressive", "consistency_training", "consistency_distillation", "reflow",
                                  "live_reflow", "meanflow"])
def test_baseline_on_smoke(name, flow_teacher):
    from bench.config import resolve
    from bench.train.run import execute
    from methods import METHODS

    fm, teacher = flow_teacher
    extra = [f"teacher={teacher}"] if METHODS[name].needs_teacher else []
    extra += ["num_pairs=8192"] if name == "reflow" else []
    # progressive needs its 7 stages long enough for the 1-step student to beat its M-step self: the profile's 4000 steps
    # consistency training as the authors (schedule = authors) bootstraps from the training EMA (0.995 on smoke), which
    # follows the student more slowly than the former 0.95 target network: at 2000 steps seed 0 hit 5 of 8 modes at
    # 1 step (FD 0.10), at the profile's 4000 all 8 (FD 0.040)
    extra += ["train.steps=4000", "train.checkpoint_every=4000"] if name in ("progressive", "consistency_training") else []
    # consistency distillation with the authors' target, the training EMA (0.995 on smoke), propagates from t = 1 down
    # the 128 grid points far more slowly than a 0.95 target network: seed 0, 1-step FD 3.11 at 2000 steps and 2.29 at
    # 4000 (flow matching 3.62, every mode missed), so CI runs the named deviation target = own (0.95), which passes at 2000
    extra += ["target=own"] if name == "consistency_distillation" else []
    r = execute(resolve(name, "smoke", OVERRIDES + extra), "smoke", **QUIET).results
    print(name, {n: (round(r[n]["fid"], 4), r[n]["modes_hit"], round(r[n]["mode_share"], 3)) for n in r},
          "flow matching", {n: round(fm[n]["fid"], 4) for n in fm})
    # flow matching collapses at 1 step (the premise of the comparison)
    assert fm[1]["modes_hit"] == 0 and fm[M]["modes_hit"] == 8
    # every few-step method: at 1 step at most 1/10 of flow matching's 1-step Frechet distance, modes covered
    assert r[1]["fid"] <= fm[1]["fid"] / 10, r[1]
    assert r[1]["modes_hit"] == 8
    best = min(r, key=lambda n: r[n]["fid"])
    assert r[best]["modes_hit"] == 8 and r[best]["mode_share"] > 0.25
    if name == "progressive":  # good at 1 step, worse at M (the student forgot the small steps)
        assert r[1]["fid"] < r[M]["fid"]
