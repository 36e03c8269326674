"""Diagnostic: how self-consistent a trained run is, level by level.

    .venv/bin/python scripts/shortcut_levels.py RUN_ID [RUN_ID ...] [--samples 1000]

From the same noise and labels, samples with n = 1, 2, 4, ..., M steps (EMA weights, the run's own
sampler) and prints the mean squared gap per dimension between n and 2n steps and between n and M
steps. A perfect shortcut model has every gap 0; for flow matching the gaps are the Euler error.
A level whose gap stands out is the one the network fails to fit (its target is the 2n-step result)."""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_ids", nargs="+")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from bench import checkpoint as ckpt
    from bench.run import prepare
    from bench.session import checkpoint_dir, config_of_run
    from bench.sampling import sample

    torch.set_num_threads(1)
    for run_id in args.run_ids:
        cfg, _ = config_of_run(run_id)
        p = prepare(cfg, progress=False)
        state, _ = ckpt.load_latest(checkpoint_dir(run_id) / "last.pt")
        net = p.model
        net.load_state_dict(state["ema"])
        net.eval()
        g = torch.Generator().manual_seed(args.seed)
        x0 = torch.randn(args.samples, *p.data.shape, generator=g)
        y = (torch.randint(0, p.data.num_classes, (args.samples,), generator=g) if p.data.num_classes
             else torch.zeros(args.samples, dtype=torch.long))
        M, out, n = cfg.method.M, {}, 1
        with torch.no_grad():
            while n <= M:
                out[n] = sample(p.method, net, x0, y, n, torch.Generator().manual_seed(0))
                n *= 2
        print(f"run {run_id}: {cfg.method_name}, {cfg.data.spec}, {cfg.train.steps} steps, model.d_scale = {cfg.model.d_scale:g}; "
              f"EMA weights, {args.samples} samples, noise seed {args.seed}")
        print("     n   |x_n - x_2n|^2   |x_n - x_M|^2   (mean per dimension)")
        n = 1
        while n < M:
            gap2 = float((out[n] - out[2 * n]).pow(2).mean())
            gapM = float((out[n] - out[M]).pow(2).mean())
            print(f"{n:6d} {gap2:15.5f} {gapM:15.5f}")
            n *= 2


if __name__ == "__main__":
    main()
