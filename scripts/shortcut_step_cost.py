"""Why the shortcut's training step costs more than its passes predict, measured on this machine.

`bench speed` predicts the shortcut / flow-matching step ratio from rows: forward+backward rows cost 3,
no-grad rows 1 (1.167 at k = 1/4, batch 128). This times, interleaved (medians over --rounds):
the two full training steps (Trainer.run_steps, as `bench speed`), the shortcut with its per-t binning on
(the last 20 % of a run does it), the shortcut's targets alone (two no-grad EMA calls on the
self-consistency rows plus the row bookkeeping), and no-grad forwards of the model at the bootstrap rows
and at the full batch, so the per-row cost of a small call can be read off. Then it predicts the ratio
again with the measured cost of the two small calls in place of the row count.

    python scripts/shortcut_step_cost.py [--rounds 9] [--out results/profile-digits/shortcut_step.txt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.config import resolve
from bench.data import load_dataset
from bench.speed.prepare import build_trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10, help="steps (or calls) per timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cpu")
    fm_cfg, sc_cfg = resolve("flow_matching", None, []), resolve("shortcut", None, [])
    data = load_dataset(fm_cfg.data)
    fm, sc, sc_bins = (build_trainer(c, data, dev) for c in (fm_cfg, sc_cfg, sc_cfg))
    sc_bins.loss_by_t_from = 0  # per-t binning from the first step, as in a run's last 20 %
    B, nb = sc_cfg.train.batch_size, sc.method.num_bootstrap_rows(sc_cfg.train.batch_size)
    g = torch.Generator().manual_seed(0)

    def batch(rows):
        return (torch.randn(rows, *data.shape, generator=g), torch.rand(rows, generator=g),
                torch.full((rows,), 0.5), torch.randint(0, 10, (rows,), generator=g))

    small, full = batch(nb), batch(B)

    def nograd(x):
        with torch.no_grad():
            sc.ema(*x)

    def targets():
        sc.method.targets(sc.fmodel, sc.fema, sc.prepare_batch(), sc.step, sc.gen)

    k = a.steps
    jobs = {"flow matching step": lambda: fm.run_steps(k), "shortcut step": lambda: sc.run_steps(k),
            "shortcut step, per-t bins on": lambda: sc_bins.run_steps(k), "shortcut targets": lambda: [targets() for _ in range(k)],
            f"no-grad forward, {nb} rows": lambda: [nograd(small) for _ in range(k)],
            f"no-grad forward, {B} rows": lambda: [nograd(full) for _ in range(k)]}
    for f in jobs.values():
        f()
    times = {n: [] for n in jobs}
    names = list(jobs)
    for r in range(a.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            jobs[n]()
            times[n].append((time.perf_counter() - t0) / k)
        for tr in (fm, sc, sc_bins):
            tr.discard_losses()

    def ratio(x, y):
        return statistics.median(p / q for p, q in zip(times[x], times[y]))

    fm_ms = statistics.median(times["flow matching step"]) * 1000
    small_share = ratio(f"no-grad forward, {nb} rows", f"no-grad forward, {B} rows")
    full_vs_step = ratio(f"no-grad forward, {B} rows", "flow matching step")
    measured = ratio("shortcut step", "flow matching step")
    by_rows = 1 + 2 * nb / (3 * B)  # bench speed's prediction: 2 x nb no-grad rows against 3 x B
    by_calls = 1 + 2 * small_share * full_vs_step  # two small calls at their measured cost, in units of one FM step
    lines = [f"digits profile, batch {B}, {nb} self-consistency rows, {a.threads} threads; medians of {a.rounds} interleaved "
             f"rounds x {k}"]
    lines += [f"  {n:<34} {statistics.median(v) * 1000:8.2f} ms" for n, v in times.items()]
    lines += [f"shortcut / flow matching step: {measured:.3f} (per-t bins on: {ratio('shortcut step, per-t bins on', 'flow matching step'):.3f})",
              f"predicted from rows (bench speed): {by_rows:.3f} -> measured / predicted {measured / by_rows:.3f}",
              f"a no-grad call of {nb} rows costs {small_share:.3f} of one of {B} rows (rows alone: {nb / B:.3f}); "
              f"one no-grad call of {B} rows is {full_vs_step:.3f} of a flow-matching step (rows alone: 1/3)",
              f"predicted with the two small calls at their measured cost: {by_calls:.3f} -> measured / predicted {measured / by_calls:.3f}",
              f"flow matching step {fm_ms:.1f} ms"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
