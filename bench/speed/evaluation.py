"""`bench speed`: feature extraction, the evaluation's sampler and the wall time of FID-N."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.errors import BenchError
from bench.evaluation.evaluate import EvalEstimate
from bench.speed.cost import _repetitions, _seconds, forward_flops, peak_tflops
from bench.speed.prepare import Setup


@dataclass
class FeatureTiming:
    space: str
    image_shape: tuple[int, ...]
    batch_size: int
    per_second: float | None  # None: skipped
    decode_per_second: float | None = None  # latents: VAE decoding
    note: str = ""
    decode_precision: str = ""


def feature_image_side(data, image_size: int) -> tuple[int, int]:
    if image_size:
        return image_size, image_size
    meta = getattr(data, "meta", None)
    if meta and "image_shape" in meta:
        return tuple(meta["image_shape"][1:])  # latents: the decoded images
    if data.kind == "images" and data.shape[0] in (1, 3):
        return tuple(data.shape[1:])
    return 256, 256


@torch.no_grad()
def time_features(cfg, data, device: torch.device, image_size: int = 0, rounds: int = 5) -> FeatureTiming:
    """Images per second through the profile's feature extractor (and the VAE decoder for latents)."""
    from bench.evaluation.metrics import FeatureSpace

    b = min(cfg.eval.batch_size, 256 if device.type == "cpu" else cfg.eval.batch_size)
    side = feature_image_side(data, image_size)
    try:
        space = FeatureSpace.resolve(cfg.eval.features, data, cfg.eval.inception_weights)
    except BenchError as e:
        return FeatureTiming(cfg.eval.features, (3, *side), b, None, note=f"skipped: {e}")
    if space.extractor is None:
        return FeatureTiming(space.name, tuple(data.shape), b, None, note="no extractor (distances on coordinates)")
    fe = space.create(device)
    if device.type == "cpu" and space.name.startswith("inception"):
        b = min(b, 16)  # about 0.14 s per image on a CPU core
    imgs = torch.randint(0, 256, (b, 3, *side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    reps = _repetitions(lambda: fe(imgs), device)
    per = [_seconds(lambda: [fe(imgs) for _ in range(reps)], device) / reps for _ in range(rounds)]
    out = FeatureTiming(space.name, (3, *side), b, b / statistics.median(per))
    if hasattr(data, "decoder_name"):  # latents: decoding is part of every evaluated sample, in the eval precision
        from bench.evaluation.sampling import precision_context, resolve_precision

        precision = resolve_precision(cfg.eval.precision, device)
        z = data.get(torch.arange(min(b, len(data))))[0].to(device)

        def decode():
            with precision_context(precision, device):
                return data.to_uint8(z)

        decode()
        dec = [_seconds(decode, device) for _ in range(max(2, rounds // 2))]
        out.decode_per_second = len(z) / statistics.median(dec)
        out.decode_precision = precision
    return out


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """A state dict with the shapes of torch-fidelity's inception-v3-compat and random weights.
    Same speed as the real network, meaningless features: for timing and tests only."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.files.checkpoint import atomic_write

    import tempfile

    torch.manual_seed(seed)
    keep = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # build without weights
    try:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({}, Path(tmp) / "empty.pth")
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(Path(tmp) / "empty.pth"))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = keep
    # BatchNorm statistics from one batch of random images through the random network: with unit running
    # statistics the activations shrink layer by layer (features ~1e-8, every FID 0.000); calibrated, each
    # layer's output keeps unit scale and the features tell images apart (still meaningless as FID features).
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    net.train()
    with torch.no_grad():
        net(images)
    net.eval()
    for bn in bns:
        bn.momentum = 0.1
    return atomic_write(Path(path), lambda fh: torch.save(net.state_dict(), fh))


def format_features(f: FeatureTiming) -> str:
    shape = "x".join(map(str, f.image_shape))
    if f.per_second is None:
        return f"feature extraction ({f.space}): {f.note}"
    out = f"feature extraction ({f.space}, uint8 {shape}, batch {f.batch_size}): {f.per_second:,.0f} images/s"
    if f.decode_per_second:
        out += f"; VAE decoding of latents ({f.decode_precision}): {f.decode_per_second:,.0f} images/s"
    return out


@dataclass
class EvalSamplerTiming:
    """The evaluation's sampler at n steps: the model's rows per second through `EvalModel`."""

    method: str
    num_sampling_steps: int
    batch_size: int
    precision: str
    rows_per_step: float  # model rows per sampling step (batch, or 2 x batch under CFG)
    seconds_per_step: float  # median
    first_seconds: float  # the first step: compilation
    tflops: float
    peak_share: float | None

    @property
    def rows_per_second(self) -> float:
        return self.rows_per_step / self.seconds_per_step


@torch.no_grad()
def time_eval_sampler(method, model: nn.Module, data, cfg, device: torch.device, num_sampling_steps: int,
                      steps_timed: int = 3, rounds: int = 3, seed: int = 0) -> EvalSamplerTiming:
    """Median seconds per step of the first `steps_timed` steps of the n-step schedule at the eval batch,
    in eval.precision and compiled when eval.compile (the first step, compilation included, timed apart)."""
    from bench.evaluation.sampling import EvalModel, NFECounter, draw_labels, resolve_forward_rows, resolve_precision

    model.eval()
    n, B = num_sampling_steps, min(cfg.eval.batch_size, cfg.eval.num_samples)  # the batch the evaluation samples
    precision = resolve_precision(cfg.eval.precision, device)
    counter = NFECounter(EvalModel(model, precision, device, cfg.eval.compile, cfg.eval.compile_mode,
                                   resolve_forward_rows(cfg.eval.forward_rows, device)))
    g = torch.Generator(device).manual_seed(seed)
    x0 = torch.randn(B, *data.shape, generator=g, device=device)
    y = draw_labels(B, data.num_classes, data.label_probs(), g, device)
    k = min(n, steps_timed)

    def steps(count):
        x = x0
        for i in range(count):
            x = method.sample_step(counter, x, i / n, n, y, g)
        return x

    first = _seconds(lambda: steps(1), device)
    reps = _repetitions(lambda: steps(k), device)  # also compiles every call shape of these steps
    counter.rows = 0
    per = [_seconds(lambda: [steps(k) for _ in range(reps)], device) / (reps * k) for _ in range(rounds)]
    rows_per_step = counter.rows / (rounds * reps * k)
    sec = statistics.median(per)
    tfl = forward_flops(model, data.shape, data.num_classes, device) * rows_per_step / sec / 1e12
    peak = None
    if device.type == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(device), "bf16" if precision == "bf16" else "fp32",
                           precision == "fp32-tf32")
    return EvalSamplerTiming(method.name, n, B, precision, rows_per_step, sec, first, tfl, tfl / peak if peak else None)


class _ZeroVelocity(nn.Module):
    def forward(self, x, t, d, y):
        return torch.zeros_like(x)


@dataclass
class FidTimeEstimate:
    """The wall time of FID-N at `estimate.steps` for one method. The figure is the evaluator's own estimate
    (`EvalEstimate.seconds`, what a run prints before it evaluates) fed with this module's timings; the
    distances, reference features and output files, which need the reference set, are not timed here (0).
    Beside it the compute floor."""

    method: str
    estimate: EvalEstimate
    decode_batch_seconds: float  # of estimate.feature_seconds (one batch): the VAE decoding (latents)
    feature_batch_seconds: float  # of estimate.feature_seconds (one batch): the feature extraction
    floor_seconds: float | None  # model FLOPs / peak: sampling at 100 % of the dense peak

    @property
    def seconds(self) -> float:
        return self.estimate.seconds

    @property
    def sampling_seconds(self) -> float:
        return self.estimate.sampling_seconds

    @property
    def decode_seconds(self) -> float:
        return len(self.estimate.steps) * self.estimate.batches * self.decode_batch_seconds

    @property
    def feature_seconds(self) -> float:
        return len(self.estimate.steps) * self.estimate.batches * self.feature_batch_seconds


def fid_time_estimate(method, model: nn.Module, data, cfg, device: torch.device, steps: list[int],
                      timings: list[EvalSamplerTiming], feat: "FeatureTiming", nfe_cache: dict[int, float] | None = None) -> FidTimeEstimate:
    """The evaluator's estimate (EvalEstimate) from these timings: one batch of b = min(eval.batch_size, N)
    takes each step of the n-step schedule at the rate measured for its NFE(n) / n x b model rows (the
    nearest of `timings`), and decoding and features at their measured rates."""
    from bench.evaluation.sampling import count_nfe, draw_labels

    N = cfg.eval.num_samples
    b = min(cfg.eval.batch_size, N)
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(2, *data.shape, generator=g, device=device)
    y = draw_labels(2, data.num_classes, data.label_probs(), g, device)
    flops = forward_flops(model, data.shape, data.num_classes, device)
    step_seconds, floor = {}, 0.0
    nfe_cache = {} if nfe_cache is None else nfe_cache
    for n in sorted({1, *steps}):
        if n not in nfe_cache:  # the calls a sampler makes do not depend on the values: count them on a stand-in
            nfe_cache[n] = count_nfe(method, _ZeroVelocity(), x0, y, n)
        nfe = nfe_cache[n]
        rows_per_step = nfe / n * b
        t = min(timings, key=lambda r: abs(r.rows_per_step - rows_per_step))
        step_seconds[n] = rows_per_step * t.seconds_per_step / t.rows_per_step
        if n in steps:
            peak = t.tflops / t.peak_share if t.peak_share else None
            floor = floor + nfe * flops / (peak * 1e12) if (peak and floor is not None) else None
    decode = b / feat.decode_per_second if feat.decode_per_second else 0.0
    features = b / feat.per_second if feat.per_second else 0.0
    estimate = EvalEstimate(N, b, list(steps), step_seconds[1], decode + features, 0.0, str(device),
                            precision=timings[0].precision, step_seconds={n: step_seconds[n] for n in steps})
    return FidTimeEstimate(method.name, estimate, decode, features, N * floor if floor is not None else None)


def format_eval(rows: list[EvalSamplerTiming], estimates: list[tuple[str, FidTimeEstimate]], cfg) -> str:
    ec = cfg.eval
    head = (f"evaluation sampler (EMA model, eval.precision {ec.precision} -> {rows[0].precision}, eval.compile "
            f"{'on (' + ec.compile_mode + ')' if ec.compile else 'off'}, eval batch {rows[0].batch_size}): model rows/s over "
            f"the first steps of the n-step schedule, CFG where the method applies it at that n")
    lines = [head, f"{'method':26s} {'n':>4s} {'rows/step':>9s} {'ms/step':>9s} {'rows/s':>10s} {'TFLOP/s':>8s} "
                   f"{'of peak':>8s} {'first step s':>12s}"]
    for r in rows:
        share = f"{r.peak_share:8.1%}" if r.peak_share is not None else f"{'n/a':>8s}"
        lines.append(f"{r.method:26s} {r.num_sampling_steps:4d} {r.rows_per_step:9.0f} {r.seconds_per_step * 1e3:9.2f} "
                     f"{r.rows_per_second:10.0f} {r.tflops:8.3g} {share} {r.first_seconds:12.3g}")
    lines += ["", f"FID-{ec.num_samples:,} wall time estimate (the evaluator's, as a run prints it, from these timings: per n, "
                  f"ceil(N / batch) batches of n steps + decoding + features; distances, reference features and output files "
                  f"not included; floor = model FLOPs / dense peak)",
              f"{'method':26s} {'steps':24s} {'estimate':>10s} {'sampling':>10s} {'decoding':>10s} {'features':>10s} {'floor':>10s}"]

    def fmt(sec):
        return "n/a" if sec is None else (f"{sec / 3600:.2f} h" if sec >= 3600 else f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.1f} s")

    for label, e in estimates:
        lines.append(f"{e.method:26s} {label:24s} {fmt(e.seconds):>10s} {fmt(e.sampling_seconds):>10s} "
                     f"{fmt(e.decode_seconds):>10s} {fmt(e.feature_seconds):>10s} {fmt(e.floor_seconds):>10s}")
    return "\n".join(lines)


def time_evaluation(s: "Setup", feat: "FeatureTiming", rounds: int = 3) -> tuple[list[EvalSamplerTiming], list[tuple[str, FidTimeEstimate]]]:
    """Every method: the sampler at n = 1 and n = M, then FID-N estimates at {1, 4, M} and every evaluated n."""
    rows, estimates = [], []
    for name, cfg in s.configs.items():
        tr = s.trainers[name]
        M = cfg.method.M
        timings = [time_eval_sampler(tr.method, tr.ema, s.data, cfg, s.device, n, rounds=rounds)
                   for n in sorted({1, M})]
        rows += timings
        few = sorted({n for n in (1, 4, M) if n <= M and M % n == 0})
        every = cfg.sampling_steps()
        nfe: dict[int, float] = {}
        for label, steps in ((",".join(map(str, few)), few), (f"all {len(every)} ({every[0]}..{every[-1]})", every)):
            estimates.append((label, fid_time_estimate(tr.method, tr.ema, s.data, cfg, s.device, steps, timings, feat, nfe)))
    return rows, estimates
