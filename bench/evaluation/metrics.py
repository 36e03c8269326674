"""Sample-quality metrics against a reference set, in a named feature space.

- images: FID, KID, precision/recall through torch-fidelity with the sampler as a
  `GenerativeModelBase` input (no image files); or FID/KID through clean-fid from the same
  features (`eval.fid_backend = "clean-fid"`). Feature extractors: the shipped digits classifier
  (`digits-classifier`) or Inception-v3 (`inception`: a local file, torch hub's cache, or torch-fidelity's
  file downloaded into that cache and checked against its SHA-256).
- points / vectors: the Frechet distance on coordinates (`coords`) or flattened values (`raw`),
  the sliced Wasserstein distance, and for 2-D toys mode coverage.

Reference statistics are cached under a name holding the data fingerprint, the feature
space and the hash of the extractor's weights, so a stale cache is never used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from bench.errors import BenchError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's own URL (torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3); $BENCH_INCEPTION_URL overrides it
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
# the file's SHA-256 (95,628,359 bytes), as published by several projects that pin it; torch hub's
# naming convention puts its first 8 hex digits in the file name (6726825d)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
DIGITS_EXTRACTOR = "bench-digits-classifier"


# ----------------------------------------------------------------------------- formulas


@dataclass
class Gaussian:
    """A feature set's mean (D,) and covariance (D, D) in float64, as torch-fidelity's
    fid_features_to_statistics computes them (np.mean; np.cov, rows as observations), and a factor of
    the covariance once it is asked for (reference statistics keep it across every n)."""

    mu: np.ndarray
    sigma: np.ndarray
    _factor: np.ndarray | None = None

    @classmethod
    def of(cls, feats: np.ndarray) -> "Gaussian":
        feats = np.asarray(feats, dtype=np.float64)
        return cls(np.mean(feats, axis=0), np.cov(feats, rowvar=False))

    def factor(self) -> np.ndarray:
        """F with F F^T = sigma: the Cholesky factor (milliseconds), or where sigma is singular (fewer rows
        than dimensions, a unit that never fires) its symmetric square root V diag(sqrt(max(w, 0))) V^T
        from scipy's eigh (MRRR: numpy's eigh took 24 s on one 2,048-d ReLU covariance here, this 5.6 s)."""
        if self._factor is None:
            try:
                self._factor = np.linalg.cholesky(self.sigma)
            except np.linalg.LinAlgError:
                from scipy.linalg import eigh

                w, v = eigh(self.sigma, driver="evr")
                self._factor = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        return self._factor


def frechet_from_statistics(a: Gaussian, b: Gaussian) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)), the formula of FID. The trace of the
    square root is the sum of sqrt(eigenvalues of S_a S_b), which are those of the symmetric F^T S_a F for
    any F F^T = S_b (S_a F F^T = F^-T (F^T S_a F) F^T where F is invertible; by continuity where not):
    b's factor (cached on b: pass the reference as b) and one eigvalsh, where torch-fidelity takes the
    general eigenvalues of S_a S_b (np.linalg.eigvals, clipping negative ones to 0 through the real part
    of a complex square root, as here)."""
    f = b.factor()
    inner = f.T @ a.sigma @ f
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    diff = a.mu - b.mu
    return float(diff.dot(diff) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D): frechet_from_statistics of their Gaussians."""
    return frechet_from_statistics(Gaussian.of(feats_a), Gaussian.of(feats_b))


def kid_subsets(n_a: int, n_b: int, subsets: int, subset_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of each KID subset, (subsets, subset_size) for each side, drawn as torch-fidelity's
    kid_features_to_metric draws them: np.random.RandomState(seed), per subset a choice without
    replacement from side a, then from side b."""
    rng = np.random.RandomState(seed)
    a, b = np.empty((subsets, subset_size), np.int64), np.empty((subsets, subset_size), np.int64)
    for i in range(subsets):
        a[i] = rng.choice(n_a, subset_size, replace=False)
        b[i] = rng.choice(n_b, subset_size, replace=False)
    return a, b


def cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's polynomial kernel (x . y / D + 1)^3 (torch-fidelity's kernel_poly at its defaults)."""
    k = np.matmul(x, y.T) * (1.0 / x.shape[1]) + 1.0
    return k * k * k


def _block_sums(kernel: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per subset s: the sum of kernel[rows[s]][:, cols[s]], through indicator vectors (no copies)."""
    ind_r = np.zeros((len(rows), kernel.shape[0]))
    ind_c = np.zeros((len(cols), kernel.shape[1]))
    np.put_along_axis(ind_r, rows, 1.0, axis=1)
    np.put_along_axis(ind_c, cols, 1.0, axis=1)
    return np.einsum("sj,sj->s", ind_r @ kernel, ind_c)


KID_WHOLE_KERNEL_ENTRIES = 64_000_000  # 512 MB of float64 kernels at most (digits: 10.8 M); above, per subset


def kid(gen: np.ndarray, ref: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        ref_kernel: Callable[[], np.ndarray] | None = None) -> dict[str, float]:
    """torch-fidelity's KID (kid_features_to_metric): the unbiased MMD^2 with the cubic kernel, mean and
    std over `subsets` subsets of `subset_size` rows of each side, the same subsets (kid_subsets). Where
    it is fewer kernel entries (and at most KID_WHOLE_KERNEL_ENTRIES), each kernel matrix is computed once
    over all rows and the subsets' sums read from it (`ref_kernel()`: the reference's own, which does not change with the samples: a caller
    caches it); otherwise per subset, as torch-fidelity does. Equal to its value up to the order of
    floating-point sums."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    m = subset_size
    rows_g, rows_r = kid_subsets(len(gen), len(ref), subsets, m, seed)
    entries = len(gen) ** 2 + len(ref) ** 2 + len(gen) * len(ref)
    if entries <= min(3 * subsets * m * m, KID_WHOLE_KERNEL_ENTRIES):
        k_gg, k_gr = cubic_kernel(gen, gen), cubic_kernel(gen, ref)
        k_rr = ref_kernel() if ref_kernel is not None else cubic_kernel(ref, ref)
        sum_gg = _block_sums(k_gg, rows_g, rows_g) - np.diagonal(k_gg)[rows_g].sum(1)
        sum_rr = _block_sums(k_rr, rows_r, rows_r) - np.diagonal(k_rr)[rows_r].sum(1)
        sum_gr = _block_sums(k_gr, rows_g, rows_r)
    else:
        sum_gg, sum_rr, sum_gr = np.empty(subsets), np.empty(subsets), np.empty(subsets)
        for i in range(subsets):
            g, r = gen[rows_g[i]], ref[rows_r[i]]
            k_gg, k_rr = cubic_kernel(g, g), cubic_kernel(r, r)
            sum_gg[i], sum_rr[i] = k_gg.sum() - np.trace(k_gg), k_rr.sum() - np.trace(k_rr)
            sum_gr[i] = cubic_kernel(g, r).sum()
    mmd = (sum_gg + sum_rr) / (m * (m - 1)) - 2 * sum_gr / (m * m)
    return {"kid": float(np.mean(mmd)), "kid_std": float(np.std(mmd))}


def floor_splits(dim: int) -> int:
    """Splits per fid_floor estimate: 64 where one costs milliseconds (<= 256-d features: digits,
    coordinates), 16 for Inception's 2048-d (seconds each; the result is cached per reference set)."""
    return 64 if dim <= 256 else 16


FIXED_REF_GROUPS = 3  # disjoint sample sets per split for fid_floor_fresh_sd_fixed_ref


