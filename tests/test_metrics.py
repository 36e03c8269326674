"""Metric formulas against closed forms; the two FID backends agree; the digits feature space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.evaluation import metrics as M


def test_frechet_distance_of_gaussians_in_closed_form():
    # N(m1, a^2 I) vs N(m2, b^2 I) in D dims: |m1 - m2|^2 + D (a - b)^2
    rng = np.random.default_rng(0)
    D, n = 4, 200_000
    a, b = 1.0, 0.5
    m1, m2 = np.zeros(D), np.full(D, 0.5)
    x = m1 + a * rng.standard_normal((n, D))
    y = m2 + b * rng.standard_normal((n, D))
    want = ((m1 - m2) ** 2).sum() + D * (a - b) ** 2  # 1.0 + 1.0
    assert M.frechet_distance(x, y) == pytest.approx(want, abs=0.02)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_torch_fidelity_and_clean_fid_agree_on_identical_features():
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(1)
    f1 = rng.standard_normal((600, 32))
    f2 = 0.3 + 1.2 * rng.standard_normal((700, 32))
    a, b = M.frechet_distance(f1, f2), float(fid_from_feats(f1, f2))
    assert a == pytest.approx(b, rel=1e-7)
    assert a > 1.0


def test_sliced_wasserstein_of_a_shift():
    # shifting a 2-D set by c: each projection moves by <c, theta>; SW2 = |c| / sqrt(2) for uniform theta
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2_000, 2))
    c = np.array([0.6, -0.8])  # |c| = 1
    assert M.sliced_wasserstein(x, x + c, num_projections=2000) == pytest.approx(1 / np.sqrt(2), rel=0.03)
    assert M.sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


def test_mode_coverage_counts():
    from bench.data import _eight_gaussians_modes

    modes = _eight_gaussians_modes()
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]])
    pts = torch.cat([centres.repeat(100, 1), torch.zeros(100, 2)])  # 3 modes + 100 at the origin
    out = M.mode_coverage(pts, modes.assign, 8)
    assert out["modes_hit"] == 3 and out["mode_share"] == pytest.approx(0.75)


def test_kid_subset_size():
    assert M.kid_subset_size(2000, 1797) == 1000 and M.kid_subset_size(300, 1797) == 300


def test_shipped_digits_classifier_is_accurate_on_held_out_digits():
    from sklearn.model_selection import train_test_split

    from bench.data import load_digits_arrays
    from bench.classifiers.digits import load_classifier

    images, labels = load_digits_arrays()
    _, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    net = load_classifier()
    x = torch.from_numpy(images[test] / 8.0 - 1.0)[:, None]
    acc = (net(x).argmax(1).numpy() == labels[test]).mean()
    assert acc >= 0.97


def test_digits_classifier_retrains_reproducibly(tmp_path):
    from bench.classifiers.digits import train_classifier

    a = train_classifier(epochs=1, out=tmp_path / "a.npz")
    b = train_classifier(epochs=1, out=tmp_path / "b.npz")
    assert a["weights_sha256"] == b["weights_sha256"]
    c = train_classifier(seed=1, epochs=1, out=tmp_path / "c.npz")
    assert c["weights_sha256"] != a["weights_sha256"]


def test_feature_space_resolution_and_missing_inception(tmp_path, monkeypatch):
    from bench.config import DataConfig
    from bench.data import TensorData, load_dataset
    from bench.errors import BenchError

    digits = load_dataset(DataConfig(spec="digits"))
    fs = M.FeatureSpace.resolve("auto", digits, "")
    assert fs.name == "digits-classifier" and len(fs.weights_sha256) == 64
    assert M.FeatureSpace.resolve("auto", load_dataset(DataConfig(spec="digits", labels=False)), "").name == "digits-classifier"
    assert M.FeatureSpace.resolve("auto", TensorData("toy:x", "points", torch.zeros(4, 2), None, 0), "").name == "coords"
    assert M.FeatureSpace.resolve("auto", TensorData("npz:x", "vectors", torch.zeros(4, 5), None, 0), "").name == "raw"
    with pytest.raises(BenchError, match="eval.features = digits-classifier needs image data; toy:x holds points."):
        M.FeatureSpace.resolve("digits-classifier", TensorData("toy:x", "points", torch.zeros(4, 2), None, 0), "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # not torch.hub.set_dir: that would outlive this test
    folder = TensorData("imagefolder:/x", "images", torch.zeros(4, 3, 8, 8), None, 0)
    with pytest.raises(BenchError, match="weights-inception-2015-12-05-6726825d.pth"):
        M.FeatureSpace.resolve("auto", folder, "")
    with pytest.raises(BenchError, match="does not exist"):
        M.FeatureSpace.resolve("inception", digits, str(tmp_path / "nope.pth"))


def test_reference_cache_key_changes_with_weights(tmp_path):
    from bench.config import resolve
    from bench.data import load_dataset
    from bench.evaluation.evaluate import Evaluator

    cfg = resolve("flow_matching", "digits")
    data = load_dataset(cfg.data)
    ev = Evaluator(cfg, data, torch.device("cpu"), tmp_path, progress=False)
    name = ev.cache_name()
    assert data.fingerprint() in name and ev.space.weights_sha256[:16] in name
    feats = ev.reference_features()
    assert feats.shape == (1797, 128) and (tmp_path / name).is_file()
    ev.space.weights_sha256 = "0" * 64  # other weights -> another cache entry, never the stale one
    assert ev.cache_name() != name
