"""What the two digits networks (the FID feature classifier, bench/classifiers/digits.py, and the CFD/RDD
probe, bench/classifiers/probe.py) share: their weights file format and their training recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError


def load_weights(model: nn.Module, path: Path | str, what: str, command: str) -> nn.Module:
    """`model` with the .npz weights at `path`, frozen: eval mode, requires_grad False."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{what} weights {path} are missing; run `bench {command}` to train them.")
    try:
        with np.load(path) as f:
            state = {k: torch.from_numpy(f[k]) for k in f.files}
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise BenchError(f"{what} weights {path} are unreadable or do not fit the network ({type(e).__name__}).") from None
    return model.eval().requires_grad_(False)


FID_CLASSIFIER_SEED = 0  # the shipped FID classifier's seed, which also draws its 80 % training split


def stratified_split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices into the 1,797 digits: a stratified 80 / 20 split drawn by `seed`
    (the FID classifier's with FID_CLASSIFIER_SEED)."""
    from sklearn.model_selection import train_test_split

    from bench.data.digits import load_digits_arrays

    labels = load_digits_arrays()[1]
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    return idx_train, idx_test


def train_on_digits(make_model: Callable[[], nn.Module], seed: int, epochs: int, lr: float, out: Path,
                    split: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Train on `split` = (training, held-out) indices, by default a stratified 80 % split drawn by
    `seed`, with one-pixel shifts as augmentation; report the held-out accuracy; write the weights
    atomically as .npz. Deterministic on the CPU."""
    from bench.files.checkpoint import atomic_write, state_hash
    from bench.data.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images / 8.0 - 1.0)[:, None]
    y = torch.from_numpy(labels)
    idx_train, idx_test = split if split is not None else stratified_split(seed)
    torch.manual_seed(seed)  # the model's initialisation
    g = torch.Generator().manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xtr, ytr = x[idx_train], y[idx_train]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            # one-pixel shifts (zero = background -1) so features do not hinge on exact alignment
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
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
    atomic_write(out, lambda fh: np.savez(fh, **state))
    return {"heldout_accuracy": acc, "train_accuracy": train_acc, "num_heldout": len(idx_test), "num_train": len(idx_train),
            "train_indices": np.sort(np.asarray(idx_train)), "weights_sha256": state_hash(model.state_dict()), "path": str(out)}