def fid_floor(ref: np.ndarray, num_samples: int, splits: int | None = None, seed: int = 0) -> dict[str, float]:
    """The FID a perfect sampler scores with `num_samples` samples against the reference set `ref`
    (N_ref, D), the level under which a model's differences are not its own:

    - fid_floor_fresh: a sampler of new data from the reference's own distribution. FID's finite-sample
      bias grows as 1/n_a + 1/n_b (the mean term exactly, the trace term to first order; Chong &
      Forsyth 2020), so the FID of two disjoint random halves of the reference, divided by
      1/n_1 + 1/n_2, estimates the slope c, and the floor is c (1/num_samples + 1/N_ref);
      fid_floor_fresh_se is its standard error over the splits (how well the mean is known).
    - fid_floor_fresh_sd: how far ONE perfect-sampler run lands from fid_floor_fresh when the reference
      set is drawn anew too: the standard deviation of the split FIDs, each scaled by the same factor. To
      first order FID between two samples of one distribution is a fixed quadratic form of the Gaussian
      fluctuations of both (mean and covariance terms alike), so its whole distribution, spread included,
      scales like its mean, with 1/n_a + 1/n_b (checked against simulated Gaussians in
      tests/test_fid_floor.py). sd = se x sqrt(splits): the s.e. is not it.
    - fid_floor_fresh_sd_fixed_ref: the same spread with the reference set held fixed, as the runs of one
      evaluation see it (they all share it): in each split one half is held as the reference and the other
      is cut into FIXED_REF_GROUPS disjoint sample sets, each new data independent of it and of the others;
      the variance of their FIDs given the held half, averaged over splits, scaled from those sizes
      (m, h) to (num_samples, N_ref) by the first-order law for a fixed reference, variance proportional
      to 1/m^2 + 2/(m h) (the quadratic form's variance with one side's fluctuation fixed, averaged over
      that side). Omitted where a sample set has no more rows than dimensions.
    - fid_floor_copy: a sampler that reproduces reference images: `num_samples` rows drawn with
      replacement from `ref`, against `ref`. A model that scores under fid_floor_fresh is closer to
      the reference images than new data would be (when they are its training data: it copies them).

    Means over `splits` draws (floor_splits(D) when None). Empty when a half of the reference has
    no more rows than dimensions (the covariance would be singular and the 1/n law does not hold)."""
    ref = np.asarray(ref, dtype=np.float64)
    n_ref, dim = ref.shape
    if n_ref // 2 <= dim:
        return {}
    splits = splits or floor_splits(dim)
    rng = np.random.default_rng(seed)
    half = n_ref // 2
    group = (n_ref - half) // FIXED_REF_GROUPS
    slopes, copies, fixed_vars = [], [], []
    for _ in range(splits):
        perm = rng.permutation(n_ref)
        held = Gaussian.of(ref[perm[:half]])
        slopes.append(frechet_from_statistics(Gaussian.of(ref[perm[half:]]), held) / (1 / half + 1 / (n_ref - half)))
        copies.append(frechet_distance(ref[rng.integers(0, n_ref, num_samples)], ref))
        if group > dim:
            fids = [frechet_from_statistics(Gaussian.of(ref[perm[half + i * group: half + (i + 1) * group]]), held)
                    for i in range(FIXED_REF_GROUPS)]
            fixed_vars.append(np.var(fids, ddof=1))
    scale = 1 / num_samples + 1 / n_ref
    out = {"fid_floor_fresh": float(np.mean(slopes)) * scale,
           "fid_floor_fresh_se": float(np.std(slopes, ddof=1) / np.sqrt(splits)) * scale,
           "fid_floor_fresh_sd": float(np.std(slopes, ddof=1)) * scale,
           "fid_floor_copy": float(np.mean(copies))}
    if fixed_vars:
        ra, rb, rm, rh = 1 / num_samples, 1 / n_ref, 1 / group, 1 / half
        out["fid_floor_fresh_sd_fixed_ref"] = float(np.sqrt(np.mean(fixed_vars) * (ra**2 + 2 * ra * rb) / (rm**2 + 2 * rm * rh)))
    return out


PRC_NEIGHBORHOOD, PRC_BATCH = 3, 10_000  # torch-fidelity's prc_neighborhood and prc_batch_size


def _cdist_rows(a: Tensor, b: Tensor, batch: int) -> Tensor:
    """(len(a), len(b)) distances on the host, b taken `batch` rows at a time (torch-fidelity's calc_cdist_part)."""
    return torch.cat([torch.cdist(a, part).cpu() for part in b.split(batch)], dim=1)


