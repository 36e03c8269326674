#!/usr/bin/env bash
# Same seed, same numbers, before and after a change that claims none: every method on the digits
# profile, seed 0, 40 training steps, 256 samples per n, one thread, in REV's tree (a temporary git
# worktree) and in this checkout's, each into its own store; then scripts/same_seed.py compares EMA
# hashes, samples and every logged metric point. About 3 minutes per tree on 2 CPU cores.
#
#   scripts/same_seed.sh 7edd239 [OUT_DIR]      # exit 0: every method identical
# Environment: PYTHON (default python); SAME_SEED_ARGS (passed to same_seed.py, e.g.
# "--close fid,kid,kid_std --rel 1e-6" where a change reorders a distance's sums and says so).
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 REV [OUT_DIR]" >&2; exit 2; }
REV=$1; OUT=$(realpath -m "${2:-$(mktemp -d)}"); PYTHON=${PYTHON:-python}
HERE=$(git rev-parse --show-toplevel)
git -C "$HERE" rev-parse --verify -q "$REV^{commit}" >/dev/null || { echo "error: $REV is not a commit" >&2; exit 2; }
mkdir -p "$OUT"; OLD="$OUT/tree-$REV"
git -C "$HERE" worktree add --detach "$OLD" "$REV" >/dev/null
trap 'git -C "$HERE" worktree remove --force "$OLD"' EXIT
for side in "before:$OLD" "after:$HERE"; do
  name=${side%%:*}; root=${side#*:}
  for m in flow_matching shortcut meanflow diffusion consistency_training live_reflow progressive \
           consistency_distillation reflow cfd rdd; do
    extra=(); [[ $m == reflow ]] && extra=(--set method.num_pairs=2048)
    (cd "$root" && PYTHONPATH="$root" BENCH_STORE="$OUT/store-$name" "$PYTHON" -m bench.cli run -q -m "$m" \
      -e same-seed --seed 0 --set train.steps=40 --set train.threads=1 --set train.checkpoint_every=20 \
      --set train.log_every=10 --set eval.num_samples=256 --set eval.batch_size=256 "${extra[@]}" \
      > "$OUT/$name.$m.log" 2>&1) || { echo "error: $m failed in the $name tree, see $OUT/$name.$m.log" >&2; exit 1; }
    echo "$name $m done"
  done
done
PYTHONPATH="$HERE" "$PYTHON" "$HERE/scripts/same_seed.py" "$OUT/store-before" "$OUT/store-after" --experiment same-seed ${SAME_SEED_ARGS:-}
