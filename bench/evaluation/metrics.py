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


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the formula of FID (torch-fidelity's code)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    sa = fid_features_to_statistics(torch.as_tensor(np.asarray(feats_a, dtype=np.float64)))
    sb = fid_features_to_statistics(torch.as_tensor(np.asarray(feats_b, dtype=np.float64)))
    return float(fid_statistics_to_metric(sa, sb, verbose=False)["frechet_inception_distance"])


def floor_splits(dim: int) -> int:
    """Splits per fid_floor estimate: 64 where one costs milliseconds (<= 256-d features: digits,
    coordinates), 16 for Inception's 2048-d (seconds each; the result is cached per reference set)."""
    return 64 if dim <= 256 else 16


def fid_floor(ref: np.ndarray, num_samples: int, splits: int | None = None, seed: int = 0) -> dict[str, float]:
    """The FID a perfect sampler scores with `num_samples` samples against the reference set `ref`
    (N_ref, D), the level under which a model's differences are not its own:

    - fid_floor_fresh: a sampler of new data from the reference's own distribution. FID's finite-sample
      bias grows as 1/n_a + 1/n_b (the mean term exactly, the trace term to first order; Chong &
      Forsyth 2020), so the FID of two disjoint random halves of the reference, divided by
      1/n_1 + 1/n_2, estimates the slope c, and the floor is c (1/num_samples + 1/N_ref);
      fid_floor_fresh_se is its standard error over the splits (how well the mean is known).
    - fid_floor_fresh_sd: how far ONE perfect-sampler run lands from fid_floor_fresh: the standard
      deviation of the split FIDs, each scaled by the same factor. To first order FID between two
      samples of one distribution is (1/n_a + 1/n_b) times a fixed quadratic form of Gaussian
      fluctuations (the mean term and the covariance term both), so its whole distribution, spread
      included, scales like its mean; a split is one draw of fresh data against fresh reference data,
      so this is the spread over both the samples and the reference set (checked against
      simulated Gaussians in tests/test_fid_floor.py). sd = se x sqrt(splits): the s.e. is not it.
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
    slopes, copies = [], []
    for _ in range(splits):
        perm = rng.permutation(n_ref)
        slopes.append(frechet_distance(ref[perm[:half]], ref[perm[half:]]) / (1 / half + 1 / (n_ref - half)))
        copies.append(frechet_distance(ref[rng.integers(0, n_ref, num_samples)], ref))
    scale = 1 / num_samples + 1 / n_ref
    return {"fid_floor_fresh": float(np.mean(slopes)) * scale,
            "fid_floor_fresh_se": float(np.std(slopes, ddof=1) / np.sqrt(splits)) * scale,
            "fid_floor_fresh_sd": float(np.std(slopes, ddof=1)) * scale,
            "fid_floor_copy": float(np.mean(copies))}


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
