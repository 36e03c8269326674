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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError

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
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"Digits probe weights {path} are missing; run `bench digits-probe` to train them.")
    try:
        with np.load(path) as f:
            state = {k: torch.from_numpy(f[k]) for k in f.files}
        model = DigitsProbe()
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise BenchError(f"Digits probe weights {path} are unreadable or do not fit the network ({type(e).__name__}).") from None
    return model.eval().requires_grad_(False)


def train_probe(seed: int = DEFAULT_SEED, epochs: int = 30, out: Path | None = None) -> dict[str, float]:
    """Train on a stratified 80 % split (by `seed`) with one-pixel shifts as augmentation; report the
    held-out accuracy; write the weights atomically as .npz."""
    from sklearn.model_selection import train_test_split

    from bench.checkpoint import atomic_write, state_hash
    from bench.digits_arrays import load_digits_arrays

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images / 8.0 - 1.0)[:, None]
    y = torch.from_numpy(labels)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=labels)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitsProbe()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xtr, ytr = x[idx_train], y[idx_train]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()  # shifts: features not tied to exact alignment
            loss = F.cross_entropy(model(torch.roll(xtr[b], shifts=(dy, dx), dims=(2, 3))), ytr[b])
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
