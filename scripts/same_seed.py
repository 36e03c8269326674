"""Same seed, same numbers: compare the runs of one experiment in two tracking stores, method by method.

For each method's top-level run (a distilling method's nested teacher is left out: it is the
flow-matching run trained the same way): the EMA weights' hash (bench.files.checkpoint.state_hash of
the last checkpoint), the saved samples at every n (sha256 over the arrays of samples/steps_*.npz),
and every logged metric point (key, step, value; the loss history included). A metric that only the
second store has is listed as new, one that only the first has is a difference. Exit 1 on any
difference, so a refactor that claims no behaviour change can be checked:

    scripts/same_seed.sh 7edd239          # runs every method in 7edd239's tree and in this one, then this
    python scripts/same_seed.py STORE_A STORE_B --experiment same-seed

A change that reorders floating-point sums (a faster formula of a distance) may be let through for the
metrics it names, within a relative bound, and is then said: `--close fid,kid,kid_std --rel 1e-6` prints
each such metric's largest relative difference per method; anything else must still be identical.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from bench.files.checkpoint import load, state_hash
from bench.store.tracking import RunStore


def runs(store_dir: str, experiment: str) -> dict[str, dict]:
    store = RunStore.existing(f"sqlite:///{Path(store_dir).resolve()}/mlflow.db")
    out = {}
    for r in store.find(experiment, status="FINISHED"):
        if "mlflow.parentRunId" in r.tags:
            continue
        points = {(k, p.step, i): p.value for k in r.metrics for i, p in enumerate(store.history(r.run_id, k))}
        ema = load(Path(store_dir) / "checkpoints" / r.run_id / "last.pt")["ema"]
        h = hashlib.sha256()
        files = sorted(glob.glob(str(Path(unquote(urlparse(r.artifact_uri).path)) / "samples" / "*.npz")))
        for f in files:
            with np.load(f) as z:
                for k in sorted(z.files):
                    h.update((os.path.basename(f) + k).encode())
                    h.update(np.ascontiguousarray(z[k]).tobytes())
        out[r.params["method"]] = {"ema": state_hash(ema)[:16], "samples": f"{h.hexdigest()[:16]} ({len(files)} files)",
                                   "points": points}
    return out


def same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


def relative(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 where both are 0 or both nan)."""
    if same(a, b):
        return 0.0
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store_a")
    ap.add_argument("store_b")
    ap.add_argument("--experiment", default="same-seed")
    ap.add_argument("--close", default="", help="Comma list of metrics allowed to differ within --rel (said, per method).")
    ap.add_argument("--rel", type=float, default=1e-6, help="Relative bound for the --close metrics.")
    args = ap.parse_args()
    close = {k for k in args.close.split(",") if k}
    a, b = runs(args.store_a, args.experiment), runs(args.store_b, args.experiment)
    ok = set(a) == set(b) and bool(a)
    print("| method | EMA sha256 (16) | samples sha256 | metric points | identical | new in B |")
    print("|---|---|---|---|---|---|")
    for m in sorted(set(a) | set(b)):
        if m not in a or m not in b:
            print(f"| {m} | only in {'A' if m in a else 'B'} |")
            continue
        pa, pb = a[m]["points"], b[m]["points"]
        diff = [k for k in pa if k not in pb or not same(pa[k], pb[k])]
        near = {}  # metric -> largest relative difference, for the --close metrics within --rel
        for k in [k for k in diff if k in pb and k[0].split("/")[-1].rsplit("_n", 1)[0] in close]:
            if relative(pa[k], pb[k]) <= args.rel:
                near[k[0]] = max(near.get(k[0], 0.0), relative(pa[k], pb[k]))
                diff.remove(k)
        new = sorted({k[0] for k in pb if k not in pa})
        equal = not diff and a[m]["ema"] == b[m]["ema"] and a[m]["samples"] == b[m]["samples"]
        ok &= equal
        ema = a[m]["ema"] if a[m]["ema"] == b[m]["ema"] else f"{a[m]['ema']} / {b[m]['ema']}"
        smp = a[m]["samples"] if a[m]["samples"] == b[m]["samples"] else f"{a[m]['samples']} / {b[m]['samples']}"
        print(f"| {m} | {ema} | {smp} | {len(pa)} | {equal} | {', '.join(new)} |")
        for k in diff[:5]:
            print(f"|   differs: {k[0]} at step {k[1]} | {pa[k]} | {pb.get(k)} |")
        if near:
            print(f"|   within {args.rel:g}: " + ", ".join(f"{k} (largest relative difference {v:.1e})" for k, v in sorted(near.items())) + " |")
    tail = f" but {', '.join(sorted(close))} within {args.rel:g}" if close else ""
    print(f"every method identical{tail}" if ok else "DIFFERENT (or no runs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
