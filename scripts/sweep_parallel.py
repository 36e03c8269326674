"""Benchmark (issue 4): wall time of a sweep with its trials 2 at a time against the same trials
one after another, both through Ray Tune (same driver, same trials, same tracking), so the
ratio measures the packing and nothing else.

    .venv/bin/python scripts/sweep_parallel.py [--sweep k] [--profile smoke] [--reps 2]

Each repetition runs the sweep with Ray limited to 2 CPUs (two 1-CPU trials at once) and to 1 CPU
(one trial at a time), interleaved, in a throwaway tracking store. Prints every wall time and
the median ratio sequential / parallel, and writes them as JSON (--out)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default="k")
    ap.add_argument("--method", default="shortcut")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    from bench.sweep.tune import build_plan, run_sweep

    walls: dict[str, list[float]] = {"parallel": [], "sequential": []}
    for rep in range(args.reps):
        for mode, cpus in (("parallel", 2), ("sequential", 1)):
            with tempfile.TemporaryDirectory(prefix="bench-sweep-timing-") as store:
                os.environ["BENCH_STORE"] = store
                os.environ.pop("MLFLOW_TRACKING_URI", None)
                plan = build_plan(args.method, args.profile, [], [args.sweep], experiment=f"timing-{mode}")
                t0 = time.perf_counter()
                run_sweep(plan, num_cpus=cpus, progress=False, echo=lambda *_: None)
                wall = time.perf_counter() - t0
            walls[mode].append(wall)
            print(f"rep {rep}: {mode:10s} ({cpus} CPU(s) for Ray, {len(plan.trials)} trials): {wall:6.1f} s", flush=True)
    par, seq = statistics.median(walls["parallel"]), statistics.median(walls["sequential"])
    load = os.getloadavg()
    print(f"median wall: parallel {par:.1f} s, sequential {seq:.1f} s; speed-up {seq / par:.2f}x "
          f"(target >= 1.6x); load average at the end {load[0]:.1f}")
    if args.out:
        args.out.write_text(json.dumps({"sweep": args.sweep, "method": args.method, "profile": args.profile,
                                        "walls_s": walls, "speedup_median": seq / par, "loadavg_end": load}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
