#!/bin/sh
# Issue 24's runs on the smoke profile (eight Gaussians, MLP, M = 128, 4,000 steps), one at a time:
# the digits runs (run.sh) took ~1.4 s per step on the shared 2 cores (load ~10), an hour per run.
#   bench report --experiment smoke-paired --out results/smoke-paired
#   bench report --experiment smoke-levels-k --out results/smoke-levels-k
#   bench report --experiment smoke-levels-knobs --out results/smoke-levels-knobs
set -e
B="${BENCH:-bench}"
# (2) flow matching, the shortcut and MeanFlow, seeds 0-2: paired_to_M against FID
for s in 0 1 2; do
  for m in flow_matching shortcut meanflow; do
    $B run --method "$m" --profile smoke --seed "$s" --experiment smoke-paired --quiet
  done
done
# (1) the shortcut's k = 1/8, 1/4, 1/2 (sweeps/k.toml), seed 0: per-level losses per k
$B run --method shortcut --profile smoke --sweep k --experiment smoke-levels-k --quiet
# the digits profiles' knobs (quarter_large levels, weight 8) against the paper's (smoke's default), seed 0
$B run --method shortcut --profile smoke --seed 0 --experiment smoke-levels-knobs --quiet
$B run --method shortcut --profile smoke --seed 0 --set levels=quarter_large --set bootstrap_weight=8 --experiment smoke-levels-knobs --quiet