def knn_radii(feats: Tensor, k: int = PRC_NEIGHBORHOOD, batch: int = PRC_BATCH) -> Tensor:
    """Each row's distance to its k-th nearest other row (the k+1-th smallest, itself at 0): the radius of
    its ball in torch-fidelity's precision and recall."""
    return torch.cat([_cdist_rows(part, feats, batch).kthvalue(k + 1).values for part in feats.split(batch)])


def precision_recall(gen: Tensor, ref: Tensor, ref_radii: Tensor | None = None, k: int = PRC_NEIGHBORHOOD,
                     batch: int = PRC_BATCH) -> dict[str, float]:
    """torch-fidelity's precision and recall (metric_prc.calculate_precision_recall_part, the same distances in
    the same batches, so the same values): recall, the share of reference rows inside some generated row's
    ball; precision, the share of generated rows inside some reference row's ball. ref_radii: knn_radii(ref),
    which does not change with the samples (a caller keeps it across every n)."""
    gen_radii = knn_radii(gen, k, batch)
    recall = torch.cat([(_cdist_rows(part, gen, batch) <= gen_radii).any(dim=1).float() for part in ref.split(batch)])
    ref_radii = knn_radii(ref, k, batch) if ref_radii is None else ref_radii
    precision = torch.cat([(_cdist_rows(part, ref, batch) <= ref_radii).any(dim=1).float() for part in gen.split(batch)])
    return {"precision": precision.mean().item(), "recall": recall.mean().item()}


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_projections: int = 512, seed: int = 0) -> float:
    """SW_2: sqrt of the mean over random unit directions of W_2^2 between the 1-D projections.
    Both sets are cut to the same size (a fixed random subset) so sorted projections pair up."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    n = min(len(a), len(b))
    a = a[rng.permutation(len(a))[:n]]
    b = b[rng.permutation(len(b))[:n]]
    dirs = rng.standard_normal((num_projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    pa, pb = np.sort(a @ dirs.T, axis=0), np.sort(b @ dirs.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def mode_coverage(points: Tensor, assign: Callable[[Tensor], Tensor], num_modes: int) -> dict[str, float]:
    """modes_hit: modes holding at least 10 % of a fair share (N / K / 10) of the samples;
    mode_share: share of samples that belong to some mode (e.g. within 3 std of a centre)."""
    idx = assign(points.cpu())
    counts = torch.bincount(idx[idx >= 0], minlength=num_modes)
    threshold = 0.1 * len(points) / num_modes
    return {
        "modes_hit": float((counts >= threshold).sum().item()),
        "mode_share": float((idx >= 0).float().mean().item()),
    }


# ----------------------------------------------------------------------------- feature extractors


def _register_digits_extractor() -> None:
    """Register the digits classifier with torch-fidelity once per process (Ray workers too)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DIGITS_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return

    class DigitsFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from bench.classifiers.digits import WEIGHTS_PATH, load_classifier, uint8_to_input

            self.net = load_classifier(feature_extractor_weights_path or WEIGHTS_PATH)
            self._to_input = uint8_to_input

        @staticmethod
        def get_provided_features_list():
            return ("penultimate", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "penultimate", "kid": "penultimate", "prc": "penultimate", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            feats = self.net.features(self._to_input(x))
            out = {"penultimate": feats, "logits": self.net.fc2(torch.relu(feats))}
            return tuple(out[f] for f in self.features_list)

    register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)


