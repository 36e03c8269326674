"""Built-in and user datasets."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from bench.config import DataConfig
from bench.data import load_dataset
from bench.errors import BenchError


def test_eight_gaussians_modes_and_reference():
    d = load_dataset(DataConfig(spec="toy:eight_gaussians", num_train=8000))
    assert len(d) == 8000 and d.shape == (2,) and d.kind == "points" and d.num_classes == 0
    ref = d.reference()
    assert len(ref) == 10_000 and not torch.equal(ref.x[:100], d.x[:100])  # an independent draw
    idx = d.modes.assign(ref.x)
    assert (idx >= 0).float().mean() > 0.98  # 3 std in 2-D holds 98.9 %
    counts = torch.bincount(idx[idx >= 0], minlength=8).float()
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.02
    # the origin is no mode; a centre is
    assert d.modes.assign(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])).tolist() == [-1, 0, 2]
    radius = ref.x.norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.01


def test_checkerboard_fills_half_the_squares():
    d = load_dataset(DataConfig(spec="toy:checkerboard", num_train=4000))
    cells = torch.floor((d.x + 2) / 1.0).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert (d.modes.assign(d.x) >= 0).all() and d.modes.count == 8


def test_digits():
    d = load_dataset(DataConfig(spec="digits"))
    assert len(d) == 1797 and d.shape == (1, 8, 8) and d.num_classes == 10 and d.kind == "images"
    assert d.x.min() == -1 and d.x.max() == 1
    img = d.to_uint8(d.x[:4])
    assert img.dtype == torch.uint8 and img.shape == (4, 3, 8, 8)
    torch.testing.assert_close(img[:, :1].float() / 127.5 - 1, d.x[:4], atol=1 / 127.5, rtol=0)
    assert abs(d.label_probs().sum().item() - 1) < 1e-6


def test_imagefolder_with_labels(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 12), colour).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(DataConfig(spec=f"imagefolder:{tmp_path}", resolution=8))
    assert len(d) == 6 and d.num_classes == 2 and d.shape == (3, 8, 8)
    x, y = d.get(torch.tensor([0, 5]))
    assert y.tolist() == [0, 1]
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[1, 2], torch.ones(8, 8))


def test_npz_float_and_uint8(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=pts, y=np.arange(50) % 5)
    d = load_dataset(DataConfig(spec=f"npz:{tmp_path / 'v.npz'}"))
    assert d.kind == "vectors" and d.num_classes == 5 and np.allclose(d.x.numpy(), pts)
    imgs = np.zeros((4, 6, 6, 3), np.uint8)
    imgs[..., 1] = 255
    np.savez(tmp_path / "i.npz", x=imgs)
    d = load_dataset(DataConfig(spec=f"npz:{tmp_path / 'i.npz'}"))
    assert d.kind == "images" and d.shape == (3, 6, 6) and d.x[:, 1].min() == 1 and d.x[:, 0].max() == -1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("npz:/nonexistent/x.npz", "does not exist"),
        ("imagefolder:/nonexistent", "does not exist"),
        ("toy:spiral", "Unknown toy"),
        ("cifar", "Unknown dataset"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(BenchError, match=message):
        load_dataset(DataConfig(spec=spec))


def test_bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BenchError, match="Cannot read .* as .npz"):
        load_dataset(DataConfig(spec=f"npz:{tmp_path / 'junk.npz'}"))
    np.savez(tmp_path / "nox.npz", z=np.zeros(3))
    with pytest.raises(BenchError, match="no array named 'x'"):
        load_dataset(DataConfig(spec=f"npz:{tmp_path / 'nox.npz'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="contains no images"):
        load_dataset(DataConfig(spec=f"imagefolder:{tmp_path / 'empty'}"))
