"""`bench speed`: how fast a profile's model trains, samples and extracts features, method by method.

- Training: every method trains the same model (same initialisation) on the same data in one
  process. Steps are timed in rounds, the methods interleaved (the order rotates every round), the
  device queue drained around each timed block; the table shows the median step time and the
  median over rounds of each method's time / flow matching's, beside the ratio its network passes
  predict (`Method.passes_per_step`: a row's forward + backward costs 3, a no-grad forward 1).
  Methods that need a teacher get a fresh untrained copy of the model (timing only).
- Sampling at n = 1: the harness's sampler (`bench.evaluation.sampling.sample`) against a bare loop of the
  same model calls with the same inputs (the harness's overhead; target within 10 %).
- Feature extraction: the profile's feature space on random uint8 images (for latents, the VAE
  decoding is timed apart). A missing Inception file skips this part with its one sentence;
  `write_random_inception` makes a same-shape file with random weights for timing only.
- The whole evaluation (`eval.precision`, `eval.compile`): the sampler's model rows/s and share of
  peak at n = 1 and at n = M (with CFG where the method applies it there), timed over a few steps of
  the n-step schedule at the eval batch; VAE decoding and feature images/s; from these the wall time
  of FID-N (N = eval.num_samples) at n in {1, 4, M} and at every evaluated n by the evaluator's own
  estimate (`EvalEstimate.seconds`, the one a run prints before it evaluates), beside the compute floor
  (network rows x forward FLOPs / peak). Distances (FID/KID/PR) are not included.
- FLOP/s: the model's forward FLOPs per row (`flops_per_forward()` when the model has it, else
  counted by torch's FlopCounterMode) x the rows of a step; on CUDA also the share of the
  device's dense peak for the training precision.

Modules: cost (the baseline, peaks, FLOPs, the timer), prepare (configs, data, trainers), training
(training steps, sampling at n = 1), evaluation (features, the evaluation's sampler, FID-N time);
this file prints the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import BenchError
# the names scripts and tests use, re-exported
from bench.speed.cost import (BASELINE, PEAK_TFLOPS, _seconds, counted_forward_flops, forward_flops, median_ratio, peak_tflops,
                              predicted_ratio, step_cost)
from bench.speed.evaluation import (EvalSamplerTiming, FeatureTiming, FidTimeEstimate, feature_image_side, fid_time_estimate,
                                    format_eval, format_features, time_eval_sampler, time_evaluation, time_features,
                                    write_random_inception)
from bench.speed.prepare import Setup, build_trainer, parse_synthetic, setup, synthetic_data
from bench.speed.training import (SamplingTiming, StepTiming, bare_loop, format_sampling, format_training,
                                  time_sampling, time_training)


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
    echo(format_sampling(sampling))
    echo("")
    echo(format_features(feat))
    eval_rows, estimates = time_evaluation(s, feat)
    echo("")
    echo(format_eval(eval_rows, estimates, cfg))
    return {"training": training, "sampling": sampling, "features": feat, "setup": s, "evaluation": eval_rows,
            "fid_estimates": estimates}
