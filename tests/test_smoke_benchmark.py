"""The smoke benchmark CI runs: both methods on `smoke` (eight Gaussians), results checked."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_smoke_shortcut_vs_flow_matching(tmp_path):
    from bench.config import resolve
    from bench.train.run import execute
    from bench.store.tracking import client

    quiet = dict(progress=False, echo=lambda *_: None)
    fm = execute(resolve("flow_matching", "smoke"), "smoke", **quiet)
    sc = execute(resolve("shortcut", "smoke"), "smoke", **quiet)
    M = 128
    f, s = fm.results, sc.results
    print({n: (round(f[n]["fid"], 4), round(s[n]["fid"], 4)) for n in f})
    # shortcut at 1 step: Frechet distance at most 1/10 of flow matching's, every mode covered
    assert s[1]["fid"] <= f[1]["fid"] / 10
    assert s[1]["modes_hit"] == 8
    # at M steps both are good and within 2x of each other
    assert s[M]["fid"] <= 2 * f[M]["fid"] and f[M]["modes_hit"] == 8
    # flow matching at 1 step collapses toward the data mean (the origin): no mode is hit
    assert f[1]["modes_hit"] == 0 and f[1]["mode_share"] < 0.01
    path = client().download_artifacts(fm.run_id, "samples/steps_1.npz", str(tmp_path))
    x = np.load(path)["x"]
    assert np.linalg.norm(x.mean(0)) < 0.2 and np.linalg.norm(x, axis=1).mean() < 1.0  # data radius is 2
