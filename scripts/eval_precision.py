"""FID with bf16 evaluation against fp32 on the same checkpoint and noise, and the evaluator's
duration estimate against the measured evaluation (issue 11).

    python scripts/eval_precision.py RUN_ID [RUN_ID ...]   # runs in $BENCH_STORE (their final.pt)

Each run's final checkpoint is evaluated twice (eval.precision = fp32, then bf16; same eval seed,
so the same noise and labels) as evaluate-only runs in the run's experiment. Prints one line per
evaluation: FID at n = 1, 4, M, the estimate the evaluator printed and the measured wall time of the
whole evaluation (every n, metrics, samples and pictures logged)."""

from __future__ import annotations

import re
import sys
import time

import bench.train.run as R
from bench.config import Config


def main(run_ids: list[str]) -> None:
    from bench.files.checkpoint import load

    timed = {}
    inner = R.evaluate_all

    def evaluate_all(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        timed["seconds"] = time.perf_counter() - t0
        return out

    R.evaluate_all = evaluate_all
    print(f"{'profile':8s} {'method':14s} {'step':>6s} {'precision':>9s} {'fid n=1':>9s} {'n=4':>9s} {'n=M':>9s} "
          f"{'estimate s':>10s} {'measured s':>10s}")
    for run_id in run_ids:
        path = R.checkpoint_dir(run_id) / "final.pt"
        state = load(path)
        base = Config.from_dict(state["config"])
        for precision in ("fp32", "bf16"):
            cfg = Config.from_dict({**base.to_dict(), "eval": {**base.to_dict()["eval"], "precision": precision}})
            lines: list[str] = []
            out = R.evaluate_checkpoint(cfg, path, base.profile, run_name=f"{base.method_name}-s{base.seed}-eval-{precision}",
                                        progress=False, echo=lines.append)
            est = next(float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]
                       for ln in lines if (m := re.search(r"estimate: ~([\d.]+) (s|min|h)", ln)))
            M = cfg.method.M
            fid = [out.results[n]["fid"] for n in (1, 4, M)]
            print(f"{base.profile:8s} {base.method_name:14s} {state['step']:6d} {precision:>9s} "
                  + " ".join(f"{f:9.4g}" for f in fid) + f" {est:10.1f} {timed['seconds']:10.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
