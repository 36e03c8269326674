#!/usr/bin/env bash
# Issue 23's digits runs that a shared 2-core session could not afford (about 5 min each, 15 runs):
# per seed, one flow-matching teacher shared by every distilled run of that seed (paired: same seed,
# same evaluation noise, same teacher), then
#   progressive, cfg = baked    at cfg_scale W  (the authors' code; the default)
#   progressive, cfg = sampling at cfg_scale W  (CFG at every sampling step; logged as a deviation)
#   cfd and rdd, final_steps = 4                (the 4-step students the CFD / RDD papers compare)
# and then `bench report` on the experiment. The digits profile has cfg_scale 1 (where baked and
# sampling are the same model), so the PD pair runs at W (default 1.5, the imagenet256 profile's).
#
# Usage: scripts/run_distillation_variants.sh [--seeds "0 1 2"] [--experiment digits-distillation-variants] [--cfg-scale 1.5]
#                                [--profile digits] [--teachers-from EXPERIMENT] [--threads N]
#                                [--out DIR] [--dry-run]
# --dry-run prints the commands (teacher ids as FM_<seed>) and runs nothing.
# --teachers-from EXPERIMENT: no new teachers; each seed distils from the newest finished flow-matching
#   run of that seed in EXPERIMENT (the committed results/digits rows: --experiment digits-regen
#   --teachers-from digits-regen --threads 1 --out results/digits, after scripts/regenerate_digits.sh).
# --threads N: train.threads of every run; --out DIR: the report's folder.
# BENCH overrides the command (default: python -m bench.cli, run from the repository root).
set -euo pipefail

SEEDS="0 1 2"
EXPERIMENT="digits-distillation-variants"
CFG_SCALE="1.5"
PROFILE="digits"
TEACHERS_FROM=""
THREADS=""
OUT=""
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) SEEDS="$2"; shift 2 ;;
        --experiment) EXPERIMENT="$2"; shift 2 ;;
        --cfg-scale) CFG_SCALE="$2"; shift 2 ;;
        --profile) PROFILE="$2"; shift 2 ;;
        --teachers-from) TEACHERS_FROM="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) echo "run_distillation_variants.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
    esac
done
BENCH="${BENCH:-python -m bench.cli}"
PYTHON="${PYTHON:-python}"
if [ -n "$THREADS" ] && ! [[ "$THREADS" =~ ^[1-9][0-9]*$ ]]; then
    echo "run_distillation_variants.sh: --threads takes a positive integer, got '$THREADS'" >&2; exit 2
fi

teacher_of() {  # the newest finished flow-matching run of seed $1 in experiment $2
    $PYTHON "$(dirname "$0")/teacher_of.py" "$2" "$1"
}

bench_run() {  # bench_run ARGS...: print the command; run it unless --dry-run; its run id in LAST_RUN_ID
    echo "$BENCH run $*"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    local log
    log=$(mktemp)
    $BENCH run "$@" --quiet 2>&1 | tee "$log" >&2
    LAST_RUN_ID=$(sed -n 's/^run \([0-9a-f]*\) in experiment .*/\1/p' "$log" | tail -n 1)
    rm -f "$log"
    if [ -z "$LAST_RUN_ID" ]; then
        echo "run_distillation_variants.sh: no run id in the output of: $BENCH run $*" >&2
        exit 1
    fi
}

for S in $SEEDS; do
    COMMON=(-p "$PROFILE" -e "$EXPERIMENT" --seed "$S")
    [ -n "$THREADS" ] && COMMON+=(--set "train.threads=$THREADS")
    if [ -z "$TEACHERS_FROM" ]; then
        LAST_RUN_ID="FM_$S"
        bench_run -m flow_matching "${COMMON[@]}"
        TEACHER="$LAST_RUN_ID"
    elif [ "$DRY_RUN" = 1 ]; then
        TEACHER="FM_$S"
    else
        TEACHER=$(teacher_of "$S" "$TEACHERS_FROM")
        if [ -z "$TEACHER" ]; then
            echo "run_distillation_variants.sh: no finished flow_matching run of seed $S in experiment $TEACHERS_FROM" >&2
            exit 1
        fi
    fi
    bench_run -m progressive "${COMMON[@]}" --set "teacher=$TEACHER" --set "cfg_scale=$CFG_SCALE" --set cfg=baked
    bench_run -m progressive "${COMMON[@]}" --set "teacher=$TEACHER" --set "cfg_scale=$CFG_SCALE" --set cfg=sampling
    bench_run -m cfd "${COMMON[@]}" --set "teacher=$TEACHER" --set final_steps=4
    bench_run -m rdd "${COMMON[@]}" --set "teacher=$TEACHER" --set final_steps=4
done
REPORT=(report -e "$EXPERIMENT")
[ -n "$OUT" ] && REPORT+=(--out "$OUT")
echo "$BENCH ${REPORT[*]}"
if [ "$DRY_RUN" = 0 ]; then
    $BENCH "${REPORT[@]}"
fi