def find_inception_weights(configured: str, progress: bool = True) -> Path:
    """The Inception file: eval.inception_weights, $BENCH_INCEPTION_WEIGHTS, torch hub's cache, or
    downloaded into that cache ($BENCH_INCEPTION_URL or torch-fidelity's URL; $BENCH_OFFLINE=1 forbids it)."""
    from torch.hub import get_dir

    candidates = [configured, os.environ.get("BENCH_INCEPTION_WEIGHTS", "")]
    cache = Path(get_dir()) / "checkpoints" / INCEPTION_FILE
    for c in candidates:
        if c:
            p = Path(c).expanduser()
            if not p.is_file():
                raise BenchError(f"Inception weights file {p} does not exist.")
            return p.resolve()
    if cache.is_file():
        return cache
    if os.environ.get("BENCH_OFFLINE", "") not in ("", "0"):
        raise BenchError(
            f"FID on images needs the Inception weights {INCEPTION_FILE} (torch-fidelity's inception-v3-compat); "
            f"BENCH_OFFLINE forbids downloading it: set eval.inception_weights or BENCH_INCEPTION_WEIGHTS to the file, "
            f"or place it at {cache}."
        )
    from bench.files.download import download_checked

    return download_checked(os.environ.get("BENCH_INCEPTION_URL") or INCEPTION_URL, cache, INCEPTION_SHA256, progress)


@dataclass
class FeatureSpace:
    """A named feature space: `name` (params), `extractor` (torch-fidelity registry name or None
    for coordinate spaces), `weights_path` and `weights_sha256` (None for coords/raw)."""

    name: str
    extractor: str | None = None
    weights_path: Path | None = None
    weights_sha256: str = "none"

    @classmethod
    def resolve(cls, requested: str, data, inception_weights: str, progress: bool = True) -> "FeatureSpace":
        """eval.features on `data` (a bench.data.Dataset): auto = the space the dataset declares (Dataset.feature_space)."""
        from bench.files.checkpoint import file_sha256, state_hash

        name = data.feature_space if requested == "auto" else requested
        if name in ("coords", "raw"):
            return cls(name)
        if data.kind != "images":
            raise BenchError(f"eval.features = {name} needs image data; {data.name} holds {data.kind}.")
        if name == "digits-classifier":
            from bench.classifiers.digits import WEIGHTS_PATH, load_classifier

            return cls(name, DIGITS_EXTRACTOR, WEIGHTS_PATH, state_hash(load_classifier(WEIGHTS_PATH).state_dict()))
        path = find_inception_weights(inception_weights, progress)
        return cls("inception-v3-compat", "inception-v3-compat", path, file_sha256(path))

    def create(self, device: torch.device):
        """The torch-fidelity extractor module (fid features only), on `device`."""
        from torch_fidelity.utils import create_feature_extractor

        if self.extractor == DIGITS_EXTRACTOR:
            _register_digits_extractor()
        layer = "penultimate" if self.extractor == DIGITS_EXTRACTOR else "2048"
        try:
            fe = create_feature_extractor(self.extractor, [layer], cuda=False, verbose=False,
                                          feature_extractor_weights_path=str(self.weights_path))
        except Exception as e:
            raise BenchError(f"Feature extractor {self.name} could not load {self.weights_path}: {e}") from None
        return fe.to(device)


# ----------------------------------------------------------------------------- the generator input


def make_generator_input(produce: Callable[[Tensor], Tensor], shape: tuple[int, ...], num_samples: int):
    """A torch-fidelity GenerativeModelBase: noise z (B, prod(shape)) from torch-fidelity's seeded RNG
    -> uint8 images (B, 3, H, W) through `produce(x0)`. Labels are drawn inside `produce`
    (torch-fidelity's conditional path uses np.int, gone from numpy 2)."""
    from torch_fidelity.generative_model_base import GenerativeModelBase

    class SamplerInput(GenerativeModelBase):
        def __init__(self):
            super().__init__()
            self.produced = 0

        @property
        def z_size(self):
            return int(math.prod(shape))

        @property
        def z_type(self):
            return "normal"

        @property
        def num_classes(self):
            return 0

        def forward(self, z):
            self.produced += len(z)
            return produce(z.reshape(len(z), *shape))

    return SamplerInput()


class ReferenceImages(torch.utils.data.Dataset):
    """The real images as uint8 (3, H, W) tensors (torch-fidelity's Dataset input)."""

    def __init__(self, data, batch: int = 256):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, _ = self.data.get(torch.tensor([i]))
        return self.data.to_uint8(x)[0]


def kid_subset_size(n_gen: int, n_ref: int) -> int:
    return max(2, min(1000, n_gen, n_ref))
