"""Issue 24's cost, side by side in one process (medians of interleaved repeats, ratios only):

    PYTHONPATH=. python scripts/level_logging_cost.py [PROFILE] [REPS] [EVAL_REPS]     # digits 40 2

1. Training step time of the profile's shortcut with the per-level logging (the sc_level_j row
   groups, their means at every log point, and the loss-by-t bins, here on at every step: the worst
   case; a run bins only its last 20 %) against without it (the flow and bootstrap groups only, as
   before issue 24). Two trainers from the same initial weights, each logging to its own MLflow run
   every train.log_every steps; REPS pairs of 10-step blocks, alternating; the median of the pairs' ratios.
2. Evaluation at n = 1 ... M of the 'with' trainer's EMA weights after that training:
   Evaluator.evaluate_steps (n = M first, paired_to_M, paired_to_M_features, paired_to_2n) against
   the plain loop over n, alternating, EVAL_REPS each; the FID of both must agree exactly. The paired
   metrics' own time, too small to see in that difference, is timed directly on the same arrays.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    from bench.config import resolve
    from bench.evaluation.evaluate import paired_distances
    from bench.train.run import prepare
    from bench.store.tracking import Tracker
    from bench.train.trainer import Trainer

    profile = sys.argv[1] if len(sys.argv) > 1 else "digits"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    eval_reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2

    # -- 1. training --------------------------------------------------------------------------
    cfg = resolve("shortcut", profile, ["train.threads=1"])
    torch.set_num_threads(1)
    trainers, preps = {}, {}
    for name in ("without", "with"):
        p = prepare(cfg, progress=False)
        tracker = Tracker(f"{profile}-levels-cost", run_name=f"train-{name}")
        t = Trainer(cfg, p.method, p.model, p.data, p.device, progress=False, log=tracker.log_metrics)
        if name == "without":
            targets = p.method.targets

            def plain(*a, _targets=targets, **k):  # the groups as before issue 24
                tg = _targets(*a, **k)
                tg.info = {k_: v for k_, v in tg.info.items() if "_level_" not in k_}
                return tg

            p.method.targets = plain
            t.loss_by_t_from = 10**12
        else:
            t.loss_by_t_from = 0
        trainers[name], preps[name] = t, p
    times = {name: [] for name in trainers}
    block = 10  # short alternating blocks: the shared machine's load drifts slower than a pair of them
    per_log = max(cfg.train.log_every // block, 1)  # the log point (MLflow write) inside every per_log-th block
    for t in trainers.values():  # warm-up
        t.run_steps(5)
        t._flush()
    for i in range(reps):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            t.run_steps(block)
            if (i + 1) % per_log == 0:
                t._flush()
            times[name].append((time.perf_counter() - t0) / block)
    ratios = [a / b for a, b in zip(times["with"], times["without"])]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"training, {profile} shortcut, 1 thread, {reps} alternating pairs of {block}-step blocks (a log point every "
          f"{block * per_log} steps): median step {med['without'] * 1e3:.1f} ms without, {med['with'] * 1e3:.1f} ms with the "
          f"per-level logging; median of the pairs' ratios with / without {statistics.median(ratios):.3f} "
          f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f} / {statistics.quantiles(ratios, n=4)[2]:.3f}); "
          f"total time ratio {sum(times['with']) / sum(times['without']):.3f}", flush=True)

    # -- 2. evaluation ------------------------------------------------------------------------
    if eval_reps == 0:
        return
    p = preps["with"]
    model = trainers["with"].ema.eval()
    steps, M = cfg.sampling_steps(), cfg.method.M
    p.evaluator.reference_features()
    p.evaluator.evaluate(p.method, model, 1)  # warm-up

    def plain():
        return {n: p.evaluator.evaluate(p.method, model, n) for n in steps}

    def paired():
        return {r.num_sampling_steps: r for r in p.evaluator.evaluate_steps(p.method, model, steps, M)}

    ev = {"plain": [], "paired": []}
    out = {}
    for _ in range(eval_reps):
        for name, fn in (("plain", plain), ("paired", paired)):
            t0 = time.perf_counter()
            out[name] = fn()
            ev[name].append(time.perf_counter() - t0)
    same = all(out["plain"][n].metrics["fid"] == out["paired"][n].metrics["fid"] for n in steps)
    med = {k: statistics.median(v) for k, v in ev.items()}
    # the paired metrics alone, on the plain pass's samples and features: what evaluate_steps adds per pass
    r = out["plain"]
    own = []
    for _ in range(21):
        t0 = time.perf_counter()
        for n in steps:
            paired_distances(r[n].samples, r[M].samples, r[n].features, r[M].features)
            if 2 * n in r:
                paired_distances(r[n].samples, r[2 * n].samples)
        own.append(time.perf_counter() - t0)
    print(f"evaluation, {profile}, n = {','.join(map(str, steps))}, {cfg.eval.num_samples} samples per n, {eval_reps} alternating "
          f"passes each: median {med['plain']:.1f} s without, {med['paired']:.1f} s with the paired metrics, ratio "
          f"{med['paired'] / med['plain']:.3f} (per pass: {', '.join(f'{a / b:.3f}' for a, b in zip(ev['paired'], ev['plain']))}); "
          f"the paired metrics themselves {statistics.median(own) * 1e3:.2f} ms per pass (median of 21), "
          f"{statistics.median(own) / med['plain']:.2e} of the plain pass; FID identical at every n: {same}")
    print("paired_to_M at n: " + ", ".join(f"{n}: {out['paired'][n].metrics['paired_to_M']:.4g}" for n in steps))


if __name__ == "__main__":
    main()
