"""Evaluation: for each number of sampling steps n, generate `eval.num_samples` with the EMA
weights and the method's sampler, and measure them against the reference set.

The same noise and labels (seed `eval.seed` = run seed + EVAL_SEED_OFFSET) are used for every n.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import metrics as M
from bench.checkpoint import atomic_write
from bench.config import Config
from bench.data import Dataset
from bench.errors import BenchError
from bench.sampling import NFECounter, draw_labels, generate, sample
from methods.base import Method

EVAL_SEED_OFFSET = 10_007


@dataclass
class EvalResult:
    """One n: metrics, network evaluations per sample, the first samples (data space) and labels."""

    num_sampling_steps: int
    metrics: dict[str, float]
    samples: np.ndarray
    labels: np.ndarray | None
    seconds: float


def _timed(fn, device: torch.device):
    """(seconds, result) of one call of fn, with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


@dataclass
class EvalEstimate:
    """The expected duration of evaluating `steps` from one timed batch of `batch_size` at n = 1."""

    num_samples: int
    batch_size: int
    steps: list[int]
    sample_seconds: float  # one batch, one sampling step
    feature_seconds: float  # one batch: decoding (latents) + feature extraction
    reference_seconds: float  # features of the reference set when they are not cached yet (file reading excluded)
    device: str

    @property
    def seconds(self) -> float:
        batches = -(-self.num_samples // self.batch_size)
        return self.reference_seconds + batches * sum(self.feature_seconds + n * self.sample_seconds for n in self.steps)

    def text(self) -> str:
        s = self.seconds
        when = f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"
        ref = f", reference features {self.reference_seconds:.3g} s" if self.reference_seconds else ""
        return (f"evaluation estimate: ~{when} for {self.num_samples:,} samples at each n = {','.join(map(str, self.steps))} "
                f"on {self.device} (one batch of {self.batch_size}: {self.sample_seconds:.3g} s per sampling step, "
                f"{self.feature_seconds:.3g} s decoding + features{ref})")


class Evaluator:
    def __init__(self, cfg: Config, data: Dataset, device: torch.device, cache_dir: Path, progress: bool = True):
        self.cfg, self.data, self.device = cfg, data, device
        self.reference = data.reference()
        self.space = M.FeatureSpace.resolve(cfg.eval.features, data.kind, data.name, cfg.eval.inception_weights)
        self.cache_dir = Path(cache_dir)
        self.seed = cfg.seed + EVAL_SEED_OFFSET
        self.progress = progress
        self._ref_feats: np.ndarray | None = None
        self._extractor = None

    def params(self) -> dict[str, object]:
        """What every number depends on; logged as run params."""
        return {
            "eval.feature_space": self.space.name,
            "eval.feature_weights_sha256": self.space.weights_sha256,
            "eval.reference_set": self.reference.name,
            "eval.reference_size": len(self.reference),
            "eval.reference_fingerprint": self.reference.fingerprint(),
            "eval.samples_per_n": self.cfg.eval.num_samples,
            "eval.sample_decoder": getattr(self.data, "decoder_name", "none"),  # latents: the VAE that decodes samples
            "eval.seed": self.seed,
            "eval.weights": "ema",
            "eval.mode_hit_rule": "a mode is hit when it holds >= 10% of a fair share N/K" if self.data.modes else "n/a",
        }

    # -- reference ------------------------------------------------------------------
    def cache_name(self) -> str:
        return f"ref-{self.reference.fingerprint()}-{self.space.name}-{self.space.weights_sha256[:16]}.npz"

    def reference_features(self) -> np.ndarray:
        """(N_ref, D) features of the reference set; computed once, cached by data, features, weights."""
        if self._ref_feats is not None:
            return self._ref_feats
        if self.space.extractor is None:
            x, _ = self.reference.get(torch.arange(len(self.reference)))
            self._ref_feats = x.reshape(len(x), -1).double().numpy()
            return self._ref_feats
        path = self.cache_dir / self.cache_name()
        if path.is_file():
            try:
                with np.load(path) as f:
                    feats = f["features"]
                if feats.shape[0] == len(self.reference):
                    self._ref_feats = feats
                    return feats
            except Exception:
                print(f"warning: reference-feature cache {path} is unreadable; recomputing it.")
        from torch_fidelity.utils import get_featuresdict_from_dataset

        fe = self.extractor()
        t0 = time.perf_counter()
        fd = get_featuresdict_from_dataset(M.ReferenceImages(self.reference), fe, self.cfg.eval.batch_size,
                                           self.device.type == "cuda", save_cpu_ram=True, verbose=self.progress)
        feats = next(iter(fd.values())).double().numpy()
        atomic_write(path, lambda fh: np.savez(fh, features=feats))
        if self.progress:
            print(f"reference features: {len(feats)} x {feats.shape[1]} in {time.perf_counter() - t0:.1f}s -> {path}")
        self._ref_feats = feats
        return feats

    def extractor(self):
        if self._extractor is None:
            self._extractor = self.space.create(self.device)
        return self._extractor

    # -- how long -------------------------------------------------------------------
    @torch.no_grad()
    def estimate(self, method: Method, model: nn.Module, steps: list[int]) -> "EvalEstimate":
        """Time one batch at n = 1 (sampling, then decoding + features) after a warm-up and
        extrapolate: per n, ceil(N / batch) x (features + n x one-step sampling)."""
        ec = self.cfg.eval
        b = min(ec.batch_size, ec.num_samples)
        was_training = model.training
        model.eval()
        g = torch.Generator(self.device).manual_seed(self.seed)
        x0 = torch.randn(b, *self.data.shape, generator=g, device=self.device)
        y = draw_labels(b, self.data.num_classes, self.data.label_probs(), g, self.device)
        fe = self.extractor() if self.space.extractor is not None else None

        def one_batch():
            x = sample(method, model, x0, y, 1, g)
            return fe(self.data.to_uint8(x).to(self.device)) if fe is not None else x

        one_batch()  # warm-up: kernels, caches, lazily loaded decoders
        sample_s, x = _timed(lambda: sample(method, model, x0, y, 1, g), self.device)
        features_s = _timed(lambda: fe(self.data.to_uint8(x).to(self.device)), self.device)[0] if fe is not None else 0.0
        model.train(was_training)
        cached = fe is None or (self.cache_dir / self.cache_name()).is_file()
        reference_s = 0.0 if cached else -(-len(self.reference) // b) * features_s
        return EvalEstimate(ec.num_samples, b, list(steps), sample_s, features_s, reference_s, str(self.device))

    # -- one n ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, method: Method, model: nn.Module, num_sampling_steps: int) -> EvalResult:
        ec = self.cfg.eval
        n, N = num_sampling_steps, ec.num_samples
        was_training = model.training
        model.eval()
        counter = NFECounter(model)
        t0 = time.perf_counter()
        if self.space.extractor is None:
            feats, samples, labels = self._generate_points(method, counter, n)
        else:
            feats, samples, labels = self._generate_images(method, counter, n)
        ref = self.reference_features()
        out = self._distances(feats, ref)
        out["nfe"] = counter.rows / N
        if self.data.modes is not None:
            out.update(M.mode_coverage(torch.from_numpy(samples[:N]).float(), self.data.modes.assign, self.data.modes.count))
        model.train(was_training)
        return EvalResult(n, out, samples, labels, time.perf_counter() - t0)

    def _generate_points(self, method, model, n):
        ec = self.cfg.eval
        xs, ys = [], []
        for x, y in generate(method, model, self.data.shape, self.data.num_classes, self.data.label_probs(),
                             ec.num_samples, ec.batch_size, n, self.seed, self.device):
            xs.append(x.float().cpu())
            ys.append(y.cpu())
        x = torch.cat(xs)
        if not torch.isfinite(x).all():
            raise BenchError(f"Sampling with {n} steps produced non-finite values.")
        y = torch.cat(ys).numpy() if self.data.num_classes else None
        return x.reshape(len(x), -1).double().numpy(), x.numpy(), y

    def _generate_images(self, method, model, n):
        from torch_fidelity.utils import get_featuresdict_from_generative_model
        from tqdm import tqdm

        ec = self.cfg.eval
        g = torch.Generator(self.device).manual_seed(self.seed)
        keep, kept_x, kept_y = ec.save_samples, [], []
        bar = tqdm(total=ec.num_samples, desc=f"sample+features n={n}", unit="img", disable=not self.progress, leave=False)

        def produce(x0):
            x0 = x0.to(self.device)
            y = draw_labels(len(x0), self.data.num_classes, self.data.label_probs(), g, self.device)
            x = sample(method, model, x0, y, n, g)
            if not torch.isfinite(x).all():
                raise BenchError(f"Sampling with {n} steps produced non-finite values.")
            have = sum(len(k) for k in kept_x)
            if have < keep:
                kept_x.append(x[: keep - have].float().cpu())
                kept_y.append(y[: keep - have].cpu())
            bar.update(len(x0))
            return self.data.to_uint8(x).to(self.device)

        gen_input = M.make_generator_input(produce, self.data.shape, ec.num_samples)
        fd = get_featuresdict_from_generative_model(gen_input, self.extractor(), ec.num_samples, ec.batch_size,
                                                   self.device.type == "cuda", self.seed, verbose=False)
        bar.close()
        feats = next(iter(fd.values())).double().numpy()
        samples = torch.cat(kept_x).numpy() if kept_x else np.zeros((0, *self.data.shape), np.float32)
        labels = torch.cat(kept_y).numpy() if (kept_y and self.data.num_classes) else None
        return feats, samples, labels

    def _distances(self, feats: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        ec = self.cfg.eval
        out: dict[str, float] = {}
        if self.space.extractor is None:
            out["fid"] = M.frechet_distance(feats, ref)
            out["sw"] = M.sliced_wasserstein(feats, ref, seed=self.seed)
            return out
        ft, rt = torch.from_numpy(feats), torch.from_numpy(ref)
        subset = M.kid_subset_size(len(feats), len(ref))
        if ec.fid_backend == "clean-fid":
            from cleanfid.fid import fid_from_feats, kernel_distance

            out["fid"] = float(fid_from_feats(feats, ref))
            if ec.kid:
                np.random.seed(self.seed)  # clean-fid draws its KID subsets from numpy's global RNG
                out["kid"] = float(kernel_distance(feats, ref, num_subsets=100, max_subset_size=subset))
        else:
            out["fid"] = M.frechet_distance(feats, ref)
            if ec.kid:
                from torch_fidelity.metric_kid import kid_features_to_metric

                k = kid_features_to_metric(ft, rt, kid_subset_size=subset, rng_seed=self.seed, verbose=False)
                out["kid"] = k["kernel_inception_distance_mean"]
                out["kid_std"] = k["kernel_inception_distance_std"]
        if ec.prc:
            from torch_fidelity.metric_prc import prc_features_to_metric

            p = prc_features_to_metric(ft.float(), rt.float(), save_cpu_ram=True, verbose=False)
            out["precision"] = p["precision"]
            out["recall"] = p["recall"]
        return out


# ----------------------------------------------------------------------------- pictures


def save_picture(result: EvalResult, data: Dataset, path: Path, reference: np.ndarray | None = None) -> Path:
    """A sample grid (images) or a scatter plot over the reference (2-D points), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if data.kind == "images" and len(result.samples):
        import torchvision.utils as vutils
        from PIL import Image

        imgs = data.to_uint8(torch.from_numpy(result.samples[:100]))
        grid = vutils.make_grid(imgs, nrow=10, padding=1, pad_value=255).permute(1, 2, 0).numpy()
        im = Image.fromarray(grid)
        if im.width < 256:
            im = im.resize((im.width * 4, im.height * 4), Image.NEAREST)
        atomic_write(path, lambda fh: im.save(fh, format="PNG"))
        return path
    pts = result.samples.reshape(len(result.samples), -1)[:4000]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:4000, 0], reference[:4000, 1], s=1, c="0.8", label="data")
    ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0", label="samples")
    ax.set_title(f"{result.num_sampling_steps} step{'s' if result.num_sampling_steps > 1 else ''}")
    ax.set_aspect("equal")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def save_samples(result: EvalResult, path: Path) -> Path:
    """samples/steps_{n}.npz: `x` in data space, `y` when conditional."""
    arrays = {"x": result.samples.astype(np.float32)}
    if result.labels is not None:
        arrays["y"] = result.labels.astype(np.int64)
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))
