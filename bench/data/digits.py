"""scikit-learn's bundled 8x8 digits as arrays: the `digits` dataset and both digits classifiers
(the FID feature network and the CFD/RDD probe) read them from here, below every other module."""

from __future__ import annotations

import numpy as np


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images (1797, 8, 8) in [0, 16], labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)
