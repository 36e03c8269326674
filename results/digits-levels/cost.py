"""Issue 24's cost, side by side in one process (medians of interleaved repeats, ratios only):

    PYTHONPATH=. python results/digits-levels/cost.py RUN_ID      # a finished digits-profile shortcut run

1. Training step time of the digits profile's shortcut with the per-level logging (the sc_level_j
   row groups, their means at every log point, and the loss-by-t bins of the last 20 % of the
   steps, here switched on for every step: the worst case) against without it (the flow and
   bootstrap groups only, as before issue 24). Two trainers from the same initial weights, each
   logging to its own MLflow run every train.log_every steps; blocks of 50 steps, alternating.
2. Evaluation time of RUN_ID's EMA weights at n = 1 ... M: Evaluator.evaluate_steps (n = M first,
   paired_to_M, paired_to_M_features, paired_to_2n) against the plain loop over n without them;
   alternating; the FID of both must agree exactly.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    from bench import checkpoint as ckpt
    from bench.config import resolve
    from bench.run import prepare
    from bench.session import checkpoint_dir, config_of_run
    from bench.tracking import Tracker
    from bench.trainer import Trainer

    run_id = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7

    # -- 1. training --------------------------------------------------------------------------
    cfg = resolve("shortcut", "digits", [])
    trainers = {}
    for name in ("without", "with"):
        p = prepare(cfg, progress=False)
        tracker = Tracker("digits-levels-cost", run_name=f"train-{name}")
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
        trainers[name] = t
    times = {name: [] for name in trainers}
    block = cfg.train.log_every
    for t in trainers.values():  # warm-up
        t.run_steps(5)
        t._flush()
    for _ in range(reps):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            t.run_steps(block)
            t._flush()
            times[name].append((time.perf_counter() - t0) / block)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"training, digits shortcut, {reps} blocks of {block} steps each, alternating: median step "
          f"{med['without'] * 1e3:.1f} ms without, {med['with'] * 1e3:.1f} ms with the per-level logging; "
          f"ratio with / without {med['with'] / med['without']:.3f} "
          f"(per block: {', '.join(f'{a / b:.3f}' for a, b in zip(times['with'], times['without']))})")

    # -- 2. evaluation ------------------------------------------------------------------------
    rcfg, _ = config_of_run(run_id)
    p = prepare(rcfg, progress=False)
    state = ckpt.load(checkpoint_dir(run_id) / "final.pt")
    p.model.load_state_dict(state["ema"])
    model = p.model.to(p.device).eval()
    steps, M = rcfg.sampling_steps(), rcfg.method.M
    p.evaluator.reference_features()
    p.evaluator.evaluate(p.method, model, 1)  # warm-up

    def plain():
        return {n: p.evaluator.evaluate(p.method, model, n).metrics for n in steps}

    def paired():
        return {r.num_sampling_steps: r.metrics for r in p.evaluator.evaluate_steps(p.method, model, steps, M)}

    ev = {"plain": [], "paired": []}
    out = {}
    for _ in range(max(reps // 2, 3)):
        for name, fn in (("plain", plain), ("paired", paired)):
            t0 = time.perf_counter()
            out[name] = fn()
            ev[name].append(time.perf_counter() - t0)
    same = all(out["plain"][n]["fid"] == out["paired"][n]["fid"] for n in steps)
    med = {k: statistics.median(v) for k, v in ev.items()}
    print(f"evaluation of run {run_id} at n = {','.join(map(str, steps))}, {rcfg.eval.num_samples} samples per n, "
          f"{len(ev['plain'])} alternating repeats: median {med['plain']:.1f} s without, {med['paired']:.1f} s with the "
          f"paired metrics; ratio {med['paired'] / med['plain']:.3f}; FID identical at every n: {same}")
    print("paired_to_M at n: " + ", ".join(f"{n}: {out['paired'][n]['paired_to_M']:.4g}" for n in steps))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
