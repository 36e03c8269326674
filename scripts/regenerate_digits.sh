#!/usr/bin/env bash
# Regenerate results/digits/ on ONE commit: every method of the digits profile, 5 seeds for flow
# matching, the profile's shortcut and MeanFlow, 3 for the rest; the distilling methods (PD, CFD,
# RDD, consistency distillation, reflow) from the flow-matching run of their own seed; then
# `bench report` into the output folder (table.md, plots, metrics.csv with each run's git_commit,
# paired.md / paired.csv).
#
# About 48 runs of 4-9 minutes each on 2 CPU cores (4-6 hours), one at a time. Runs go to the
# tracking store in $BENCH_STORE (default results/store) under --experiment; a run that fails stops
# the script (set -e); rerun with --from LABEL:SEED to continue at that run.
#
#   scripts/regenerate_digits.sh --dry-run            # print every command, run nothing
#   scripts/regenerate_digits.sh --experiment digits-regen --out results/digits
#
# Options:
#   --dry-run            print the commands (teachers as <flow_matching seed S>) and exit
#   --experiment NAME    MLflow experiment (default digits-regen: a fresh one, never mixed with older runs)
#   --out DIR            report folder (default results/digits)
#   --seeds-main "S..."  seeds of flow matching, the profile's shortcut and MeanFlow (default "0 1 2 3 4")
#   --seeds-rest "S..."  seeds of every other method (default "0 1 2"; each must be among --seeds-main,
#                        since the distilling methods need that seed's flow-matching teacher)
#   --from LABEL:SEED    skip the runs before this one (the flow-matching teachers are looked up in the store)
#   --allow-dirty        run from a working tree with uncommitted changes (the rows then name no one commit)
#   --only "LABEL..."    run only these configs (e.g. two streams side by side on 2 cores, one thread each:
#                        --only "flow_matching progressive cfd rdd consistency_distillation reflow" in one,
#                        the other labels in the other; the distilling labels need flow_matching in theirs
#                        or its finished runs already in the store)
#   --threads N          torch threads per run (train.threads; default: the profile's)
# Environment: PYTHON (default python), BENCH (default "$PYTHON -m bench.cli"), BENCH_STORE, and what
# bench itself reads.
set -euo pipefail

usage() { echo "error: $1 (see the header of $0)" >&2; exit 2; }

DRY=0; EXPERIMENT="digits-regen"; OUT="results/digits"; SEEDS_MAIN="0 1 2 3 4"; SEEDS_REST="0 1 2"
FROM=""; ALLOW_DIRTY=0; ONLY=""; THREADS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --allow-dirty) ALLOW_DIRTY=1; shift ;;
    --experiment|--out|--seeds-main|--seeds-rest|--from|--only|--threads)
      [[ $# -ge 2 && -n "$2" ]] || usage "$1 needs a value"
      case "$1" in
        --experiment) EXPERIMENT="$2" ;; --out) OUT="$2" ;; --seeds-main) SEEDS_MAIN="$2" ;;
        --seeds-rest) SEEDS_REST="$2" ;; --from) FROM="$2" ;; --only) ONLY="$2" ;; --threads) THREADS="$2" ;;
      esac
      shift 2 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done
for s in $SEEDS_MAIN $SEEDS_REST; do [[ "$s" =~ ^[0-9]+$ ]] || usage "seeds are non-negative integers, got '$s'"; done
[[ -n "${SEEDS_MAIN// }" && -n "${SEEDS_REST// }" ]] || usage "--seeds-main and --seeds-rest need at least one seed each"
for s in $SEEDS_REST; do
  [[ " $SEEDS_MAIN " == *" $s "* ]] || usage "seed $s of --seeds-rest is not in --seeds-main: its distilling runs would have no flow-matching teacher"
done

