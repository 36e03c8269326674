"""A small CNN trained on scikit-learn's 8x8 digits: the feature space of FID on `digits`.

Inception features mean nothing on 8x8 images, so FID/KID/precision/recall on `digits` use the
128-d penultimate layer of this classifier (as "FID" in the DDPM literature uses Inception's
pool3). The trained weights ship in bench/assets/digits_classifier.npz; `bench digits-classifier`
retrains them reproducibly. Their hash is part of every cache key and run's params.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError

WEIGHTS_PATH = Path(__file__).resolve().parent / "assets" / "digits_classifier.npz"
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
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"Digits classifier weights {path} are missing; run `bench digits-classifier` to train them.")
    try:
        with np.load(path) as f:
            state = {k: torch.from_numpy(f[k]) for k in f.files}
        model = DigitsClassifier()
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise BenchError(f"Digits classifier weights {path} are unreadable or do not fit the network ({type(e).__name__}).") from None
    return model.eval().requires_grad_(False)


def train_classifier(seed: int = 0, epochs: int = 40, out: Path | None = None) -> dict[str, float]:
    """Train on a stratified 80 % split (fixed seed) with small shifts as augmentation; report the
    held-out accuracy; write the weights atomically as .npz. Deterministic on the CPU."""
    from sklearn.model_selection import train_test_split

    from bench.checkpoint import atomic_write, state_hash
    from bench.digits_arrays import load_digits_arrays

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images / 8.0 - 1.0)[:, None]
    y = torch.from_numpy(labels)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=labels)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xtr, ytr = x[idx_train], y[idx_train]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            xb = xtr[b]
            # one-pixel shifts (zero = background -1) so features do not hinge on exact alignment
            dx, dy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[idx_test]).argmax(1) == y[idx_test]).float().mean().item()
        train_acc = (model(xtr).argmax(1) == ytr).float().mean().item()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = Path(out) if out else WEIGHTS_PATH
    atomic_write(out, lambda fh: np.savez(fh, **state))
    return {"heldout_accuracy": acc, "train_accuracy": train_acc, "num_heldout": len(idx_test),
            "weights_sha256": state_hash(model.state_dict()), "path": str(out)}
