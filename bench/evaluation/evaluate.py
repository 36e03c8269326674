"""Evaluation: for each number of sampling steps n, generate `eval.num_samples` with the EMA
weights and the method's sampler, and measure them against the reference set.

The same noise and labels (seed `eval.seed` = run seed + EVAL_SEED_OFFSET) are used for every n, so
each n's samples are paired with the M-step samples from the same starting points: `evaluate_steps`
evaluates n = M first (then M/2, ..., 1), keeps its samples and features, and adds the paired metrics
(`paired_to_M`, ...) to every n's metrics, with no sampling beyond the evaluation's own.
Which metrics, and how each is computed: bench/evaluation/registry.py, stage by stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bench.evaluation import metrics as M
from bench.evaluation import registry
from bench.files.checkpoint import atomic_write
from bench.config import Config
from bench.data import Dataset
from bench.errors import RunFailed
from bench.phases import span
from bench.evaluation.sampling import EvalModel, NFECounter, draw_labels, generate, precision_context, resolve_forward_rows, resolve_precision, sample
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
    features: Tensor | None = None  # (N, D) on the device: kept for the n that others are paired with


def paired_distances(samples: np.ndarray, anchor_samples: np.ndarray, features: Tensor | None = None,
                     anchor_features: Tensor | None = None) -> dict[str, float]:
    """The registry's paired metrics of `samples` against `anchor_samples` (row i of both from the same
    noise and label): `paired_to_M` in the data space over the rows both kept, `paired_to_M_features`
    in the feature space over all N rows (images: features exist apart from the data)."""
    return registry.measure("paired", registry.PairedInputs(samples, features, anchor_samples, anchor_features))


def sync(device: torch.device) -> None:
    """Drain the device's queue (timings must not end while kernels still run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(seconds, result) of one call of fn, with the device's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@dataclass
