"""`bench speed`: how fast a profile's model trains, samples and extracts features, method by method.

- Training: every method trains the same model (same initialisation) on the same data in one
  process. Steps are timed in rounds, the methods interleaved (the order rotates every round), the
  device queue drained around each timed block; the table shows the median step time and the
  median over rounds of each method's time / flow matching's, beside the ratio its network passes
  predict (`Method.passes_per_step`: a row's forward + backward costs 3, a no-grad forward 1).
  Methods that need a teacher get a fresh untrained copy of the model (timing only).
- Sampling at n = 1: the harness's sampler (`bench.sampling.sample`) against a bare loop of the
  same model calls with the same inputs (the harness's overhead; target within 10 %).
- Feature extraction: the profile's feature space on random uint8 images (for latents, the VAE
  decoding is timed apart). A missing Inception file skips this part with its one sentence;
  `write_random_inception` makes a same-shape file with random weights for timing only.
- The whole evaluation (`eval.precision`, `eval.compile`): the sampler's model rows/s and share of
  peak at n = 1 and at n = M (with CFG where the method applies it there), timed over a few steps of
  the n-step schedule at the eval batch; VAE decoding and feature images/s; from these the estimated
  wall time of FID-N (N = eval.num_samples) at n in {1, 4, M} and at every evaluated n, beside the
  compute floor (network rows x forward FLOPs / peak). Distances (FID/KID/PR) are not included.
- FLOP/s: the model's forward FLOPs per row (`flops_per_forward()` when the model has it, else
  counted by torch's FlopCounterMode) x the rows of a step; on CUDA also the share of the
  device's dense peak for the training precision.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.evaluate import sync, timed
from methods.base import step_cost

# cost of one row, in units of a no-grad forward pass of one row (backward ~ 2 forwards)
BASELINE = "flow_matching"

# dense tensor-core peaks in TFLOP/s: (bf16, tf32, fp32 without tensor cores); most specific name first
PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("H200", (989.0, 494.0, 67.0)),
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100 NVL", (835.0, 418.0, 60.0)),
    ("H100", (989.0, 494.0, 67.0)),  # SXM
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
]


# ----------------------------------------------------------------------------- pure helpers


def predicted_ratio(passes: dict[str, float], baseline: dict[str, float]) -> float:
    return step_cost(passes) / step_cost(baseline)


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's dense peak for `precision` ("bf16" or "fp32"), None when the device is not listed."""
    for key, (bf16, tf32_peak, fp32) in PEAK_TFLOPS:
        if key in device_name:
            return bf16 if precision == "bf16" else (tf32_peak if tf32 else fp32)
    return None


