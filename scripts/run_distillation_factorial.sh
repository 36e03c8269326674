#!/usr/bin/env bash
# Why CFD and RDD collapsed on the one-commit digits table (results/digits at 721f3e2: 1-step students at FID
# 22-1,146 where PD reads 6-9): each factor changed on its own from the collapse's setting, per seed, on that
# seed's own flow-matching teacher (trained here first; its checkpoint hash is in the students' teacher_sha256):
#   collapse   the disjoint probe (shipped), the profile's stage optimiser, final_steps = 1   (the 721f3e2 setting)
#   probe      the earlier probe (bench/assets/digits_probe.npz before 6426acd: trained on digits the FID
#              classifier also trained on), otherwise as collapse
#   optimiser  the released stage optimiser (a fresh Adam at 5e-5, cosine to 0, clip 1.0, no EMA), otherwise as collapse
#   steps      final_steps = 4, otherwise as collapse
#   default    today's defaults: disjoint probe, released optimiser, final_steps = 4
#   threads    as collapse, on two threads (the 721f3e2 runs used one where the earlier, healthier ones used two)
# for cfd and rdd, one thread per run (the threads cell two), JOBS runs at a time (default 2); a seed's students wait for its teacher.
# CELLS (environment; default "collapse probe optimiser default steps threads") picks the cells and their order.
# Then: python scripts/distillation_factorial.py STORE  (the table).
# Usage: scripts/run_distillation_factorial.sh STORE [JOBS] [SEEDS]   (STORE: a BENCH_STORE outside the repo)
set -euo pipefail
STORE=${1:?usage: run_distillation_factorial.sh STORE [JOBS] [SEEDS]}
JOBS=${2:-2}
SEEDS=${3:-0 1 2}
BENCH=${BENCH:-bench}
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXP=distill-factorial
CELLS=${CELLS:-collapse probe optimiser default steps threads}
mkdir -p "$STORE/logs"
EARLIER="$STORE/digits_probe_earlier.npz"
[ -f "$EARLIER" ] || git -C "$ROOT" show 6426acd~1:bench/assets/digits_probe.npz > "$EARLIER"
COMMON="--profile digits --experiment $EXP --quiet"
{
  for s in $SEEDS; do echo "fm-s$s|$s|-"; done
  for cell in $CELLS; do  # a factor at a time over the seeds: stopped early, each finished cell has every seed
    for s in $SEEDS; do
      for m in cfd rdd; do echo "$m-$cell-s$s|$s|$m $cell"; done
    done
  done
} | while IFS='|' read -r name seed what; do
  [ -f "$STORE/logs/$name.log" ] && continue  # started before: not again
  printf '%s\0' "$name|$seed|$what"
done | xargs -0 -P "$JOBS" -I{} bash -c '
  IFS="|" read -r name seed what <<< "$1"
  store='"$STORE"'; log="$store/logs/$name.log"
  # claimed when it starts (two drivers on one store never run one run twice): a log or a claim means taken
  [ -f "$log" ] && exit 0
  mkdir "$store/logs/$name.claim" 2>/dev/null || exit 0
  if [ "$what" = "-" ]; then
    args="--method flow_matching --seed $seed"
  else
    read -r m cell <<< "$what"
    until [ -f "$store/logs/fm-s$seed.done" ]; do sleep 10; done
    teacher=$(BENCH_STORE=$store '"$PYTHON"' '"$ROOT"'/scripts/teacher_of.py '"$EXP"' "$seed")
    [ -n "$teacher" ] || { echo "no teacher for seed $seed" > "$log"; echo 1 > "$store/logs/$name.rc"; exit 0; }
    case $cell in
      default)   extra="" ;;
      collapse)  extra="--set stage_optimiser=profile --set final_steps=1" ;;
      probe)     extra="--set stage_optimiser=profile --set final_steps=1 --set classifier_weights='"$EARLIER"'" ;;
      optimiser) extra="--set final_steps=1" ;;
      steps)     extra="--set stage_optimiser=profile" ;;
      threads)   extra="--set stage_optimiser=profile --set final_steps=1" ;;
    esac
    args="--method $m --seed $seed --set teacher=$teacher $extra"
  fi
  threads=1; [ "${cell:-}" = threads ] && threads=2
  BENCH_STORE=$store OMP_NUM_THREADS=$threads '"$BENCH"' run $args '"$COMMON"' --set train.threads=$threads > "$log" 2>&1; rc=$?
  echo "$rc" > "$store/logs/$name.rc"; touch "$store/logs/$name.done"; echo "$(date +%T) $name rc=$rc"
' _ {}