# label | method | seeds (main/rest) | teacher (yes/no) | --set arguments
CONFIGS=(
  "flow_matching|flow_matching|main|no|"
  "shortcut|shortcut|main|no|"
  "meanflow|meanflow|main|no|"
  "shortcut_paper|shortcut|rest|no|--set levels=uniform --set bootstrap_weight=1"
  "shortcut_authors|shortcut|rest|no|--set recipe=authors --set levels=authors --set bootstrap_weight=1"
  "diffusion|diffusion|rest|no|"
  "consistency_training|consistency_training|rest|no|"
  "live_reflow|live_reflow|rest|no|"
  "progressive|progressive|rest|yes|"
  "cfd|cfd|rest|yes|"
  "rdd|rdd|rest|yes|"
  "consistency_distillation|consistency_distillation|rest|yes|"
  "reflow|reflow|rest|yes|"
)
[[ -z "$THREADS" || "$THREADS" =~ ^[1-9][0-9]*$ ]] || usage "--threads takes a positive integer, got '$THREADS'"
for o in $ONLY; do
  known=0
  for c in "${CONFIGS[@]}"; do [[ "$o" == "${c%%|*}" ]] && known=1; done
  [[ $known == 1 ]] || usage "--only: unknown label '$o' (flow_matching, shortcut, meanflow, ..., reflow)"
done
if [[ -n "$FROM" ]]; then
  known=0
  for c in "${CONFIGS[@]}"; do [[ "${FROM%%:*}" == "${c%%|*}" ]] && known=1; done
  [[ $known == 1 && "$FROM" =~ :[0-9]+$ ]] || usage "--from takes LABEL:SEED with LABEL one of the configs (flow_matching, shortcut, ..., reflow), got '$FROM'"
fi

PYTHON="${PYTHON:-python}"
BENCH="${BENCH:-$PYTHON -m bench.cli}"
COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ $DRY == 0 && $ALLOW_DIRTY == 0 ]] && [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  usage "the working tree has uncommitted changes: commit them (every row must name its commit) or pass --allow-dirty"
fi
echo "# results/digits on commit $COMMIT, experiment $EXPERIMENT -> $OUT"

declare -A TEACHER
skipping=$([[ -n "$FROM" ]] && echo 1 || echo 0)

teacher_of() {  # the finished flow-matching run of seed $1 in the experiment (for --from after a stop)
  $PYTHON "$(dirname "$0")/teacher_of.py" "$EXPERIMENT" "$1"
}

for c in "${CONFIGS[@]}"; do
  IFS='|' read -r label method which needs sets <<<"$c"
  [[ -z "$ONLY" || " $ONLY " == *" $label "* ]] || continue
  seeds=$([[ $which == main ]] && echo "$SEEDS_MAIN" || echo "$SEEDS_REST")
  for s in $seeds; do
    if [[ $skipping == 1 ]]; then
      if [[ "$label:$s" == "$FROM" ]]; then skipping=0; else continue; fi
    fi
    args=(run -m "$method" -p digits --seed "$s" -e "$EXPERIMENT" -q)
    # shellcheck disable=SC2206
    [[ -n "$sets" ]] && args+=($sets)
    [[ -n "$THREADS" ]] && args+=(--set "train.threads=$THREADS")
    if [[ $needs == yes ]]; then
      t="${TEACHER[$s]:-}"
      if [[ -z "$t" && $DRY == 0 ]]; then t="$(teacher_of "$s")"; TEACHER[$s]="$t"; fi
      if [[ $DRY == 1 ]]; then t="${t:-<flow_matching seed $s>}"; fi
      [[ -n "$t" ]] || { echo "error: no finished flow_matching run of seed $s in $EXPERIMENT to distil from" >&2; exit 1; }
      args+=(--set "teacher=$t")
    fi
    printf '+ %s' "$BENCH"; printf ' %q' "${args[@]}"; echo  # quoted: each line can be pasted into a shell
    [[ $DRY == 1 ]] && continue
    log="$($BENCH "${args[@]}" | tee /dev/stderr)"
    if [[ $label == flow_matching ]]; then  # "run <id> in experiment ..." names the teacher of this seed
      TEACHER[$s]="$(sed -n 's/^run \([0-9a-f]\{32\}\) in experiment.*/\1/p' <<<"$log" | tail -1)"
    fi
  done
done
[[ $skipping == 1 ]] && usage "--from $FROM names no run of this plan (check the seeds)"
echo "+ $BENCH report -e $EXPERIMENT --out $OUT --ratio shortcut/flow_matching"
[[ $DRY == 1 ]] && exit 0
$BENCH report -e "$EXPERIMENT" --out "$OUT" --ratio shortcut/flow_matching
