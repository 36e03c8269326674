#!/usr/bin/env bash
# Digits (and smoke) shortcut runs that log the cheap during-training signals, for issue 35's evidence:
# the failure rule's confusion table (healthy: the profile's shortcut seeds 0-4 and smoke seeds 0-4;
# failing: the paper recipe seeds 0-4 and two forced divergences) and the early-signal ranking
# (k in {1/8, 1/4, 1/2} x M in {16, 32} x seeds 0-2 on digits). Two runs at a time, one thread each.
# Usage: scripts/run_signal_evidence.sh STORE [JOBS]   (STORE: a BENCH_STORE outside the repo)
set -euo pipefail
STORE=${1:?usage: run_signal_evidence.sh STORE [JOBS]}
JOBS=${2:-2}
BENCH=${BENCH:-bench}
mkdir -p "$STORE/logs"
DIGITS="--method shortcut --profile digits --experiment evidence-digits --set train.threads=1 --set train.eval_every=250 --set eval.during_steps=1,2,4 --set eval.during_samples=1000"
PAPER="--set levels=uniform --set bootstrap_weight=1"
{
  # in the order the evidence needs them: the rule's controls at seeds 0-2, the k grid at M = 32, seeds 3-4, then M = 16 (a configuration's seeds together)
  for s in 0 1 2 3 4; do echo "smoke-sc-s$s|--method shortcut --profile smoke --seed $s --experiment evidence-smoke --set train.threads=1 --set train.eval_every=200 --set eval.during_steps=1,2,4"; done
  for s in 0 1 2; do echo "profile-s$s|$DIGITS --seed $s"; echo "paper-s$s|$DIGITS --seed $s $PAPER"; done
  echo "forced-lr-s0|$DIGITS --seed 0 --set train.lr=2e-2 --set clip=0"
  echo "forced-live-s0|$DIGITS --seed 0 --set bootstrap_ema=false --set train.lr=5e-3"
  for s in 0 1 2; do for k in 1/8 1/2; do echo "k${k/\//_}-M32-s$s|$DIGITS --seed $s --set k=$k"; done; done
  for s in 3 4; do echo "profile-s$s|$DIGITS --seed $s"; echo "paper-s$s|$DIGITS --seed $s $PAPER"; done
  for k in 1/4 1/8 1/2; do for s in 0 1 2; do echo "k${k/\//_}-M16-s$s|$DIGITS --seed $s --set k=$k --set M=16"; done; done
} | while IFS='|' read -r name args; do
  [ -f "$STORE/logs/$name.log" ] && continue  # started before (finished, failed or running): not again
  printf '%s\0' "$name|$args"
done | xargs -0 -P "$JOBS" -I{} bash -c '
  name=${1%%|*}; args=${1#*|}
  BENCH_STORE='"$STORE"' OMP_NUM_THREADS=1 '"$BENCH"' run $args --quiet > "'"$STORE"'/logs/$name.log" 2>&1; rc=$?
  echo "$rc" > "'"$STORE"'/logs/$name.rc"; touch "'"$STORE"'/logs/$name.done"; echo "$(date +%T) $name rc=$rc"
' _ {}
