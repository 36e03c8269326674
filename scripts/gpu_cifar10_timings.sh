#!/usr/bin/env bash
# GPU figures for issue 25 (the cifar10 profile, DDPM++ U-Net ~56M), as one script: sized for under 7 minutes on
# one H100/H200 including torch.compile warm-up; every stage has its own time limit, so an overrun cuts that stage
# short (its partial output is kept) and the next one still runs.
#   bash scripts/gpu_cifar10_timings.sh            # from the repository root; files go to $OUT (default results/gpu/cifar10-<device>)
# Nothing is downloaded: the CIFAR-10 archive is a stand-in in the official format (50,000 structured random
# images, tests/cifar10_format.py) and Inception a randomly initialised network of the real shape, so the
# timings are the real ones and the FIDs mean nothing.
# Needs, beyond torch / numpy / pandas / seaborn / scikit-learn / typer: torch-fidelity (installed from $WHEELS when
# missing; `pip download --no-deps -d results/gpu/wheels torch-fidelity==0.4.0`; its dependencies scipy, Pillow and
# torchvision come with the H200 image). No MLflow, Ray, clean-fid or diffusers: training and evaluation go through
# scripts/eval_pipeline_check.py (the harness's Trainer and Evaluator without the tracking store).
#
# Stages and outputs (at most 6 files):
#   device.txt          GPU, versions, commit
#   speed-compiled.txt  bench speed --profile cifar10 (bf16, compile) for flow matching (SPEED_METHODS; each method is
#                       one more compile of ~1 min): training ms/step, share of the bf16 peak, U-Net params and
#                       FLOPs; evaluation sampler rows/s at n = 1 and 128 (compiled), Inception images/s and the
#                       FID-50K wall time estimates. Another method's compiled step = this x its ratio below
#   speed-methods.txt   bench speed for every method that runs offline (not CFD / RDD: they need ResNet-18 weights),
#                       bf16 without compile (no compile time for 9 methods): step times and ratios to flow matching
#   train-eval.txt      flow matching and the shortcut trained TRAIN_STEPS steps (bf16, the profile's settings with
#                       compile off), then FID-N_EVAL at n = EVAL_STEPS through the Evaluator (bf16), estimate vs measured
#   timing.txt          seconds per stage
# Knobs (defaults = the real run; the CPU dry run in README.md shrinks them):
#   IMAGES=10000 (per batch; 5 batches) ROUNDS=3 STEPS=5 SPEED_METHODS=flow_matching ROUNDS_ALL=2 STEPS_ALL=2
#   TRAIN_STEPS=200 TRAIN_COMPILE=false N_EVAL=2000 EVAL_STEPS=1,2,4 METHODS_ALL=... T_SPEED=160 T_ALL=100 T_TRAIN=130
#   EXTRA_SET="" PY=python WHEELS OUT
set -uo pipefail
IMAGES=${IMAGES:-10000}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-5}
ROUNDS_ALL=${ROUNDS_ALL:-2}
STEPS_ALL=${STEPS_ALL:-2}
TRAIN_STEPS=${TRAIN_STEPS:-200}
N_EVAL=${N_EVAL:-2000}
EVAL_STEPS=${EVAL_STEPS:-1,2,4}
SPEED_METHODS=${SPEED_METHODS:-flow_matching}
TRAIN_COMPILE=${TRAIN_COMPILE:-false}
METHODS_ALL=${METHODS_ALL:-flow_matching,shortcut,meanflow,consistency_training,consistency_distillation,progressive,reflow,live_reflow,diffusion}
T_SPEED=${T_SPEED:-160}
T_ALL=${T_ALL:-100}
T_TRAIN=${T_TRAIN:-130}
EXTRA_SET=${EXTRA_SET:-}
PY=${PY:-python}
WHEELS=${WHEELS:-results/gpu/wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BENCH_OFFLINE=1
BENCH="$PY -m bench.cli"

if ! $PY -c "import torch_fidelity" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" torch-fidelity 2>&1 | tail -3
fi
DEVICE=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
OUT=${OUT:-results/gpu/cifar10-$(echo "$DEVICE" | tr ' /' '__')}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
{
  echo "device: $DEVICE"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torch-fidelity', torch_fidelity.__version__)"
  echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "date: $(date -u +%FT%TZ)"
  echo "knobs: IMAGES=$IMAGES ROUNDS=$ROUNDS STEPS=$STEPS SPEED_METHODS=$SPEED_METHODS TRAIN_COMPILE=$TRAIN_COMPILE ROUNDS_ALL=$ROUNDS_ALL STEPS_ALL=$STEPS_ALL TRAIN_STEPS=$TRAIN_STEPS N_EVAL=$N_EVAL EVAL_STEPS=$EVAL_STEPS EXTRA_SET=$EXTRA_SET"
} 2>&1 | tee "$OUT/device.txt"
SECONDS=0
stage() { echo "$1: $2 s (limit $3 s, exit $4)" | tee -a "$OUT/timing.txt"; }

# 1. stand-ins: the archive in the official format, a random-weight Inception of the real shape
$PY -m tests.cifar10_format "$WORK/cifar-10-python.tar.gz" "$IMAGES" || exit 1
$PY -c "import sys; from bench.speed import write_random_inception; write_random_inception(sys.argv[1])" "$WORK/inception.pth" || exit 1
DATA="cifar10:$WORK/cifar-10-python.tar.gz"
COMMON="--set eval.inception_weights=$WORK/inception.pth"
stage "stand-ins" "$SECONDS" "-" 0

# 2. the profile as it trains (bf16, compile): flow matching (SPEED_METHODS), evaluation compiled
T0=$SECONDS
timeout "$T_SPEED" $BENCH speed --profile cifar10 --data "$DATA" $COMMON --methods "$SPEED_METHODS" \
    --rounds "$ROUNDS" --steps "$STEPS" $EXTRA_SET 2>&1 | grep --line-buffered -v "^W1\|UserWarning\|FutureWarning\|warnings.warn" | tee "$OUT/speed-compiled.txt"
RC=${PIPESTATUS[0]}; stage "speed-compiled" $((SECONDS - T0)) "$T_SPEED" "$RC"

# 3. every method that runs offline, without compile: step-time ratios (reflow's pairs cut to 256)
T0=$SECONDS
timeout "$T_ALL" $BENCH speed --profile cifar10 --data "$DATA" $COMMON --methods "$METHODS_ALL" \
    --rounds "$ROUNDS_ALL" --steps "$STEPS_ALL" --set train.compile=false --set eval.compile=false \
    --set num_pairs=256 $EXTRA_SET 2>&1 | grep --line-buffered -v "^W1\|UserWarning\|FutureWarning\|warnings.warn" | tee "$OUT/speed-methods.txt"
RC=${PIPESTATUS[0]}; stage "speed-methods" $((SECONDS - T0)) "$T_ALL" "$RC"

# 4. a short training of flow matching and the shortcut (bf16; compile off unless TRAIN_COMPILE=true: one compile
#    per method would take most of the budget), then FID-N_EVAL at EVAL_STEPS (bf16) through the Evaluator
T0=$SECONDS
timeout "$T_TRAIN" $PY scripts/eval_pipeline_check.py --profile cifar10 --method flow_matching,shortcut --steps "$TRAIN_STEPS" \
    --precisions bf16 --eval-steps "$EVAL_STEPS" --set "data.spec=$DATA" --set "eval.inception_weights=$WORK/inception.pth" \
    --set "eval.num_samples=$N_EVAL" --set train.lr_warmup=0 --set train.checkpoint_every=100000 \
    --set "train.compile=$TRAIN_COMPILE" --set "eval.compile=$TRAIN_COMPILE" \
    $EXTRA_SET 2>&1 | grep --line-buffered -v "^W1\|UserWarning\|FutureWarning\|warnings.warn" | tee "$OUT/train-eval.txt"
RC=${PIPESTATUS[0]}; stage "train-eval" $((SECONDS - T0)) "$T_TRAIN" "$RC"
echo "wrote $OUT in $SECONDS s" | tee -a "$OUT/timing.txt"
