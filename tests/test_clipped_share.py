"""clipped_share (bench/evaluation/registry.py): the share of generated pixel values that the uint8
conversion clips before FID's features see them, counted here by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.data import TensorData
from bench.evaluation import registry
from bench.evaluation.registry import SampleInputs

IMAGES = TensorData("npz:/x.npz", "images", torch.zeros(2, 1, 2, 2), None, 0)


def clipped(samples: np.ndarray, data=IMAGES) -> dict[str, float]:
    return registry.measure("samples", SampleInputs(samples, data, len(samples), len(samples)))


def test_counts_the_values_outside_the_pixel_range():
    x = np.zeros((2, 1, 2, 2), np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 1], x[1, 0, 0, 1] = 1.5, -1.01, -3.0  # 3 of 8 values outside [-1, 1]
    x[1, 0, 1, 0], x[1, 0, 1, 1] = 1.0, -1.0  # on the edge: kept as they are
    assert clipped(x)["clipped_share"] == 3 / 8


def test_is_the_share_that_the_uint8_conversion_changes():
    x = np.random.default_rng(0).normal(scale=0.8, size=(64, 1, 2, 2)).astype(np.float32)
    changed = (torch.from_numpy(x).clamp(-1, 1) != torch.from_numpy(x)).double().mean().item()
    assert 0.1 < changed < 0.3 and clipped(x)["clipped_share"] == pytest.approx(changed, abs=0)


def test_only_pixels():
    x = np.full((4, 2), 5.0, np.float32)
    points = TensorData("toy:eight_gaussians", "points", torch.zeros(4, 2), None, 0)
    latents = SimpleNamespace(kind="images", latent=True, modes=None)  # model space: a VAE's latents, not pixels
    assert "clipped_share" not in clipped(x, points) and "clipped_share" not in clipped(x.reshape(4, 2, 1, 1), latents)
    assert "clipped_share" not in clipped(np.zeros((0, 1, 2, 2), np.float32))  # eval.save_samples = 0: none kept


def test_declared_once_reported_not_printed():
    name = next(n for n in registry.all_names() if n.name == "clipped_share")
    assert name.lower_is_better is True and name.report and not name.column
    assert "clipped_share" in registry.report_names()
    assert "clipped_share" not in [c.name for c in registry.table_columns()]
