"""Frozen image classifiers that methods distil through (CFD, RDD): logits, a pooled feature and a
spatial map, with gradients flowing to the input. Never the network FID/FD is measured in.

Which one a dataset uses, it declares (Dataset.classifier):
- digits-probe: the second digits classifier (bench/classifiers/probe.py), shipped with the package (digits);
- resnet18: torchvision's ResNet-18 (other images) with its ImageNet weights from a local file
  (method.classifier_weights, $BENCH_CLASSIFIER_WEIGHTS, or torch's hub cache under its usual name),
  else downloaded into that cache where the machine is online (hash prefix checked; $BENCH_OFFLINE=1 forbids it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1
RESNET18_URL = "https://download.pytorch.org/models/" + RESNET18_FILE
RESNET18_SHA256_PREFIX = RESNET18_FILE.split("-")[1].split(".")[0]  # torchvision names its files by their SHA-256's first digits
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INPUT_SIDE = 224  # the ImageNet weights' resolution: images are resized (bilinear, differentiable) to it; layer4's map is 7x7


@dataclass
class ClassifierOutput:
    """logits (B, K); h (B, C) pooled penultimate feature; m (B, C, H', W') spatial map (h = mean of m)."""

    logits: Tensor
    h: Tensor
    m: Tensor


class FrozenClassifier(nn.Module):
    """Model-space images (B, C, H, W) in [-1, 1] -> ClassifierOutput. Eval mode, no parameter gradients."""

    def __init__(self, name: str, sha256: str):
        super().__init__()
        self.name, self.sha256 = name, sha256

    def freeze(self) -> "FrozenClassifier":
        return self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenClassifier":
        return super().train(False)  # stays in eval mode whatever the caller does


class DigitsProbeClassifier(FrozenClassifier):
    def __init__(self, path: Path | None = None):
        from bench.files.checkpoint import state_hash
        from bench.classifiers.probe import WEIGHTS_PATH, load_probe

        net = load_probe(path or WEIGHTS_PATH)
        super().__init__("digits-probe", state_hash(net.state_dict()))
        self.net = net
        self.freeze()

    def forward(self, x: Tensor) -> ClassifierOutput:
        return ClassifierOutput(*self.net.parts(x))


class ResNet18Classifier(FrozenClassifier):
    """ImageNet ResNet-18 on the images resized to 224 px (its training resolution): layer4's 7x7 map, its average, fc."""

    def __init__(self, path: Path):
        import torchvision

        from bench.files.checkpoint import file_sha256, load

        net = torchvision.models.resnet18()
        state = load(path)  # weights_only: a file carrying a pickle payload is refused unexecuted
        try:
            net.load_state_dict(state)
        except Exception as e:
            raise BenchError(f"Classifier weights {path} are unreadable or not a torchvision ResNet-18 ({type(e).__name__}).") from None
        super().__init__("resnet18", file_sha256(path))
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.freeze()

    def forward(self, x: Tensor) -> ClassifierOutput:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        n = self.net
        a = ((x[:, :3] + 1) / 2 - self.mean) / self.std
        if a.shape[-2:] != (INPUT_SIDE, INPUT_SIDE):  # stride 32: a 32 px image would leave RDD a 1x1 map (no pixel relations)
            a = F.interpolate(a, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", align_corners=False, antialias=False)
        a = n.maxpool(n.relu(n.bn1(n.conv1(a))))
        m = n.layer4(n.layer3(n.layer2(n.layer1(a))))
        h = F.adaptive_avg_pool2d(m, 1).flatten(1)
        return ClassifierOutput(n.fc(h), h, m)


def find_resnet18_weights(configured: str, progress: bool = True) -> Path:
    """The ResNet-18 file: method.classifier_weights, $BENCH_CLASSIFIER_WEIGHTS, torch hub's cache, or
    downloaded into that cache ($BENCH_CLASSIFIER_URL or torchvision's URL, the file name's hash prefix
    checked as torch hub does; $BENCH_OFFLINE=1 forbids it), as the Inception weights are found."""
    from bench.files.download import download_checked

    for c in (configured, os.environ.get("BENCH_CLASSIFIER_WEIGHTS", "")):
        if c:
            p = Path(c).expanduser()
            if not p.is_file():
                raise BenchError(f"Classifier weights {p} do not exist.")
            return p.resolve()
    cache = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if cache.is_file():
        return cache
    if os.environ.get("BENCH_OFFLINE", "") not in ("", "0"):
        raise BenchError(f"The classifier these methods distil through needs torchvision's ResNet-18 weights {RESNET18_FILE}; "
                         f"BENCH_OFFLINE forbids downloading them: set method.classifier_weights or BENCH_CLASSIFIER_WEIGHTS "
                         f"to the file, or place it at {cache}.")
    return download_checked(os.environ.get("BENCH_CLASSIFIER_URL") or RESNET18_URL, cache, RESNET18_SHA256_PREFIX, progress,
                            where="set method.classifier_weights (BENCH_CLASSIFIER_URL names a mirror)")


def load_classifier_for(data, choice: str, weights: str, device: torch.device, who: str) -> FrozenClassifier:
    """The frozen classifier for `data` (a bench.data.Dataset): choice digits-probe | resnet18, or auto: the one
    the dataset declares (Dataset.classifier)."""
    if data.kind != "images":
        raise BenchError(f"{who} distils through an image classifier, and {data.name} holds {data.kind}, not images.")
    if data.latent:
        raise BenchError(f"{who} on latents would have to decode through the VAE with gradients, which is not "
                         f"implemented; train it on images (digits, imagefolder:PATH).")
    if choice == "auto":
        choice = data.classifier
    if choice == "digits-probe":
        if tuple(data.shape) != (1, 8, 8):
            raise BenchError(f"method.classifier = digits-probe classifies 1x8x8 digits; {data.name} has shape {tuple(data.shape)}.")
        return DigitsProbeClassifier(Path(weights) if weights else None).to(device)
    return ResNet18Classifier(find_resnet18_weights(weights)).to(device)


def classifier_for(method, data, device: torch.device) -> FrozenClassifier | None:
    """The frozen classifier `method` (a methods.base.Method) distils through, loaded for `data` on `device`
    (what Method.classifier_request names), to hand to method.setup(); None when it requests none."""
    request = method.classifier_request()
    return None if request is None else load_classifier_for(data, *request, device, method.name)
