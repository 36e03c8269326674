"""The CFD/RDD probe classifier is trained on digits the FID classifier never saw, and the linear CKA
that measures how alike their features are is checked against its known properties and a hand-worked case."""

from __future__ import annotations

import numpy as np
import pytest

from bench.classifiers.similarity import linear_cka


def fid_classifier_split():
    """The FID classifier's split, written out independently of bench.classifiers.nets: scikit-learn's
    stratified 80 / 20 split of the 1,797 digits with random_state 0 (its seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    return train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)


def test_the_probe_trains_only_on_digits_the_fid_classifier_held_out(tmp_path):
    import torch

    from bench.classifiers.digits import train_classifier
    from bench.classifiers.probe import train_probe

    torch.set_num_threads(1)
    fid_train, fid_heldout = fid_classifier_split()
    probe = train_probe(epochs=1, out=tmp_path / "probe.npz")  # the indices it trained on, whatever the epochs
    assert len(np.intersect1d(probe["train_indices"], fid_train)) == 0
    assert sorted(probe["train_indices"]) == sorted(fid_heldout) and probe["num_train"] == 360
    assert probe["num_heldout"] == 1437  # its accuracy is measured on the FID classifier's training digits
    # and the FID classifier's own training (its command's defaults) is the split written out above
    fid = train_classifier(epochs=1, out=tmp_path / "cls.npz")
    assert sorted(fid["train_indices"]) == sorted(fid_train)


def test_cka_of_a_space_with_itself_and_its_rotations_and_rescalings_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a random orthogonal matrix
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0)  # isotropic scaling and a shift (centred away)
    y = rng.normal(size=(200, 3))
    assert linear_cka(x @ q * 2.0, y) == pytest.approx(linear_cka(x, y))
    # not invariant to stretching one direction: CKA is no canonical correlation
    assert linear_cka(x, x * np.array([10.0, 1, 1, 1, 1, 1])) < 0.99
    # independent features: near 0 (of order p q / n)
    assert linear_cka(rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4))) < 0.01


def test_cka_by_hand():
    # one feature each: the squared correlation. x = 1, 2, 3 and y = 1, 3, 2: centred (-1, 0, 1), (-1, 1, 0),
    # x.y = 1, |x|^2 = |y|^2 = 2: r = 1/2, CKA = 1/4
    assert linear_cka([[1.0], [2.0], [3.0]], [[1.0], [3.0], [2.0]]) == pytest.approx(0.25)
    # X the four points (+-1, 0), (0, +-1) (centred), Y its first coordinate: X^T X = 2 I, ||.||_F = sqrt 8;
    # Y^T Y = 2; Y^T X = (2, 0), squared norm 4: CKA = 4 / (2 sqrt 8) = 1 / sqrt 2
    x = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError):
        linear_cka(x, x[:3])
