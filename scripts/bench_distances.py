"""The evaluation's distances against the library code they replace, side by side on this machine:
the Frechet distance at Inception's 2,048 dimensions (torch-fidelity's general eigenvalues of S_a S_b
against one symmetric eigvalsh per n with the reference's Cholesky factor made in the call, and kept
across calls as a run keeps it) and KID at the digits profile's sizes (torch-fidelity's loop over 100 subsets against
kernels computed once). Medians of --reps interleaved repetitions; ratios, not absolute times, are the
result on a shared machine. Statistics (means, covariances) are computed once, outside the timings:
every version needs them.

    python scripts/bench_distances.py [--reps 5] [--out results/profile-digits/distances.txt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def features(n: int, dim: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((dim, dim)) / np.sqrt(dim)
    return np.maximum(rng.standard_normal((n, dim)) @ mix + shift, 0.0) * 3.0


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from bench.evaluation import metrics as M

    lines = [f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads; "
             f"medians of {args.reps} interleaved repetitions"]
    gen, ref = M.Gaussian.of(features(6000, 2048, 0.05, 1)), M.Gaussian.of(features(6000, 2048, 0.0, 2))
    ref.factor()  # kept across every n of a run
    rows = {"torch-fidelity (eigvals of S_a S_b)": [], "reference factor made": [], "reference factor kept": []}
    values = {}
    for _ in range(args.reps):
        t, values["lib"] = timed(lambda: fid_statistics_to_metric({"mu": gen.mu, "sigma": gen.sigma},
                                                                  {"mu": ref.mu, "sigma": ref.sigma}, False)["frechet_inception_distance"])
        rows["torch-fidelity (eigvals of S_a S_b)"].append(t)
        fresh = M.Gaussian(ref.mu, ref.sigma)
        t, values["two"] = timed(lambda: M.frechet_from_statistics(gen, fresh))
        rows["reference factor made"].append(t)
        t, values["kept"] = timed(lambda: M.frechet_from_statistics(gen, ref))
        rows["reference factor kept"].append(t)
    base = statistics.median(rows["torch-fidelity (eigvals of S_a S_b)"])
    lines.append("Frechet distance, 2,048-d, from the statistics of 6,000 x 6,000 rows:")
    for name, ts in rows.items():
        lines.append(f"  {name:<36} {statistics.median(ts):7.2f} s  speed-up {base / statistics.median(ts):5.1f}x")
    rel = max(abs(values[k] - values["lib"]) / abs(values["lib"]) for k in ("two", "kept"))
    lines.append(f"  FID {values['lib']:.10g}; largest relative difference to torch-fidelity {rel:.1e}")

    g, r = features(2000, 128, 0.05, 3), features(1797, 128, 0.0, 4)
    lib, new = [], []
    for _ in range(args.reps):
        t, a = timed(lambda: kid_features_to_metric(torch.from_numpy(g), torch.from_numpy(r), kid_subset_size=1000,
                                                    rng_seed=10_007, verbose=False)["kernel_inception_distance_mean"])
        lib.append(t)
        t, b = timed(lambda: M.kid(g, r, 100, 1000, 10_007)["kid"])
        new.append(t)
    lines.append("KID, 2,000 x 1,797 rows of 128-d (the digits profile), 100 subsets of 1,000:")
    lines.append(f"  torch-fidelity loop {statistics.median(lib):.2f} s, kernels once {statistics.median(new):.3f} s "
                 f"(reference kernel included), speed-up {statistics.median(lib) / statistics.median(new):.1f}x; "
                 f"KID {a:.8g} vs {b:.8g}, relative difference {abs(a - b) / abs(a):.1e}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
