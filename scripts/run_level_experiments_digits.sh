#!/bin/sh
# Issue 24's runs on the digits profile (2 CPU cores), one at a time, into $BENCH_STORE; then
#   bench report --experiment digits-paired --out results/digits-paired
#   bench report --experiment digits-levels-k --out results/digits-levels-k
#   bench report --experiment digits-levels-paper --out results/digits-levels-paper
set -e
B="${BENCH:-bench}"
# one torch thread per run: on 2 cores shared with other jobs, two threads wait on each other at every op
T="--set train.threads=1"
# (2) flow matching, the shortcut (profile knobs) and MeanFlow, seeds 0-2: paired_to_M against FID
for s in 0 1 2; do
  for m in flow_matching shortcut meanflow; do
    $B run --method "$m" --seed "$s" --experiment digits-paired --quiet $T
  done
done
# (1) the shortcut's k = 1/8, 1/4, 1/2 (sweeps/k.toml), seed 0: per-level losses per k
$B run --method shortcut --sweep k --experiment digits-levels-k --quiet $T
# the paper's recipe as published (uniform levels, weight 1), seed 0: scripts/shortcut_levels.py's finding
$B run --method shortcut --seed 0 --set levels=uniform --set bootstrap_weight=1 --experiment digits-levels-paper --quiet $T