def median_ratio(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of time / baseline time of the same round."""
    return statistics.median(a / b for a, b in zip(times, baseline))


def parse_synthetic(spec: str) -> tuple[tuple[int, ...], int]:
    """`synthetic:4x32x32` or `synthetic:4x32x32:1000` -> ((4, 32, 32), classes)."""
    parts = spec.split(":")
    try:
        shape = tuple(int(s) for s in parts[1].lower().split("x"))
        classes = int(parts[2]) if len(parts) > 2 else 0
        if len(parts) > 3 or not shape or min(shape) < 1 or classes < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise BenchError(f"--data {spec!r}: write synthetic:CxHxW or synthetic:CxHxW:CLASSES, e.g. synthetic:4x32x32.") from None
    return shape, classes


def synthetic_data(spec: str, size: int = 1024, seed: int = 0):
    """Standard-normal 'images' of the given shape (latent stand-ins): timing only, no decoder."""
    from bench.data import TensorData

    shape, classes = parse_synthetic(spec)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *shape, generator=g)
    y = torch.randint(classes, (size,), generator=g) if classes else None
    kind = "images" if len(shape) == 3 else "vectors"
    return TensorData(spec, kind, x, y, classes)


def forward_flops(model: nn.Module, shape: tuple[int, ...], num_classes: int, device) -> float:
    """FLOPs of one forward pass of one row: model.flops_per_forward() when it exists, else counted."""
    if hasattr(model, "flops_per_forward"):
        return float(model.flops_per_forward())
    return counted_forward_flops(model, shape, num_classes, device)


@torch.no_grad()
def counted_forward_flops(model: nn.Module, shape: tuple[int, ...], num_classes: int, device, rows: int = 2) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(rows, *shape, device=device)
    t = torch.zeros(rows, device=device)
    y = torch.full((rows,), num_classes, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, t, y)
    return counter.get_total_flops() / rows


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """A state dict with the shapes of torch-fidelity's inception-v3-compat and random weights.
    Same speed as the real network, meaningless features: for timing and tests only."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.checkpoint import atomic_write

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


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    return timed(fn, device)[0]


def _repetitions(fn: Callable[[], Any], device: torch.device, block_seconds: float = 0.1) -> int:
    """Calls per timed block so that a block lasts about `block_seconds` (after one warm-up call)."""
    fn()
    return max(1, math.ceil(block_seconds / max(_seconds(fn, device), 1e-6)))


# ----------------------------------------------------------------------------- setup


@dataclass
class Setup:
    """What every measurement shares: configs per method, data, device."""

    configs: dict[str, Any]  # method name -> resolved Config
    data: Any
    device: torch.device
    skipped: list[str] = field(default_factory=list)  # methods left out and why
    trainers: dict[str, Any] = field(default_factory=dict)  # filled by time_training; sampling reuses their EMA


def _model_overrides(model: str | None) -> list[tuple[str, str]]:
    if not model:
        return []
    if model == "mlp":
        return [("model.arch", "mlp")]
    from bench.models.dit import PRESETS
    from bench.models.unet import PRESETS as UNET_PRESETS

    if model in UNET_PRESETS:
        return [("model.arch", "unet"), ("model.preset", model)]
    if model not in PRESETS:
        raise BenchError(f"--model {model!r} is neither mlp nor a DiT preset ({', '.join(PRESETS)}) nor a U-Net preset "
                         f"({', '.join(UNET_PRESETS)}).")
    return [("model.arch", "dit"), ("model.preset", model)]


def _split_overrides(overrides: list[str], names: list[str], profile: str | None, config_path) -> dict[str, list[str]]:
    """--set keys that only some methods have (e.g. k) go to those methods; a key no method has is an error."""
    from bench.config import has_key, load_toml, parse_overrides, resolve

    doc = load_toml(config_path)
    out: dict[str, list[str]] = {n: [] for n in names}
    for key, value in parse_overrides(overrides):
        takers = [n for n in names if has_key(key, n)]
        if not takers:
            resolve(names[0], profile, [(key, value)], doc=doc)  # raises the usual one sentence
        for n in takers:
            out[n].append(f"{key}={value}")
    return out


def setup(profile: str | None, model: str | None, data_spec: str | None, overrides: list[str], methods: str,
          config_path: Path | None = None) -> Setup:
    """Resolve one config per method (same profile, model, data, overrides) and load the data once."""
    from bench.config import load_toml, resolve
    from bench.data import load_dataset
    from bench.trainer import pick_device
    from methods import METHODS, get_method

    if methods in ("", "no-teacher"):
        names = [n for n, c in METHODS.items() if not c.needs_teacher]
        skipped = [f"{n} (needs a teacher; name it in --methods to time it with an untrained one)"
                   for n, c in METHODS.items() if c.needs_teacher]
    elif methods == "all":
        names, skipped = list(METHODS), []
    else:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        for n in names:
            get_method(n)
        skipped = []
    if BASELINE not in names:
        names.insert(0, BASELINE)  # every ratio is to flow matching
    names.sort(key=lambda n: n != BASELINE)

    doc = load_toml(config_path)
    extra = [f"{k}={v}" for k, v in _model_overrides(model)]
    per_method = _split_overrides(list(overrides), names, profile, config_path)
    spec = data_spec
    configs = {n: resolve(n, profile, extra + per_method[n], data_spec=spec, doc=doc) for n in names}
    base = configs[BASELINE]
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)
    device = pick_device(base.train.device)
    spec = base.data.spec
    data = synthetic_data(spec, seed=base.data.data_seed) if spec.startswith("synthetic:") else load_dataset(base.data)
    return Setup(configs, data, device, skipped)


def _make_method(cfg, num_classes: int, teacher: nn.Module | None):
    from methods import get_method

    # every method takes train_steps (methods.base.Method); the ones whose __init__ is (*args, **kwargs) hid it from a
    # signature check, so reflow spread its one-off pairs over 1 step (predicted 86x on the H200) and PD / CT
    # timed the stage schedule of a 0-step run
    return get_method(cfg.method_name)(cfg.method, num_classes, teacher, train_steps=cfg.train.steps)


def build_trainer(cfg, data, device):
    """A Trainer for timing: the run's initialisation seed; a frozen untrained teacher when the method needs one."""
    from bench.models import build_model
    from bench.trainer import Trainer
    from methods import get_method

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.shape, data.num_classes)
    teacher = None
    if get_method(cfg.method_name).needs_teacher:
        teacher = copy.deepcopy(model).to(device).requires_grad_(False).eval()
    method = _make_method(cfg, data.num_classes, teacher)
    return Trainer(cfg, method, model, data, device, progress=False)


