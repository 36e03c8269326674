"""A second classifier of scikit-learn's 8x8 digits, for the methods that distil through a classifier
(CFD, RDD): it must not be the FID feature network (bench/classifiers/digits.py), or the student would
be trained on the very features it is scored in.

Apart from that network: other digits, another architecture and another seed.
- Data: it trains only on the 360 digits the FID classifier held out (its stratified 20 %, drawn by
  FID_CLASSIFIER_SEED = 0), and reports its accuracy on the 1,437 the FID classifier trained on,
  which it never sees: the two training sets are disjoint (tests/test_digits_probe.py). Until
  issue 23 both trained on an 80 % split of all digits, 1,145 of them shared.
- Architecture: three 3x3 convolutions of 24/48/64 channels, one 2x2 max-pool, a 64-channel 4x4
  spatial map, global average pooling, a linear layer, no hidden fully connected layer.
- Seed 1 for the initialisation and the data order.
How alike the two feature spaces still are is measured, not assumed: `bench digits-probe` prints
the linear CKA (bench.classifiers.similarity.linear_cka) of this pooled feature against the FID classifier's
128-d feature on the 1,797 digits. The trained weights ship in bench/assets/digits_probe.npz;
`bench digits-probe` retrains them reproducibly (deterministic on the CPU). Runs that use it record
its weights' hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from bench.classifiers.nets import FID_CLASSIFIER_SEED, load_weights, stratified_split, train_on_digits

WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "assets" / "digits_probe.npz"
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


DEFAULT_EPOCHS = 120  # 360 training digits: 6 batches an epoch


def probe_split() -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) digits of the probe: the FID classifier's held-out 20 % and its training 80 %."""
    fid_train, fid_heldout = stratified_split(FID_CLASSIFIER_SEED)
    return fid_heldout, fid_train


def train_probe(seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS, out: Path | None = None) -> dict[str, float]:
    """Train on probe_split()'s 360 digits (`seed`: initialisation and data order) with one-pixel shifts as
    augmentation; report the accuracy on the other 1,437 and the linear CKA against the FID features;
    write the weights atomically as .npz."""
    r = train_on_digits(DigitsProbe, seed, epochs, 3e-3, Path(out) if out else WEIGHTS_PATH, split=probe_split())
    return {**r, "cka_vs_fid_features": feature_cka(load_probe(r["path"]))}


def feature_cka(probe: DigitsProbe) -> float:
    """Linear CKA of the probe's pooled 64-d feature against the shipped FID classifier's 128-d feature
    (its penultimate layer, what FID is computed in), over the 1,797 digits."""
    import torch

    from bench.data.digits import load_digits_arrays
    from bench.classifiers.digits import load_classifier
    from bench.classifiers.similarity import linear_cka

    x = torch.from_numpy(load_digits_arrays()[0] / 8.0 - 1.0)[:, None]  # the networks' training input
    with torch.no_grad():
        return linear_cka(probe.parts(x)[1].double().numpy(), load_classifier().features(x).double().numpy())
