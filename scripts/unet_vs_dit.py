"""Training-step time of a U-Net against a DiT of similar forward FLOPs, side by side in one process.

Both train flow matching on the same profile's data with the same settings (the harness's Trainer), in
interleaved rounds (the order alternates), the median step time per model and the median over rounds of
U-Net time / DiT time. Issue 25's must-show on CPU:

    python scripts/unet_vs_dit.py --profile digits --unet UNet-tiny --dit-hidden 144 --dit-depth 4 --rounds 9 --steps 10
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.config import resolve
from bench.data import load_dataset
from bench.evaluation.evaluate import sync
from bench.models import count_parameters
from bench.speed import _seconds, build_trainer, forward_flops
from bench.config import pick_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="digits")
    ap.add_argument("--method", default="flow_matching")
    ap.add_argument("--unet", default="UNet-tiny")
    ap.add_argument("--dit-hidden", type=int, default=144)
    ap.add_argument("--dit-depth", type=int, default=4)
    ap.add_argument("--dit-heads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()

    cfgs = {
        "unet": resolve(a.method, a.profile, ["model.arch=unet", f"model.preset={a.unet}", *a.set]),
        "dit": resolve(a.method, a.profile, ["model.arch=dit", "model.preset=", f"model.hidden={a.dit_hidden}",
                                             f"model.depth={a.dit_depth}", f"model.heads={a.dit_heads}", *a.set]),
    }
    base = cfgs["unet"]
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)
    device = pick_device(base.train.device)
    data = load_dataset(base.data)
    trainers = {k: build_trainer(c, data, device) for k, c in cfgs.items()}
    for k, tr in trainers.items():
        tr.model.train()
        tr.run_steps(2)  # warm-up
        sync(device)
        tr.discard_losses()
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(a.rounds):
        order = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
        for k in order:
            times[k].append(_seconds(lambda: trainers[k].run_steps(a.steps), device) / a.steps)
            trainers[k].discard_losses()
    print(f"{a.method} on {data.name} {'x'.join(map(str, data.shape))}, batch {base.train.batch_size}, "
          f"{torch.get_num_threads()} threads, device {device}; {a.rounds} interleaved rounds x {a.steps} steps")
    print(f"{'model':44s} {'params':>8s} {'MFLOP/fwd':>10s} {'ms/step (median)':>17s} {'min':>7s} {'max':>7s}")
    for k, tr in trainers.items():
        m = cfgs[k].model
        name = f"U-Net {m.preset}" if k == "unet" else f"DiT hidden {m.hidden}, depth {m.depth}, heads {m.heads}, patch {m.patch}"
        fl = forward_flops(tr.model, data.shape, data.num_classes, device)
        t = times[k]
        print(f"{name:44s} {count_parameters(tr.model) / 1e6:7.3f}M {fl / 1e6:10.2f} {statistics.median(t) * 1e3:17.1f} "
              f"{min(t) * 1e3:7.1f} {max(t) * 1e3:7.1f}")
    ratios = [u / d for u, d in zip(times["unet"], times["dit"])]
    print(f"U-Net / DiT step time: median over rounds {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
