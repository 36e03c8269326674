#!/usr/bin/env bash
# Where a default digits run's wall time goes, phase by phase (bench.phases), before and after a change:
# the README's main job (flow matching, then the shortcut, default profile, one store shared by both, as a
# user runs them) in REV's tree (a temporary git worktree) and in this checkout's, interleaved (REV's flow
# matching, this checkout's, REV's shortcut, this checkout's), each tree into its own fresh store; then
# `bench speed` (flow matching and the shortcut) in this checkout; then scripts/profile_default_run.py
# writes OUT_DIR/phases.csv, runs.csv and profile.md (phases side by side, wall time against
# steps x bench speed's step time + the evaluator's own estimate). REV must have bench.phases (502542e on).
# About 25 minutes on 2 CPU cores.
#
#   scripts/profile_default_run.sh 502542e results/profile-digits [AFTER_REV]
# AFTER_REV: a commit to run as "after" (in its own worktree) instead of this checkout's files.
# Environment: PYTHON (default python), ROUNDS (default 1: each run once per tree), RUN_ARGS (extra
# `bench run` arguments, e.g. "--set train.steps=50" for a dry run of the script itself).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 REV OUT_DIR [AFTER_REV]" >&2; exit 2; }
REV=$1; OUT=$(realpath -m "$2"); AFTER_REV=${3:-}; PYTHON=${PYTHON:-python}; ROUNDS=${ROUNDS:-1}
HERE=$(git rev-parse --show-toplevel)
git -C "$HERE" rev-parse --verify -q "$REV^{commit}" >/dev/null || { echo "error: $REV is not a commit" >&2; exit 2; }
git -C "$HERE" cat-file -e "$REV:bench/phases.py" 2>/dev/null || { echo "error: $REV has no bench/phases.py (502542e and later)" >&2; exit 2; }
WORK=$(mktemp -d); OLD="$WORK/tree-$REV"
git -C "$HERE" worktree add --detach "$OLD" "$REV" >/dev/null
NEW=$HERE; AFTER_NAME="$(git -C "$HERE" rev-parse --short HEAD)$(git -C "$HERE" diff --quiet HEAD || echo +changes)"
if [[ -n $AFTER_REV ]]; then
  NEW="$WORK/tree-after"; AFTER_NAME=$(git -C "$HERE" rev-parse --short "$AFTER_REV")
  git -C "$HERE" worktree add --detach "$NEW" "$AFTER_REV" >/dev/null
fi
trap 'git -C "$HERE" worktree remove --force "$OLD"; [[ $NEW == "$HERE" ]] || git -C "$HERE" worktree remove --force "$NEW"; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
: > "$WORK/runs.txt"
for round in $(seq "$ROUNDS"); do
  for m in flow_matching shortcut; do
    for side in "before:$OLD" "after:$NEW"; do
      name=${side%%:*}; root=${side#*:}
      log="$WORK/$name.$m.$round.log"; start=$(date +%s%N)
      (cd "$root" && PYTHONPATH="$root" BENCH_STORE="$WORK/store-$name-$round" "$PYTHON" -m bench.cli run -q -m "$m" \
        ${RUN_ARGS:-} > "$log" 2>&1) || { echo "error: $m failed in the $name tree, see $log" >&2; cat "$log" >&2; exit 1; }
      wall=$(( ($(date +%s%N) - start) / 1000000 ))  # ms
      echo "$name $m $round $wall $WORK/store-$name-$round" >> "$WORK/runs.txt"
      echo "$name $m round $round: $(( wall / 1000 )) s"
    done
  done
done
(cd "$NEW" && PYTHONPATH="$NEW" BENCH_STORE="$WORK/store-speed" "$PYTHON" -m bench.cli speed --methods flow_matching,shortcut \
  --rounds "${SPEED_ROUNDS:-7}" --steps 20 > "$WORK/speed.txt" 2>&1) || { cat "$WORK/speed.txt" >&2; exit 1; }
cp "$WORK/speed.txt" "$OUT/speed.txt"
PYTHONPATH="$HERE" "$PYTHON" "$HERE/scripts/profile_default_run.py" "$WORK/runs.txt" "$WORK/speed.txt" "$OUT" \
  --before "$REV" --after "$AFTER_NAME"
