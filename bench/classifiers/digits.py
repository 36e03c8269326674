"""A small CNN trained on scikit-learn's 8x8 digits: the feature space of FID on `digits`.

Inception features mean nothing on 8x8 images, so FID/KID/precision/recall on `digits` use the
128-d penultimate layer of this classifier (as "FID" in the DDPM literature uses Inception's
pool3). The trained weights ship in bench/assets/digits_classifier.npz; `bench digits-classifier`
retrains them reproducibly. Their hash is part of every cache key and run's params.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bench.classifiers.nets import load_weights, train_on_digits

WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "assets" / "digits_classifier.npz"
FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 2 * 2, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """x: (B, 1, 8, 8) in [-1, 1] -> (B, 128) penultimate activations (before the ReLU)."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return self.fc1(h.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.features(x)))


def uint8_to_input(img: Tensor) -> Tensor:
    """uint8 (B, 3, 8, 8) (the feature-extractor convention) -> (B, 1, 8, 8) in [-1, 1]."""
    return img[:, :1].float() / 127.5 - 1.0


def load_classifier(path: Path | str = WEIGHTS_PATH) -> DigitsClassifier:
    return load_weights(DigitsClassifier(), path, "Digits classifier", "digits-classifier")


def train_classifier(seed: int = 0, epochs: int = 40, out: Path | None = None) -> dict[str, float]:
    """Train on a stratified 80 % split (fixed seed) with small shifts as augmentation; report the
    held-out accuracy; write the weights atomically as .npz. Deterministic on the CPU."""
    return train_on_digits(DigitsClassifier, seed, epochs, 2e-3, Path(out) if out else WEIGHTS_PATH)
