"""The evaluation's metrics, each declared once: the names it logs, what it reads, how it is computed,
which way is better, how `bench run`'s table prints it and whether `bench report` collects it.

The evaluator (bench/evaluation/evaluate.py) computes every n's metrics by running REGISTRY stage by
stage, the table (bench.train.run.format_table) takes its columns from `table_columns()` and the report
its metric list from `report_names()`. Adding a metric is one entry here (and its test):

    register(Metric("my_metric", "samples", my_function, (Name("my_metric", column=".4g"),)))

A stage says what a metric reads, in the order the evaluation produces it (STAGES):
- features: one n's N samples in the feature space against the reference's features (FeatureInputs);
- sampler: the sampler's own count of network evaluations (SampleInputs);
- samples: the samples in the data space, the first ones kept on the host (SampleInputs);
- paired: the samples of n beside the same model's from the same noise at n = M and 2n (PairedInputs).
Within a stage the metrics run in REGISTRY's order, which is also the order of the table's columns.

Not here: the fid_floor_* numbers (bench.evaluation.metrics.fid_floor), logged once per run at step 0
from the reference set alone and cached on disk, which the report reads as columns of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from bench.evaluation import metrics as M
from bench.phases import span

STAGES = ("features", "sampler", "samples", "paired")


@dataclass(frozen=True)
class Name:
    """One logged metric. lower_is_better: True, False (precision, recall), None (a spread or a cost:
    neither); column: format of its column in `bench run`'s table ("" = not printed); report: whether
    `bench report` collects it from the store."""

    name: str
    lower_is_better: bool | None = True
    column: str = ""
    report: bool = True


@dataclass(frozen=True)
class Metric:
    """One computation: `compute(inputs of its stage) -> {name: value}` over some of `names` (those it
    writes, in their order; {} where it does not apply, e.g. KID on 2-D points)."""

    key: str
    needs: str  # one of STAGES
    compute: Callable[[Any], dict[str, float]]
    names: tuple[Name, ...]


# ----------------------------------------------------------------------------- what a stage reads


@dataclass
class FeatureInputs:
    """features: (N, D) on the device (image features, or the samples' own flattened values);
    reference: (N_ref, D) float64 on the host; images: whether the features come from an extractor;
    eval: the config's eval section (fid_backend, kid, prc); seed: the evaluation seed;
    reference_cache: what a metric derives from the reference alone (its Gaussian, its KID kernel),
    kept by the caller across every n of one reference set (`reference_value`)."""

    features: Tensor
    reference: np.ndarray
    images: bool
    eval: Any
    seed: int
    device: torch.device
    reference_cache: dict = field(default_factory=dict)

    def reference_value(self, key: str, make: Callable[[], Any]) -> Any:
        """reference_cache[key], made once."""
        if key not in self.reference_cache:
            self.reference_cache[key] = make()
        return self.reference_cache[key]

    @cached_property
    def host(self) -> np.ndarray:
        """(N, D) float64 on the host: the one transfer of the samples' features."""
        return self.features.double().cpu().numpy()


@dataclass
class SampleInputs:
    """samples: the first samples in the data space on the host (all N for points); data: the Dataset
    (modes, kind); network_rows: rows the sampler passed through the network; sampled_rows: rows sampled
    (N, or the padded batches when compiled)."""

    samples: np.ndarray
    data: Any
    network_rows: int
    sampled_rows: int


@dataclass
class PairedInputs:
    """Row i of every array from the same noise and label. samples, features: this n's (features: (N, D)
    on the device, None for points); anchor_*: the n = M ones (None when M is not evaluated);
    twice_samples: the 2n-step samples (None where 2n is not evaluated)."""

    samples: np.ndarray
    features: Tensor | None = None
    anchor_samples: np.ndarray | None = None
    anchor_features: Tensor | None = None
    twice_samples: np.ndarray | None = None


# ----------------------------------------------------------------------------- the computations


def _fid(x: FeatureInputs) -> dict[str, float]:
    if x.images and x.eval.fid_backend == "clean-fid":
        from cleanfid.fid import fid_from_feats

        return {"fid": float(fid_from_feats(x.host, x.reference))}
    reference = x.reference_value("gaussian", lambda: M.Gaussian.of(x.reference))
    return {"fid": M.frechet_from_statistics(M.Gaussian.of(x.host), reference)}


def _kid(x: FeatureInputs) -> dict[str, float]:
    if not (x.images and x.eval.kid):
        return {}
    subset = M.kid_subset_size(len(x.host), len(x.reference))
    if x.eval.fid_backend == "clean-fid":
        from cleanfid.fid import kernel_distance

        np.random.seed(x.seed)  # clean-fid draws its KID subsets from numpy's global RNG
        return {"kid": float(kernel_distance(x.host, x.reference, num_subsets=100, max_subset_size=subset))}
    # torch-fidelity's estimator and subsets (bench.evaluation.metrics.kid), each kernel matrix computed once
    return M.kid(x.host, x.reference, subsets=100, subset_size=subset, seed=x.seed,
                 ref_kernel=lambda: x.reference_value("kid_kernel", lambda: M.cubic_kernel(x.reference, x.reference)))


def _precision_recall(x: FeatureInputs) -> dict[str, float]:
    if not (x.images and x.eval.prc):
        return {}
    # torch-fidelity's estimator (bench.evaluation.metrics.precision_recall); pairwise distances on the device
    # (N x N_ref at 2048-d is the heaviest part at 50k); the reference's own k-NN radii are kept across n
    ref = x.reference_value("prc_reference", lambda: torch.from_numpy(x.reference).float().to(x.device))
    radii = x.reference_value("prc_radii", lambda: M.knn_radii(ref))
    return M.precision_recall(x.features.float(), ref, radii)


def _sliced_wasserstein(x: FeatureInputs) -> dict[str, float]:
    return {} if x.images else {"sw": M.sliced_wasserstein(x.host, x.reference, seed=x.seed)}


def _modes(x: SampleInputs) -> dict[str, float]:
    modes = x.data.modes
    return {} if modes is None else M.mode_coverage(torch.from_numpy(x.samples).float(), modes.assign, modes.count)


def _clipped_share(x: SampleInputs) -> dict[str, float]:
    """Images in pixel space: the share of generated values outside [-1, 1], which Dataset.to_uint8 clips
    before any feature is computed (so FID cannot see a sampler overshooting the data range)."""
    if x.data.kind != "images" or x.data.latent or not len(x.samples):
        return {}
    return {"clipped_share": float(np.mean(np.abs(x.samples.astype(np.float64)) > 1.0))}


def _nfe(x: SampleInputs) -> dict[str, float]:
    return {"nfe": x.network_rows / x.sampled_rows}


def mean_squared_gap(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean squared distance per dimension between paired rows, over the rows both hold (None: none)."""
    k = min(len(a), len(b))
    if not k:
        return None
    return float(np.mean((a[:k].reshape(k, -1).astype(np.float64) - b[:k].reshape(k, -1).astype(np.float64)) ** 2))


def _paired_to_M(x: PairedInputs) -> dict[str, float]:
    gap = mean_squared_gap(x.samples, x.anchor_samples) if x.anchor_samples is not None else None
    return {} if gap is None else {"paired_to_M": gap}


def _paired_to_M_features(x: PairedInputs) -> dict[str, float]:
    if x.features is None or x.anchor_features is None:
        return {}
    return {"paired_to_M_features": float((x.features.double() - x.anchor_features.double()).pow(2).mean())}


def _paired_to_2n(x: PairedInputs) -> dict[str, float]:
    gap = mean_squared_gap(x.samples, x.twice_samples) if x.twice_samples is not None else None
    return {} if gap is None else {"paired_to_2n": gap}


# ----------------------------------------------------------------------------- the registry

FOUR_DIGITS = ".4g"  # the table's format of a distance

REGISTRY: list[Metric] = [
    # Frechet distance of the features (images: torch-fidelity's or clean-fid's FID; points: on the coordinates)
    Metric("fid", "features", _fid, (Name("fid", column=FOUR_DIGITS),)),
    # images, eval.kid: unbiased MMD^2 with the cubic kernel over 100 subsets; kid_std its spread (torch-fidelity only)
    Metric("kid", "features", _kid, (Name("kid", column=FOUR_DIGITS), Name("kid_std", lower_is_better=None))),
    # images, eval.prc: torch-fidelity's precision and recall (k-NN manifolds)
    Metric("precision_recall", "features", _precision_recall,
           (Name("precision", lower_is_better=False, column=FOUR_DIGITS), Name("recall", lower_is_better=False, column=FOUR_DIGITS))),
    # points and vectors: sliced Wasserstein-2 distance
    Metric("sw", "features", _sliced_wasserstein, (Name("sw", column=FOUR_DIGITS),)),
    # 2-D toys: modes holding >= 10 % of a fair share; share of samples inside some mode
    Metric("modes", "samples", _modes, (Name("modes_hit", lower_is_better=False, column="g"),
                                        Name("mode_share", lower_is_better=False, column=FOUR_DIGITS))),
    # images (not latents): share of the kept samples' pixel values outside [-1, 1], clipped before the features
    Metric("clipped_share", "samples", _clipped_share, (Name("clipped_share"),)),
    # mean squared distance per dimension to the same model's M-step samples from the same noise (data space)
    Metric("paired_to_M", "paired", _paired_to_M, (Name("paired_to_M", lower_is_better=None, column=FOUR_DIGITS),)),
    # images: the same in the feature space, over all N samples
    Metric("paired_to_M_features", "paired", _paired_to_M_features, (Name("paired_to_M_features", lower_is_better=None),)),
    # the same between n and 2n steps: the gap the level d = 1/n of a self-consistent model closes
    Metric("paired_to_2n", "paired", _paired_to_2n, (Name("paired_to_2n", lower_is_better=None),)),
    # network evaluations per sample (n, doubled where CFG applies)
    Metric("nfe", "sampler", _nfe, (Name("nfe", lower_is_better=None, column="g"),)),
]


def register(metric: Metric) -> Metric:
    """Add a metric (after the others of its stage): the evaluator computes it, the table and the report
    show its names as they declare. A name already logged by another metric is refused."""
    if metric.needs not in STAGES:
        raise ValueError(f"Metric {metric.key!r} needs {metric.needs!r}; stages: {', '.join(STAGES)}.")
    taken = {n.name for m in REGISTRY for n in m.names}
    clash = [n.name for n in metric.names if n.name in taken]
    if clash or any(m.key == metric.key for m in REGISTRY):
        raise ValueError(f"Metric {metric.key!r} would log {', '.join(clash) or 'under a key'} already registered.")
    REGISTRY.append(metric)
    return metric


def measure(stage: str, inputs: Any) -> dict[str, float]:
    """Every metric of `stage` on `inputs`, in REGISTRY's order: name -> value."""
    out: dict[str, float] = {}
    for m in REGISTRY:
        if m.needs != stage:
            continue
        with span(f"metric/{m.key}"):
            values = m.compute(inputs)
        undeclared = set(values) - {n.name for n in m.names}
        if undeclared:
            raise RuntimeError(f"Metric {m.key!r} wrote {', '.join(sorted(undeclared))}, which it does not declare.")
        out.update(values)
    return out


def all_names() -> list[Name]:
    """Every logged metric, in REGISTRY's order."""
    return [n for m in REGISTRY for n in m.names]


def table_columns() -> list[Name]:
    """The columns of `bench run`'s table, in order."""
    return [n for n in all_names() if n.column]


def report_names() -> tuple[str, ...]:
    """The per-n metrics `bench report` collects from the store."""
    return tuple(n.name for n in all_names() if n.report)