class EvalEstimate:
    """The expected duration of evaluating `steps`, from one timed batch of `batch_size` at n = 1
    through the evaluation's own pipeline (precision, compile, decoding, features) and one timed
    computation of the distances at the real sizes."""

    num_samples: int
    batch_size: int
    steps: list[int]
    sample_seconds: float  # one batch, one sampling step
    feature_seconds: float  # one batch: decoding (latents) + feature extraction
    reference_seconds: float  # features of the reference set when they are not cached yet (file reading excluded)
    device: str
    distance_seconds: float = 0.0  # per n: FID / KID / precision-recall (or FD / SW) on N samples against the reference
    warmup_seconds: float = 0.0  # one-off: the first batch's extra time (compilation, lazy loading)
    precision: str = "fp32"
    output_seconds: float = 0.0  # per n: writing the samples and the picture (what a run logs as artifacts)
    step_seconds: dict[int, float] | None = None  # one batch, one step of the n-step schedule (CFG may apply at some n only)

    @property
    def batches(self) -> int:
        """Batches per n: ceil(N / batch_size)."""
        return -(-self.num_samples // self.batch_size)

    def step(self, n: int) -> float:
        """One batch, one step of the n-step schedule (n = 1's where n was not timed)."""
        return (self.step_seconds or {}).get(n, self.sample_seconds)

    @property
    def sampling_seconds(self) -> float:
        """The sampling alone, every n: ceil(N / batch) x n x that n's step."""
        return sum(self.batches * n * self.step(n) for n in self.steps)

    @property
    def seconds(self) -> float:
        """The one estimate of an evaluation's duration (a run prints it before it evaluates, `bench speed`
        from its own timings): per n, ceil(N / batch) x (features + n x that n's step) + distances + output;
        once, the reference features and the warm-up."""
        per_n = sum(self.batches * (self.feature_seconds + n * self.step(n)) + self.distance_seconds
                    + self.output_seconds for n in self.steps)
        return self.reference_seconds + self.warmup_seconds + per_n

    def text(self) -> str:
        s = self.seconds
        when = f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"
        ref = f", reference features {self.reference_seconds:.3g} s" if self.reference_seconds else ""
        dist = f", distances {self.distance_seconds:.3g} s per n" if self.distance_seconds else ""
        dist += f", samples + picture {self.output_seconds:.3g} s per n" if self.output_seconds else ""
        warm = f", warm-up {self.warmup_seconds:.3g} s" if self.warmup_seconds else ""
        return (f"evaluation estimate: ~{when} for {self.num_samples:,} samples at each n = {','.join(map(str, self.steps))} "
                f"on {self.device}, {self.precision} (one batch of {self.batch_size}: {self.sample_seconds:.3g} s per sampling step, "
                f"{self.feature_seconds:.3g} s decoding + features{dist}{ref}{warm})")


class Evaluator:
    def __init__(self, cfg: Config, data: Dataset, device: torch.device, cache_dir: Path, progress: bool = True):
        self.cfg, self.data, self.device = cfg, data, device
        self.reference = data.reference()
        self.space = M.FeatureSpace.resolve(cfg.eval.features, data, cfg.eval.inception_weights,
                                            progress=progress)
        self.cache_dir = Path(cache_dir)
        self.seed = cfg.seed + EVAL_SEED_OFFSET
        self.progress = progress
        self.precision = resolve_precision(cfg.eval.precision, device)
        self._ref_feats: np.ndarray | None = None
        self._ref_cache: dict = {}  # what the metrics derive from the reference features alone, kept across n
        self._extractor = None
        self._eval_model: tuple[nn.Module, EvalModel] | None = None

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
            "eval.sampling_precision": self.precision,  # what eval.precision resolved to on this device
            "eval.forward_rows_resolved": resolve_forward_rows(self.cfg.eval.forward_rows, self.device),
            "eval.feature_precision": "fp32",
            "eval.mode_hit_rule": "a mode is hit when it holds >= 10% of a fair share N/K" if self.data.modes else "n/a",
            # rows of paired_to_M in the data space (the samples kept per n); features: all num_samples
            "eval.paired_samples": self.kept_rows(),
        }

    def kept_rows(self) -> int:
        """Samples kept per n on the host (saved as samples/steps_{n}.npz; all of them for 2-D points)."""
        N = self.cfg.eval.num_samples
        return min(self.cfg.eval.save_samples, N) if self.space.extractor is not None else N

    def during(self) -> "Evaluator":
        """The evaluation during training (train.eval_every): eval.during_samples samples at each of
        eval.during_steps, from the same noise at every call (the signal moves with the model, not the
        draw), sharing this evaluator's feature extractor and reference features. Every sample is kept in
        memory (paired_to_2n and paired_to_M read them); none is written."""
        from dataclasses import replace

        ec = self.cfg.eval
        N = ec.during_samples
        cfg = replace(self.cfg, eval=replace(ec, num_samples=N, batch_size=min(ec.batch_size, N), save_samples=N))
        other = Evaluator.__new__(Evaluator)
        other.__dict__.update(self.__dict__)
        other.cfg, other._ref_cache, other._eval_model = cfg, {}, None
        other.progress = False
        return other

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
        with span("reference_features"):
            fd = get_featuresdict_from_dataset(M.ReferenceImages(self.reference), fe, self.cfg.eval.batch_size,
                                               self.device.type == "cuda", save_cpu_ram=True, verbose=self.progress)
            feats = next(iter(fd.values())).double().numpy()
            atomic_write(path, lambda fh: np.savez(fh, features=feats))
        if self.progress:
            print(f"reference features: {len(feats)} x {feats.shape[1]} in {time.perf_counter() - t0:.1f}s -> {path}")
        self._ref_feats = feats
        return feats

    def fid_floor(self) -> dict[str, float]:
        """metrics.fid_floor of this reference set at eval.num_samples (splits by metrics.floor_splits,
        seed 0); cached next to the reference features (2048-d Inception features take seconds per split)."""
        import json

        N, ref = self.cfg.eval.num_samples, self.reference_features()
        splits = M.floor_splits(ref.shape[1])
        # v2: with fid_floor_fresh_sd_fixed_ref; an older file (no such key) is left alone and redone
        path = self.cache_dir / f"floor-{self.cache_name()[:-4]}-n{N}-s{splits}-v2.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        floor = M.fid_floor(ref, N, splits)
        atomic_write(path, lambda fh: fh.write(json.dumps(floor).encode()))
        return floor

    def extractor(self):
        if self._extractor is None:
            self._extractor = self.space.create(self.device)
        return self._extractor

    def eval_model(self, model: nn.Module) -> EvalModel:
        """`model` in eval.precision, compiled once when eval.compile (kept for the next n)."""
        if self._eval_model is None or self._eval_model[0] is not model:
            ec = self.cfg.eval
            self._eval_model = (model, EvalModel(model, self.precision, self.device, ec.compile, ec.compile_mode,
                                                 resolve_forward_rows(ec.forward_rows, self.device)))
        return self._eval_model[1]

    def images(self, x: Tensor) -> Tensor:
        """Model-space samples -> uint8 images on the device (latents: VAE decoding in the sampling precision)."""
        with precision_context(self.precision, self.device):
            return self.data.to_uint8(x).to(self.device)

    def features(self, images: Tensor) -> Tensor:
        """uint8 images -> (B, D) features on the device, in the extractor's own (fp32) precision."""
        with torch.autocast(self.device.type, enabled=False):
            return self.extractor()(images)[0]

    # -- how long -------------------------------------------------------------------
    @torch.no_grad()
    def estimate(self, method: Method, model: nn.Module, steps: list[int]) -> "EvalEstimate":
        """Time one batch at n = 1 (sampling, then decoding + features) through the evaluation's own
        pipeline after a warm-up (its extra time counted once), one step of every other n's schedule,
        the distances once at the real sizes and one n's output files; extrapolate: per n,
        ceil(N / batch) x (features + n x that n's step) + distances + output.
        The reference features are computed here (and kept) when they are not cached yet."""
        ec = self.cfg.eval
        b = min(ec.batch_size, ec.num_samples)
        was_training = model.training
        model.eval()
        em = self.eval_model(model)
        g = torch.Generator(self.device).manual_seed(self.seed)
        x0 = torch.randn(b, *self.data.shape, generator=g, device=self.device)
        y = draw_labels(b, self.data.num_classes, self.data.label_probs(), g, self.device)
        images = self.space.extractor is not None

        first_s = timed(lambda: self.features(self.images(sample(method, em, x0, y, 1, g))) if images
                         else sample(method, em, x0, y, 1, g), self.device)[0]
        sample_s, x = timed(lambda: sample(method, em, x0, y, 1, g), self.device)
        step_s = {n: timed(lambda: method.sample_step(em, x0, 0.0, n, y, g), self.device)[0] for n in steps if n != 1}
        features_s = timed(lambda: self.features(self.images(x)), self.device)[0] if images else 0.0
        model.train(was_training)
        cached = not images or self._ref_feats is not None or (self.cache_dir / self.cache_name()).is_file()
        reference_s, ref = timed(self.reference_features, self.device)
        if cached:
            reference_s = 0.0
        # the distances at the real sizes: N rows drawn from the reference's features stand in for the samples
        fake = ref[np.random.default_rng(0).integers(0, len(ref), ec.num_samples)]
        fake = fake + 1e-3 * np.random.default_rng(1).standard_normal(fake.shape) * (ref.std() + 1e-12)
        fake_t = torch.from_numpy(fake).float().to(self.device)
        self._distances(fake_t[:50], ref[:50])  # first calls import torch-fidelity / scipy: seconds that are not per n
        distance_s = timed(lambda: self._distances(fake_t, ref), self.device)[0]
        warmup_s = max(first_s - sample_s - features_s, 0.0)
        output_s = self._time_output(x, y, ref)
        return EvalEstimate(ec.num_samples, b, list(steps), sample_s, features_s, reference_s, str(self.device),
                            distance_s, warmup_s, self.precision, output_s, {1: sample_s, **step_s})

    def _time_output(self, x: Tensor, y: Tensor, ref: np.ndarray) -> float:
        """Seconds to write one n's samples file and picture (after a warm-up call: matplotlib's import)."""
        import tempfile

        keep = min(self.cfg.eval.save_samples, self.cfg.eval.num_samples)
        if keep == 0:  # eval.save_samples = 0: no samples file; the picture is drawn from nothing either
            return 0.0
        reps = -(-keep // len(x))  # the timed batch stands in for the kept samples
        samples = x.float().cpu().numpy()
        r = EvalResult(1, {}, np.concatenate([samples] * reps)[:keep], None, 0.0)
        pts = ref if self.data.kind == "points" else None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            save_picture(r, self.data, out / "warm.png", pts)
            t0 = time.perf_counter()
            save_samples(r, out / "steps.npz")
            save_picture(r, self.data, out / "steps.png", pts)
            return time.perf_counter() - t0

    # -- every n ----------------------------------------------------------------------
    def evaluate_steps(self, method: Method, model: nn.Module, steps: list[int], M: int):
        """Yields the EvalResult of every n in `steps`, the largest first (n = M, when among them, is the
        anchor: its samples and features are kept). Every n's metrics get the registry's paired metrics,
        from its samples beside the M-step ones and, where 2n was evaluated, the 2n-step ones from the
        same noise (`paired_to_M`, 0 at n = M itself; `paired_to_2n`, the gap that the level d = 1/n of
        a self-consistent model closes)."""
        anchor, previous = (None, None), None
        for n in sorted(steps, reverse=True):
            r = self.evaluate(method, model, n)
            if n == M:
                anchor = (r.samples, r.features)  # its own references: callers may cut r.samples
            twice = previous[1] if previous is not None and previous[0] == 2 * n else None
            r.metrics.update(registry.measure("paired", registry.PairedInputs(r.samples, r.features, *anchor, twice)))
            previous = (n, r.samples)
            r.features = None
            yield r

    # -- one n ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, method: Method, model: nn.Module, num_sampling_steps: int) -> EvalResult:
        """EvalResult.features: the (N, D) features on the device (images; the points' coordinates are
        their samples), for paired_distances; drop them once used."""
        ec = self.cfg.eval
        n, N = num_sampling_steps, ec.num_samples
        was_training = model.training
        model.eval()
        em = self.eval_model(model)
        counter = NFECounter(em)
        t0 = time.perf_counter()
        feats, samples, labels = self._generate(method, counter, n, pad=em.compiled)
        ref = self.reference_features()
        out = self._distances(feats, ref)
        sampled_rows = -(-N // ec.batch_size) * ec.batch_size if em.compiled else N  # padded rows are sampled too
        produced = registry.SampleInputs(samples[:N], self.data, counter.rows, sampled_rows)
        out.update(registry.measure("sampler", produced))
        out.update(registry.measure("samples", produced))
        model.train(was_training)
        keep = feats[:N] if self.space.extractor is not None else None  # every n pairs its features with these
        return EvalResult(n, out, samples, labels, time.perf_counter() - t0, keep)

    def _generate(self, method, model, n, pad: bool = False) -> tuple[Tensor, np.ndarray, np.ndarray | None]:
        """One streamed pass on the device: noise -> sampler -> (decoding -> uint8 -> features) per batch.
        Returns (N, D) float32 features on the device (the samples' coordinates for points), the first
        samples (all of them for points) and their labels on the host. One host sync, at the end."""
        from tqdm import tqdm

        ec = self.cfg.eval
        N, images = ec.num_samples, self.space.extractor is not None
        keep = min(ec.save_samples, N) if images else N
        feats, kept_x, kept_y, have = [], [], [], 0
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        bar = tqdm(total=N, desc=f"sample{'+features' if images else ''} n={n}", unit="img" if images else "pt",
                   disable=not self.progress, leave=False)
        batches = generate(method, model, self.data.shape, self.data.num_classes, self.data.label_probs(),
                           N, ec.batch_size, n, self.seed, self.device, pad=pad)
        while True:
            with span(f"sampling/n{n}"):
                x, y = next(batches, (None, None))
            if x is None:
                break
            bad |= ~torch.isfinite(x).all()
            if have < keep:
                kept_x.append(x[: keep - have].float())
                kept_y.append(y[: keep - have])
                have += len(kept_x[-1])
            with span(f"features/n{n}"):
                feats.append(self.features(self.images(x)) if images else x.float().reshape(len(x), -1))
            bar.update(len(x))
        bar.close()
        if bad.item():
            raise RunFailed(f"Sampling with {n} steps produced non-finite values.")
        samples = torch.cat(kept_x).cpu().numpy() if kept_x else np.zeros((0, *self.data.shape), np.float32)
        labels = torch.cat(kept_y).cpu().numpy() if (kept_y and self.data.num_classes) else None
        return torch.cat(feats), samples, labels

    def _generate_images(self, method, model, n, pad: bool = False):
        """Images: (N, D) features on the host (float64), the first samples and labels."""
        feats, samples, labels = self._generate(method, model, n, pad)
        return feats.double().cpu().numpy(), samples, labels

    def _distances(self, feats_device: Tensor, ref: np.ndarray) -> dict[str, float]:
        """The registry's feature metrics. feats_device: (N, D) features on the device; ref: (N_ref, D)
        float64 on the host."""
        cache = self._ref_cache if ref is self._ref_feats else {}  # the estimate's stand-ins are not the reference
        return registry.measure("features", registry.FeatureInputs(feats_device, ref, self.space.extractor is not None,
                                                                   self.cfg.eval, self.seed, self.device, cache))


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
