"""The evaluation's distances computed faster, checked against the formulas they replace, retyped here:
torch-fidelity's FID (general eigenvalues of S_a S_b) and its KID loop (one subset at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.evaluation import metrics as M
from bench.evaluation import registry


def fid_by_general_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    # torch_fidelity.metric_fid (after TTUR's fid.py): np.cov, np.linalg.eigvals of sigma1.dot(sigma2),
    # complex square roots, real part summed
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype("complex128")).real)
    d = mu1 - mu2
    return float(d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kid_one_subset_at_a_time(f1: np.ndarray, f2: np.ndarray, subsets: int, m: int, seed: int):
    # torch_fidelity.metric_kid: RandomState(seed), choice without replacement per side and subset,
    # kernel (X Y^T / D + 1) ** 3, unbiased MMD^2 (diagonals dropped from the within-set sums)
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = [(u @ v.T / f1.shape[1] + 1) ** 3 for u, v in ((x, x), (y, y), (x, y))]
        out.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)
    return float(np.mean(out)), float(np.std(out))


def features(n: int, dim: int, shift: float, seed: int) -> np.ndarray:
    """Non-negative, correlated, heavy-ish tailed rows like a ReLU network's penultimate layer."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((dim, dim)) / np.sqrt(dim)
    return np.maximum(rng.standard_normal((n, dim)) @ mix + shift, 0.0) * 3.0


# the last two: S_a, then S_b singular (90 rows, 128 dims; S_b's factor is then its square root, not
# Cholesky's), where both formulas take square roots of eigenvalues that are 0 up to rounding (an error e
# in one becomes sqrt(e)): they agree to 1e-6 relative there, the bound
@pytest.mark.parametrize("n_a,n_b,dim,rel", [(600, 500, 32, 1e-10), (300, 400, 128, 1e-10), (90, 700, 128, 1e-6),
                                             (700, 90, 128, 1e-6)])
def test_frechet_distance_equals_the_general_eigenvalue_formula(n_a, n_b, dim, rel):
    a, b = features(n_a, dim, 0.1, 1), features(n_b, dim, 0.0, 2)
    want = fid_by_general_eigenvalues(a, b)
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=rel)
    ref = M.Gaussian.of(b)  # the reference's square root kept across calls gives the same number
    assert M.frechet_from_statistics(M.Gaussian.of(a), ref) == M.frechet_from_statistics(M.Gaussian.of(a), ref)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * want)


@pytest.mark.parametrize("n_a,n_b,m,subsets", [(400, 350, 300, 20), (3000, 2500, 100, 5)])  # whole kernels; per subset
def test_kid_equals_torch_fidelity_loop(n_a, n_b, m, subsets):
    a, b = features(n_a, 48, 0.4, 3), features(n_b, 48, 0.0, 4)
    want_mean, want_std = kid_one_subset_at_a_time(a, b, subsets, m, seed=7)
    got = M.kid(a, b, subsets=subsets, subset_size=m, seed=7)
    assert got["kid"] == pytest.approx(want_mean, rel=1e-9)
    assert got["kid_std"] == pytest.approx(want_std, rel=1e-9)
    assert abs(want_mean) > 10 * want_std / np.sqrt(subsets)  # a real gap, not a value near 0 where rel means little


def test_the_library_kid_is_what_the_retyped_loop_computes():
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = features(400, 48, 0.1, 5), features(350, 48, 0.0, 6)
    lib = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subset_size=300, kid_subsets=20,
                                 rng_seed=7, verbose=False)
    assert kid_one_subset_at_a_time(a, b, 20, 300, 7)[0] == pytest.approx(lib["kernel_inception_distance_mean"], rel=1e-12)


def test_reference_values_are_made_once_and_change_no_number():
    from bench.config import EvalConfig

    ref = features(700, 32, 0.0, 8)
    made = []

    def inputs(gen, cache):
        return registry.FeatureInputs(torch.from_numpy(gen).float(), ref, True, EvalConfig(), 3, torch.device("cpu"), cache)

    class Counting(dict):
        def __setitem__(self, k, v):
            made.append(k)
            super().__setitem__(k, v)

    cache = Counting()
    for seed in (9, 10):
        gen = features(600, 32, 0.1, seed)
        kept, fresh = registry.measure("features", inputs(gen, cache)), registry.measure("features", inputs(gen, {}))
        assert kept == fresh
    assert sorted(made) == ["gaussian", "kid_kernel", "prc_radii", "prc_reference"]  # once each over two n


def test_precision_recall_equals_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen, ref = torch.from_numpy(features(500, 24, 0.3, 11)).float(), torch.from_numpy(features(450, 24, 0.0, 12)).float()
    lib = prc_features_to_metric(gen, ref, save_cpu_ram=True, verbose=False)
    ours = M.precision_recall(gen, ref)
    assert ours == {"precision": lib["precision"], "recall": lib["recall"]}  # the same distances: the same values
    assert 0.05 < ours["precision"] < 0.95 and 0.05 < ours["recall"] < 0.95  # not a degenerate case
    assert M.precision_recall(gen, ref, M.knn_radii(ref)) == ours
    small = M.precision_recall(gen, ref, batch=64)  # batched distances: the same balls
    assert small == ours
