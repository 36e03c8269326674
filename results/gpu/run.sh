#!/usr/bin/env bash
# GPU figures for issue 5, as one script: about 5 minutes on one H100 (budget: under 10).
#   bash results/gpu/run.sh            # from the repository root, with the package installed
# Writes results/gpu/<device>/{device.txt,prepare-latents.txt,speed-dit-b2.txt,digits-shortcut.txt}.
# Nothing is downloaded: the SD-VAE and Inception stand-ins are randomly initialised networks of the
# real architectures (same speed, meaningless features), so every figure here is a timing, not a FID.
# Environment knobs (defaults = the real run; the CPU dry run in README.md shrinks them):
#   MODEL=DiT-B/2 RES=256 IMAGES=1024 ROUNDS=5 STEPS=10 DIGITS_STEPS=4000 EXTRA_SET=""
set -euo pipefail
MODEL=${MODEL:-DiT-B/2}
RES=${RES:-256}
IMAGES=${IMAGES:-1024}
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-10}
DIGITS_STEPS=${DIGITS_STEPS:-4000}
EXTRA_SET=${EXTRA_SET:-}
PY=${PY:-python}
BENCH=${BENCH:-bench}

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
} | tee "$OUT/device.txt"

# 1. stand-ins: an SD-VAE-shaped AutoencoderKL, an Inception-shaped state dict, random RGB images
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

# 2. the latent path on this device: encode the images once (images/s in the log)
$BENCH prepare-latents --data "imagefolder:$WORK/images" --vae "$WORK/vae" --out "$WORK/latents" \
    --resolution "$RES" --batch-size 64 --quiet 2>&1 | tee "$OUT/prepare-latents.txt"

# 3. bench speed: the paper's ImageNet-256 settings (bf16, torch.compile, batch 256, CFG 1.5) on those
#    latents (32x32x4 at RES=256); sampling at n = 1 with eval batch 500; decoding + Inception at RES
$BENCH speed --profile imagenet256 --model "$MODEL" --data "latents:$WORK/latents" \
    --set "eval.inception_weights=$WORK/inception.pth" --methods flow_matching,shortcut \
    --rounds "$ROUNDS" --steps "$STEPS" $EXTRA_SET 2>&1 | tee "$OUT/speed-dit-b2.txt"

# 4. a short digits run on this device: shortcut, then FID in the digits-classifier space at n = 1
BENCH_STORE="$WORK/store" $BENCH run --method shortcut --profile digits --set "train.steps=$DIGITS_STEPS" \
    --set eval.steps=1 --quiet 2>&1 | grep -v "INFO mlflow" | tee "$OUT/digits-shortcut.txt"
echo "wrote $OUT"
