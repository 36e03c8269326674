"""How alike two feature spaces are: linear centred kernel alignment (Kornblith et al. 2019, "Similarity
of Neural Network Representations Revisited", eq. for linear CKA):

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),

X (n, p) and Y (n, q) the two networks' features of the same n inputs, Xc, Yc with every column
centred. 1 for one space and itself (or an orthogonal transform or isotropic rescaling of it), 0
for spaces uncorrelated in every direction; for one feature each it is their squared correlation."""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"linear_cka takes (n, p) and (n, q) features of the same n inputs, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return float(cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")))