# ----------------------------------------------------------------------------- measurements


@dataclass
class StepTiming:
    method: str
    seconds: list[float]  # per step, one entry per round
    first_seconds: float  # the first step: compilation and one-off work (a reflow's pairs, ...)
    ratio: float  # median over rounds of seconds / flow matching's
    predicted: float  # from passes_per_step
    rows_per_second: float
    tflops: float | None = None
    peak_share: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_training(s: Setup, rounds: int = 7, steps_per_round: int = 5, warmup: int = 2,
                  log: Callable[[str], None] = print) -> list[StepTiming]:
    """Interleaved training-step timings of every method (see the module doc)."""
    trainers = {n: build_trainer(cfg, s.data, s.device) for n, cfg in s.configs.items()}
    first: dict[str, float] = {}

    for n, tr in trainers.items():
        tr.model.train()
        first[n] = _seconds(lambda: tr.run_steps(1), s.device)
        tr.run_steps(max(warmup - 1, 0))
        sync(s.device)
        tr.discard_losses()
        log(f"  warmed up {n}: first step {first[n]:.3g} s")
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no method always runs first
        for n in order:
            times[n].append(_seconds(lambda: trainers[n].run_steps(steps_per_round), s.device) / steps_per_round)
        for tr in trainers.values():
            tr.discard_losses()

    base_cfg = s.configs[BASELINE]
    B = base_cfg.train.batch_size
    base_passes = trainers[BASELINE].method.passes_per_step(B)
    model = trainers[BASELINE].model
    flops = forward_flops(model, s.data.shape, s.data.num_classes, s.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    peak = peak_tflops(torch.cuda.get_device_name(s.device), base_cfg.train.precision, tf32) if s.device.type == "cuda" else None
    out = []
    for n in names:
        passes = trainers[n].method.passes_per_step(B)
        med = statistics.median(times[n])
        tfl = flops * step_cost(passes) / med / 1e12
        out.append(StepTiming(n, times[n], first[n], median_ratio(times[n], times[BASELINE]),
                              predicted_ratio(passes, base_passes), B / med, tfl, tfl / peak if peak else None))
    s.trainers = trainers
    return out


@dataclass
class SamplingTiming:
    method: str
    batch_size: int
    harness_per_second: float
    bare_per_second: float
    calls: int  # model calls at n = 1

    @property
    def ratio(self) -> float:
        return self.harness_per_second / self.bare_per_second


class _Recorder(nn.Module):
    """Wraps a model and keeps the inputs of every call (to replay them in the bare loop)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, d, y):
        self.calls.append((x.shape[0], t, d, y))
        return self.model(x, t, d, y)


def bare_loop(model: nn.Module, x0: Tensor, calls: list[tuple[int, Tensor, Tensor, Tensor]], num_steps: int) -> Tensor:
    """The same model calls as the harness made, with nothing around them but an Euler update."""
    x, b = x0, x0.shape[0]
    for rows, t, d, y in calls:
        inp = x if rows == b else x.repeat(rows // b, *([1] * (x.dim() - 1)))
        x = x + model(inp, t, d, y)[:b] / num_steps
    return x


@torch.no_grad()
def time_sampling(method, model: nn.Module, data, batch_size: int, device: torch.device, rounds: int = 7,
                  seed: int = 0) -> SamplingTiming:
    """Samples per second at n = 1: `bench.sampling.sample` against `bare_loop`, interleaved, medians."""
    from bench.sampling import draw_labels, sample

    model.eval()
    g = torch.Generator(device).manual_seed(seed)
    x0 = torch.randn(batch_size, *data.shape, generator=g, device=device)
    y = draw_labels(batch_size, data.num_classes, data.label_probs(), g, device)
    rec = _Recorder(model)
    sample(method, rec, x0, y, 1, g)  # also the warm-up
    reps = _repetitions(lambda: bare_loop(model, x0, rec.calls, 1), device)
    harness, bare = [], []
    for _ in range(rounds):
        harness.append(_seconds(lambda: [sample(method, model, x0, y, 1, g) for _ in range(reps)], device) / reps)
        bare.append(_seconds(lambda: [bare_loop(model, x0, rec.calls, 1) for _ in range(reps)], device) / reps)
    return SamplingTiming(method.name, batch_size, batch_size / statistics.median(harness),
                          batch_size / statistics.median(bare), len(rec.calls))


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
    from bench.metrics import FeatureSpace

    b = min(cfg.eval.batch_size, 256 if device.type == "cpu" else cfg.eval.batch_size)
    side = feature_image_side(data, image_size)
    try:
        space = FeatureSpace.resolve(cfg.eval.features, data.kind, data.name, cfg.eval.inception_weights)
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
        from bench.sampling import precision_context, resolve_precision

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
    from bench.sampling import EvalModel, NFECounter, draw_labels, resolve_precision

    model.eval()
    n, B = num_sampling_steps, cfg.eval.batch_size
    precision = resolve_precision(cfg.eval.precision, device)
    counter = NFECounter(EvalModel(model, precision, device, cfg.eval.compile, cfg.eval.compile_mode))
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
    """Estimated wall time of FID-N at the steps `steps` for one method (distances excluded)."""

    method: str
    num_samples: int
    steps: list[int]
    sampling_seconds: float
    decode_seconds: float
    feature_seconds: float
    floor_seconds: float | None  # model FLOPs / peak: sampling at 100 % of the dense peak

    @property
    def seconds(self) -> float:
        return self.sampling_seconds + self.decode_seconds + self.feature_seconds


def fid_time_estimate(method, model: nn.Module, data, cfg, device: torch.device, steps: list[int],
                      timings: list[EvalSamplerTiming], feat: "FeatureTiming", nfe_cache: dict[int, float] | None = None) -> FidTimeEstimate:
    """Per n: N x NFE(n) model rows at the rate measured for that many rows per step (the nearest of
    `timings`), plus N decodings and N feature extractions at their measured rates."""
    from bench.sampling import count_nfe, draw_labels

    N = cfg.eval.num_samples
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(2, *data.shape, generator=g, device=device)
    y = draw_labels(2, data.num_classes, data.label_probs(), g, device)
    flops = forward_flops(model, data.shape, data.num_classes, device)
    per_sample_sec, floor = 0.0, 0.0
    nfe_cache = {} if nfe_cache is None else nfe_cache
    for n in steps:
        if n not in nfe_cache:  # the calls a sampler makes do not depend on the values: count them on a stand-in
            nfe_cache[n] = count_nfe(method, _ZeroVelocity(), x0, y, n)
        nfe = nfe_cache[n]
        rows_per_step = nfe / n * cfg.eval.batch_size
        t = min(timings, key=lambda r: abs(r.rows_per_step - rows_per_step))
        per_sample_sec += nfe * t.seconds_per_step / t.rows_per_step
        peak = t.tflops / t.peak_share if t.peak_share else None
        floor = floor + nfe * flops / (peak * 1e12) if (peak and floor is not None) else None
    k = len(steps)
    return FidTimeEstimate(method.name, N, list(steps), N * per_sample_sec,
                           k * N / feat.decode_per_second if feat.decode_per_second else 0.0,
                           k * N / feat.per_second if feat.per_second else 0.0,
                           N * floor if floor is not None else None)


def format_eval(rows: list[EvalSamplerTiming], estimates: list[tuple[str, FidTimeEstimate]], cfg) -> str:
    ec = cfg.eval
    head = (f"evaluation sampler (EMA model, eval.precision {ec.precision} -> {rows[0].precision}, eval.compile "
            f"{'on (' + ec.compile_mode + ')' if ec.compile else 'off'}, eval batch {ec.batch_size}): model rows/s over "
            f"the first steps of the n-step schedule, CFG where the method applies it at that n")
    lines = [head, f"{'method':26s} {'n':>4s} {'rows/step':>9s} {'ms/step':>9s} {'rows/s':>10s} {'TFLOP/s':>8s} "
                   f"{'of peak':>8s} {'first step s':>12s}"]
    for r in rows:
        share = f"{r.peak_share:8.1%}" if r.peak_share is not None else f"{'n/a':>8s}"
        lines.append(f"{r.method:26s} {r.num_sampling_steps:4d} {r.rows_per_step:9.0f} {r.seconds_per_step * 1e3:9.2f} "
                     f"{r.rows_per_second:10.0f} {r.tflops:8.3g} {share} {r.first_seconds:12.3g}")
    lines += ["", f"FID-{ec.num_samples:,} wall time estimate (sampling + decoding + features per n; distances not included; "
                  f"floor = model FLOPs / dense peak)",
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


# ----------------------------------------------------------------------------- the report


def header(s: Setup, model_name: str) -> str:
    cfg = s.configs[BASELINE]
    from bench.models import count_parameters

    torch.manual_seed(cfg.seed)
    from bench.models import build_model

    net = build_model(cfg.model, s.data.shape, s.data.num_classes)
    params = count_parameters(net)
    flops = forward_flops(net, s.data.shape, s.data.num_classes, torch.device("cpu"))
    dev = str(s.device)
    if s.device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(s.device)})"
    else:
        dev += f" ({torch.get_num_threads()} threads)"
    return (f"bench speed: profile {cfg.profile}, model {model_name} ({params / 1e6:.3g}M parameters, "
            f"{flops / 1e9:.4g} GFLOP per forward of one row), "
            f"data {s.data.name} {'x'.join(map(str, s.data.shape))} ({s.data.num_classes} classes), "
            f"batch {cfg.train.batch_size}, device {dev}, precision {cfg.train.precision}, "
            f"compile {'on' if cfg.train.compile else 'off'}")


def format_training(rows: list[StepTiming], rounds: int, steps: int, cuda: bool) -> str:
    lines = [f"training step: median of {rounds} interleaved rounds x {steps} steps; ratio = median over rounds "
             f"of time / {BASELINE}'s; predicted from passes_per_step (forward+backward row 3, no-grad row 1)",
             f"{'method':26s} {'ms/step':>9s} {'ratio':>7s} {'predicted':>9s} {'rows/s':>9s} {'first step s':>12s} "
             f"{'TFLOP/s':>8s}" + (f" {'of peak':>8s}" if cuda else "")]
    for r in rows:
        line = (f"{r.method:26s} {r.median * 1e3:9.2f} {r.ratio:7.3f} {r.predicted:9.3f} {r.rows_per_second:9.0f} "
                f"{r.first_seconds:12.3g} {r.tflops:8.3g}")
        if cuda:
            line += f" {r.peak_share:8.1%}" if r.peak_share is not None else f" {'n/a':>8s}"
        lines.append(line)
    return "\n".join(lines)


def format_sampling(rows: list[SamplingTiming], num_samples: int, feat: FeatureTiming | None) -> str:
    lines = [f"sampling at n = 1 (EMA model, no grad): harness sampler vs a bare loop of the same model calls; "
             f"eval at n = 1 = {num_samples:,} samples through sampling" + (" + decoding" if feat and feat.decode_per_second else "")
             + (" + features" if feat and feat.per_second else ""),
             f"{'method':26s} {'batch':>6s} {'calls':>5s} {'harness/s':>10s} {'bare/s':>10s} {'harness/bare':>12s} {'eval n=1 s':>10s}"]
    for r in rows:
        per_sample = 1 / r.harness_per_second
        if feat and feat.per_second:
            per_sample += 1 / feat.per_second
        if feat and feat.decode_per_second:
            per_sample += 1 / feat.decode_per_second
        lines.append(f"{r.method:26s} {r.batch_size:6d} {r.calls:5d} {r.harness_per_second:10.0f} {r.bare_per_second:10.0f} "
                     f"{r.ratio:12.3f} {num_samples * per_sample:10.3g}")
    return "\n".join(lines)


def format_features(f: FeatureTiming) -> str:
    shape = "x".join(map(str, f.image_shape))
    if f.per_second is None:
        return f"feature extraction ({f.space}): {f.note}"
    out = f"feature extraction ({f.space}, uint8 {shape}, batch {f.batch_size}): {f.per_second:,.0f} images/s"
    if f.decode_per_second:
        out += f"; VAE decoding of latents ({f.decode_precision}): {f.decode_per_second:,.0f} images/s"
    return out


def main(profile: str | None = None, model: str | None = None, data: str | None = None, overrides: list[str] = (),
         methods: str = "no-teacher", rounds: int = 7, steps: int = 5, image_size: int = 0,
         config_path: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure and print everything; returns the numbers (tests, scripts)."""
    if rounds < 1 or steps < 1:
        raise BenchError("--rounds and --steps must be >= 1.")
    s = setup(profile, model, data, list(overrides), methods, config_path)
    cfg = s.configs[BASELINE]
    model_name = model or (cfg.model.preset or cfg.model.arch)
    echo(header(s, model_name))
    for note in s.skipped:
        echo(f"  skipped {note}")
    training = time_training(s, rounds, steps, log=echo)
    echo("")
    echo(format_training(training, rounds, steps, s.device.type == "cuda"))
    feat = time_features(cfg, s.data, s.device, image_size)
    sampling = [time_sampling(s.trainers[n].method, s.trainers[n].ema, s.data, cfg.eval.batch_size, s.device, rounds)
                for n in s.configs]
    echo("")
    echo(format_sampling(sampling, cfg.eval.num_samples, feat))
    echo("")
    echo(format_features(feat))
    eval_rows, estimates = time_evaluation(s, feat)
    echo("")
    echo(format_eval(eval_rows, estimates, cfg))
    return {"training": training, "sampling": sampling, "features": feat, "setup": s, "evaluation": eval_rows,
            "fid_estimates": estimates}
