"""The evaluation pipeline end to end on this device, without MLflow (issue 11).

Trains a model on digits for a few thousand steps (train.compile / compile_mode as given), then
evaluates its EMA weights through the harness's Evaluator at n = 1, 4, M in each eval precision
(same seed: same noise and labels), compiled or not; prints FID, KID, the evaluator's duration
estimate and the measured evaluation time, per precision.

    python scripts/eval_pipeline_check.py --method shortcut --steps 4000 --model DiT-S/2 --set train.compile=true ...
    python scripts/eval_pipeline_check.py --profile cifar10 --method flow_matching,shortcut --steps 200 --eval-steps 1,2,4 ...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.config import resolve
from bench.data import load_dataset
from bench.evaluation.evaluate import Evaluator
from bench.models import build_model
from bench.speed.prepare import _model_overrides
from bench.config import pick_device
from bench.train.trainer import Trainer
from bench.classifiers import classifier_for
from methods import get_method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="shortcut", help="one method or a comma list (trained one after the other)")
    ap.add_argument("--profile", default="digits")
    ap.add_argument("--model", default="")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--eval-steps", default="", help="comma list of sampling steps to evaluate (default: 1, 4, M)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()

    extra = [f"{k}={v}" for k, v in _model_overrides(a.model or None)] + [f"train.steps={a.steps}", *a.set]
    data = None
    with tempfile.TemporaryDirectory() as cache:  # the reference features are computed once for every method
        for name in [m.strip() for m in a.method.split(",") if m.strip()]:
            data = check(name, a, extra, Path(cache), data)


def check(name: str, a, extra: list[str], cache: Path, data):
    cfg = resolve(name, a.profile, extra)
    device = pick_device(cfg.train.device)
    data = data or load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.shape, data.num_classes)
    method = get_method(name)(cfg.method, data.num_classes, None, train_steps=cfg.train.steps)
    method.setup(data, device, classifier_for(method, data, device))  # as run.prepare does: a method's classifier is handed in
    tr = Trainer(cfg, method, model, data, device, progress=False)
    t0 = time.perf_counter()
    tr.fit()
    train_s = time.perf_counter() - t0
    print(f"trained {name} {a.model or cfg.model.preset or cfg.model.arch} on {data.name} for {cfg.train.steps} steps in "
          f"{train_s:.1f} s ({cfg.train.steps / train_s:.2f} steps/s incl. compile; train.precision {cfg.train.precision}, "
          f"compile {cfg.train.compile} {cfg.train.compile_mode}), device {device}; last logged losses "
          f"{ {k: round(v, 4) for k, v in tr._last_means.items()} }", flush=True)
    M = cfg.method.M
    steps = sorted({int(s) for s in a.eval_steps.split(",") if s.strip()}) if a.eval_steps else sorted({1, 4, M})
    for precision in a.precisions.split(","):
        ecfg = resolve(name, a.profile, extra + [f"eval.precision={precision}"])
        ev = Evaluator(ecfg, data, device, cache, progress=False)
        ev.reference_features()
        t0 = time.perf_counter()
        est = ev.estimate(method, tr.ema, steps)
        est_s = time.perf_counter() - t0
        res = {n: ev.evaluate(method, tr.ema, n).metrics for n in steps}
        took = time.perf_counter() - t0 - est_s
        print(f"eval.precision {precision} -> {ev.precision}, eval.compile {ecfg.eval.compile} "
              f"({ecfg.eval.compile_mode}), {ecfg.eval.num_samples} samples, seed {ev.seed}: "
              + ", ".join(f"n={n}: FID {m['fid']:.3f} KID {m.get('kid', float('nan')):.4f}" for n, m in res.items())
              + f"; estimate {est.seconds:.1f} s, measured {took:.1f} s (the estimate itself took {est_s:.1f} s)", flush=True)
        print("  " + est.text(), flush=True)
    return data


if __name__ == "__main__":
    main()
