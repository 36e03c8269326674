#!/usr/bin/env bash
# GPU figures for issues 5 and 11, as one script: about 6 minutes on one H100/H200 (budget: under 10).
#   bash scripts/gpu_speed_and_eval_check.sh            # from the repository root
# Writes results/gpu/<device>/{device,speed-dit-b2,digits-dit-s2-*,eval-check}.txt.
# Nothing is downloaded: the SD-VAE and Inception stand-ins are randomly initialised networks of the
# real architectures (same speed, meaningless features), so the DiT-B/2 figures are timings, not FIDs;
# the digits FIDs are real (the shipped digits classifier).
# Packages the device may lack (torch-fidelity, diffusers) are installed from $WHEELS (results/gpu/wheels).
# Environment knobs (defaults = the real run; the CPU dry run in README.md shrinks them):
#   MODEL=DiT-B/2 RES=256 IMAGES=256 ROUNDS=3 STEPS=5 SMALL=DiT-S/2 CHECK_STEPS=3000 EXTRA_SET="" SMALL_SET=""
set -uo pipefail
MODEL=${MODEL:-DiT-B/2}
RES=${RES:-256}
IMAGES=${IMAGES:-256}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-5}
SMALL=${SMALL:-DiT-S/2}
CHECK_STEPS=${CHECK_STEPS:-3000}
EXTRA_SET=${EXTRA_SET:-}
SMALL_SET=${SMALL_SET:-}
PY=${PY:-python}
WHEELS=${WHEELS:-results/gpu/wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH="$PY -m bench.cli"

if ! $PY -c "import torch_fidelity, diffusers" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" torch-fidelity diffusers 2>&1 | tail -3
fi
DEVICE=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
OUT=${OUT:-results/gpu/$(echo "$DEVICE" | tr ' /' '__')}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
{
  echo "device: $DEVICE"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch, diffusers, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'torch-fidelity', torch_fidelity.__version__)"
  echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "date: $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/device.txt"
SECONDS=0

# 1. stand-ins: an SD-VAE-shaped AutoencoderKL, an Inception-shaped state dict, random RGB images -> latents
$PY - "$WORK" "$RES" "$IMAGES" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from bench.speed import write_random_inception

work, res, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
# the config of stabilityai/sd-vae-ft-mse (the paper's VAE), random weights
AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=res, scaling_factor=0.18215).save_pretrained(work / "vae")
write_random_inception(work / "inception.pth")
rng = np.random.default_rng(0)
for i in range(count):
    cls = work / "images" / f"class{i % 10}"
    cls.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(cls / f"{i:05d}.png")
PY
$BENCH prepare-latents --data "imagefolder:$WORK/images" --vae "$WORK/vae" --out "$WORK/latents" \
    --resolution "$RES" --batch-size 64 --quiet > "$WORK/prepare.txt" 2>&1 || cat "$WORK/prepare.txt"
echo "[$SECONDS s] stand-ins ready"

# 2. the paper's ImageNet-256 settings (bf16, compile, batch 256, CFG 1.5) on those 32x32x4 latents: training
#    step times, then the whole evaluation: sampler rows/s and share of peak at eval batch 500 (n = 1 and n = M
#    with CFG; eval.precision auto = bf16, eval.compile on), VAE decoding (bf16) and Inception images/s, and the
#    FID-50K wall time at n in {1, 4, 128} and at every n beside the compute floor
$BENCH speed --profile imagenet256 --model "$MODEL" --data "latents:$WORK/latents" \
    --set "eval.inception_weights=$WORK/inception.pth" --methods flow_matching,shortcut \
    --rounds "$ROUNDS" --steps "$STEPS" $EXTRA_SET 2>&1 | tee "$OUT/speed-dit-b2.txt"
echo "[$SECONDS s] speed DiT-B/2 done"

# 3. the small model on digits: training steps/s before (fp32, no compile) and after (compile with CUDA graphs)
$BENCH speed --profile digits --model "$SMALL" --methods flow_matching,shortcut --rounds "$ROUNDS" --steps 20 \
    --set train.compile=false $SMALL_SET 2>&1 | tee "$OUT/digits-dit-s2-before.txt"
echo "[$SECONDS s] digits before done"
$BENCH speed --profile digits --model "$SMALL" --methods flow_matching,shortcut --rounds "$ROUNDS" --steps 20 \
    --set train.compile=true --set train.compile_mode=reduce-overhead --set eval.compile=true \
    --set eval.compile_mode=reduce-overhead $SMALL_SET 2>&1 | tee "$OUT/digits-dit-s2-after.txt"
echo "[$SECONDS s] digits after done"

# 4. end to end on digits with the small model: train with CUDA graphs, then FID at n = 1, 4, M in fp32 (TF32)
#    and bf16, compiled (same noise), with the evaluator's estimate against the measured time
$PY scripts/eval_pipeline_check.py --method shortcut --model "$SMALL" --steps "$CHECK_STEPS" \
    --set train.compile=true --set train.compile_mode=reduce-overhead --set eval.compile=true $SMALL_SET \
    2>&1 | grep -v "^W1\|UserWarning" | tee "$OUT/eval-check.txt"
echo "[$SECONDS s] eval check done"
echo "wrote $OUT in $SECONDS s"
