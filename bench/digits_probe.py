"""A second classifier of scikit-learn's 8x8 digits, for the methods that distil through a classifier
(CFD, RDD): it must not be the FID feature network (bench/digits_classifier.py), or the student would
be trained on the very features it is scored in.

Independent of that network: another architecture (three 3x3 convolutions of 24/48/64 channels, one
2x2 max-pool, a 64-channel 4x4 spatial map, global average pooling, a linear layer, no hidden fully
connected layer), another seed (1) for the initialisation, the data order and the held-out split.
The trained weights ship in bench/assets/digits_probe.npz; `bench digits-probe` retrains them
reproducibly (deterministic on the CPU). Runs that use it record its weights' hash.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bench.digits_nets import load_weights, train_on_digits

WEIGHTS_PATH = Path(__file__).resolve().parent / "assets" / "digits_probe.npz"
DEFAULT_SEED = 1  # the FID network's is 0


class DigitsProbe(nn.Module):
    """x (B, 1, 8, 8) in [-1, 1] -> logits (B, 10); `parts` also gives the pooled feature and the map."""

    channels = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 3, padding=1)
        self.conv2 = nn.Conv2d(24, 48, 3, padding=1)
        self.conv3 = nn.Conv2d(48, self.channels, 3, padding=1)
        self.fc = nn.Linear(self.channels, 10)

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> logits (B, 10), pooled penultimate feature h (B, 64), spatial map m (B, 64, 4, 4)."""
        a = F.relu(self.conv1(x))
        a = F.max_pool2d(F.relu(self.conv2(a)), 2)
        m = F.relu(self.conv3(a))
        h = m.mean((2, 3))
        return self.fc(h), h, m

    def forward(self, x: Tensor) -> Tensor:
        return self.parts(x)[0]


def load_probe(path: Path | str = WEIGHTS_PATH) -> DigitsProbe:
    """The shipped (or given) weights, frozen: eval mode, requires_grad False."""
    return load_weights(DigitsProbe(), path, "Digits probe", "digits-probe")


def train_probe(seed: int = DEFAULT_SEED, epochs: int = 30, out: Path | None = None) -> dict[str, float]:
    """Train on a stratified 80 % split (by `seed`) with one-pixel shifts as augmentation; report the
    held-out accuracy; write the weights atomically as .npz."""
    return train_on_digits(DigitsProbe, seed, epochs, 3e-3, Path(out) if out else WEIGHTS_PATH)
