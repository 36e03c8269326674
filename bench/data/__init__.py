"""Datasets behind one interface: `--data` / `data.spec` -> `Dataset`.

Specs: `toy:eight_gaussians`, `toy:checkerboard`, `digits` (scikit-learn's bundled 8x8 digits),
`cifar10:PATH` (the official python-format CIFAR-10, bench/data/cifar10.py), `imagefolder:PATH`, `npz:PATH`, `latents:DIR`. More loaders register in `LOADERS` (prefix -> function).
Data live in model space: images in [-1, 1] as (C, H, W); points and vectors as they are.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from bench.data import latents
from bench.config import DataConfig
from bench.data.dataset import Dataset, ToyModes, label_frequencies
from bench.data.digits import load_digits_arrays
from bench.errors import BenchError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class TensorData(Dataset):
    """A dataset held in memory."""

    def __init__(self, name: str, kind: str, x: Tensor, y: Tensor | None, num_classes: int,
                 reference: "Dataset | None" = None, modes: ToyModes | None = None):
        if len(x) == 0:
            raise BenchError(f"Dataset {name} is empty.")
        self.name, self.kind, self.x, self.y = name, kind, x.float().contiguous(), y
        self.shape = tuple(x.shape[1:])
        self.num_classes = num_classes
        self.modes = modes
        self._reference = reference
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self.x)

    def get(self, indices):
        return self.x[indices], (self.y[indices] if self.y is not None else None)

    def label_probs(self):
        return label_frequencies(self.y, self.num_classes)

    def reference(self):
        return self._reference or self

    def fingerprint(self):
        if self._fp is None:
            h = hashlib.sha256(self.x.numpy().tobytes())
            if self.y is not None:
                h.update(self.y.numpy().tobytes())
            self._fp = h.hexdigest()[:16]
        return self._fp


# ----------------------------------------------------------------------------- 2-D toys


def _eight_gaussians(n: int, g: torch.Generator, radius: float = 2.0, std: float = 0.1) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (math.pi / 4)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius
    return centres + std * torch.randn(n, 2, generator=g)


def _eight_gaussians_modes(radius: float = 2.0, std: float = 0.1) -> ToyModes:
    angle = torch.arange(8).float() * (math.pi / 4)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius

    def assign(p: Tensor) -> Tensor:
        dist = torch.cdist(p.float(), centres)
        best = dist.min(1)
        return torch.where(best.values <= 3 * std, best.indices, torch.full_like(best.indices, -1))

    return ToyModes(8, assign, f"8 Gaussians (std {std}) on a circle of radius {radius}; hit = within 3 std")


def _checkerboard(n: int, g: torch.Generator, cells: int = 4, side: float = 4.0) -> Tensor:
    # pick one of the cells*cells/2 filled squares, then a uniform point inside it
    filled = [(i, j) for i in range(cells) for j in range(cells) if (i + j) % 2 == 0]
    k = torch.randint(0, len(filled), (n,), generator=g)
    ij = torch.tensor(filled, dtype=torch.float32)[k]
    size = side / cells
    return (ij + torch.rand(n, 2, generator=g)) * size - side / 2


def _checkerboard_modes(cells: int = 4, side: float = 4.0) -> ToyModes:
    filled = {(i, j): m for m, (i, j) in enumerate((i, j) for i in range(cells) for j in range(cells) if (i + j) % 2 == 0)}
    size = side / cells

    def assign(p: Tensor) -> Tensor:
        ij = torch.floor((p.float() + side / 2) / size).long()
        out = torch.full((len(p),), -1, dtype=torch.long)
        inside = ((ij >= 0) & (ij < cells)).all(1)
        for (i, j), m in filled.items():
            out[inside & (ij[:, 0] == i) & (ij[:, 1] == j)] = m
        return out

    return ToyModes(len(filled), assign, f"{cells}x{cells} checkerboard on [-{side/2}, {side/2}]^2; hit = inside a filled square")


TOYS: dict[str, tuple[Callable[[int, torch.Generator], Tensor], Callable[[], ToyModes]]] = {
    "eight_gaussians": (_eight_gaussians, _eight_gaussians_modes),
    "checkerboard": (_checkerboard, _checkerboard_modes),
}
TOY_REFERENCE_SIZE = 10_000


def load_toy(name: str, cfg: DataConfig) -> Dataset:
    if name not in TOYS:
        raise BenchError(f"Unknown toy {name!r}; known toys: {', '.join(TOYS)}.")
    draw, modes = TOYS[name]
    train = draw(cfg.num_train, torch.Generator().manual_seed(cfg.data_seed))
    # the reference set is an independent draw (not the training points)
    ref = draw(TOY_REFERENCE_SIZE, torch.Generator().manual_seed(cfg.data_seed + 1))
    m = modes()
    reference = TensorData(f"toy:{name}/reference", "points", ref, None, 0, modes=m)
    return TensorData(f"toy:{name}", "points", train, None, 0, reference=reference, modes=m)


# ----------------------------------------------------------------------------- digits


class Digits(TensorData):
    """scikit-learn's 8x8 digits, with networks of their own (bench/classifiers/): Inception features mean
    nothing on 8x8 images, so evaluation measures in the shipped digits classifier's features, and CFD / RDD
    distil through a second, separately trained one (the probe)."""

    feature_space = "digits-classifier"
    classifier = "digits-probe"


def load_digits(cfg: DataConfig) -> Dataset:
    images, labels = load_digits_arrays()
    x = torch.from_numpy(images / 8.0 - 1.0)[:, None]  # (1797, 1, 8, 8) in [-1, 1]
    return Digits("digits", "images", x, torch.from_numpy(labels), 10)


# ----------------------------------------------------------------------------- user data


def _existing(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not path or not p.exists():
        raise BenchError(f"{what} path {path!r} does not exist.")
    return p.resolve()


class ImageFolder(Dataset):
    """Images under PATH (resized and centre-cropped to `resolution`), loaded lazily.

    Labels come from the first level of sub-folders when every image sits in one."""

    kind = "images"

    def __init__(self, root: Path, resolution: int):
        from PIL import Image

        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise BenchError(f"Image folder {root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        rel = [f.relative_to(root) for f in self.files]
        if all(len(r.parts) >= 2 for r in rel):
            classes = sorted({r.parts[0] for r in rel})
            index = {c: i for i, c in enumerate(classes)}
            self.labels = torch.tensor([index[r.parts[0]] for r in rel])
            self.classes = classes
        else:
            self.labels, self.classes = None, []
        self.num_classes = len(self.classes)
        if resolution <= 0:
            try:
                with Image.open(self.files[0]) as im:
                    resolution = min(im.size)
            except OSError as e:
                raise BenchError(f"Cannot read image {self.files[0]}: {e}.") from None
        self.resolution = resolution
        self.shape = (3, resolution, resolution)
        self.name = f"imagefolder:{root}"

    def __len__(self):
        return len(self.files)

    def load_uint8(self, i: int) -> Tensor:
        """(3, R, R) uint8: shorter side resized to R (bicubic), then centre crop."""
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = self.resolution / min(w, h)
                im = im.resize((max(self.resolution, round(w * s)), max(self.resolution, round(h * s))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
                im = im.crop((left, top, left + self.resolution, top + self.resolution))
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise BenchError(f"Cannot read image {self.files[i]}: {e}.") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def get(self, indices):
        idx = [int(i) for i in indices]
        x = torch.stack([self.load_uint8(i) for i in idx]).float() / 127.5 - 1.0
        return x, (self.labels[idx] if self.labels is not None else None)

    def label_probs(self):
        return label_frequencies(self.labels, self.num_classes)

    def fingerprint(self):
        h = hashlib.sha256(f"res={self.resolution}".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def load_imagefolder(path: str, cfg: DataConfig) -> Dataset:
    root = _existing(path, "Image folder")
    if not root.is_dir():
        raise BenchError(f"Image folder path {root} is not a directory.")
    return ImageFolder(root, cfg.resolution)


def load_npz(path: str, cfg: DataConfig) -> Dataset:
    """Array `x` (N, ...) and optional integer labels `y`. uint8 arrays of rank 4 are images
    (N, H, W, C) or (N, C, H, W), mapped to [-1, 1]; float arrays are used as they are."""
    p = _existing(path, "npz")
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f.files:
                raise BenchError(f"{p} has no array named 'x' (it has: {', '.join(f.files) or 'nothing'}).")
            x = np.asarray(f["x"])
            y = np.asarray(f["y"]) if "y" in f.files else None
    except BenchError:
        raise
    except Exception as e:  # zip errors, truncated files, pickled objects
        raise BenchError(f"Cannot read {p} as .npz: {e}.") from None
    if x.ndim < 2 or len(x) == 0:
        raise BenchError(f"{p}: 'x' must have shape (N, ...) with N > 0, got {x.shape}.")
    if y is not None and (y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise BenchError(f"{p}: 'y' must be {len(x)} non-negative integer labels, got shape {y.shape} and dtype {y.dtype}.")
    num_classes = int(y.max()) + 1 if y is not None else 0
    yt = torch.from_numpy(y.astype(np.int64)) if y is not None else None
    if x.dtype == np.uint8 and x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        xt = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)
        return TensorData(f"npz:{p}", "images", xt, yt, num_classes)
    if not np.issubdtype(x.dtype, np.floating):
        raise BenchError(f"{p}: 'x' must be float (used as is) or uint8 images, got {x.dtype}.")
    kind = "points" if x.ndim == 2 and x.shape[1] == 2 else "vectors"
    return TensorData(f"npz:{p}", kind, torch.from_numpy(x.astype(np.float32)), yt, num_classes)


def load_latents(path: str, cfg: DataConfig) -> Dataset:
    """`latents:DIR`, written by `bench prepare-latents` (bench/data/latents.py)."""
    return latents.load_latents(path, cfg, load_dataset)


def load_cifar10(path: str, cfg: DataConfig) -> Dataset:
    """`cifar10:PATH` (bench/data/cifar10.py): the 50,000 training images and labels, also the reference set."""
    from bench.data.cifar10 import load_cifar10 as load

    return load(path)


def classes_known_absent(spec: str) -> bool:
    """Whether data of this spec are known to carry no classes without loading them (the toys); other
    loaders answer with the loaded data (Dataset.num_classes)."""
    return spec.partition(":")[0] == "toy"


LOADERS: dict[str, Callable[[str, DataConfig], Dataset]] = {
    "toy": load_toy,
    "digits": lambda _arg, cfg: load_digits(cfg),
    "cifar10": load_cifar10,
    "imagefolder": load_imagefolder,
    "npz": load_npz,
    "latents": load_latents,
}


class Unlabelled(Dataset):
    """A dataset with its labels hidden (data.labels = false): unconditional training and sampling.
    Everything else (images, reference set, fingerprint, decoding) is the wrapped dataset's."""

    def __init__(self, inner: Dataset):
        self.inner = inner
        self.num_classes = 0

    def __getattr__(self, name):  # name, kind, shape, decoder attributes, ...
        return getattr(self.inner, name)

    @property
    def latent(self):  # class attributes of Dataset: not reached through __getattr__
        return self.inner.latent

    @property
    def modes(self):
        return self.inner.modes

    @property
    def feature_space(self):
        return self.inner.feature_space

    @property
    def classifier(self):
        return self.inner.classifier

    def __len__(self) -> int:
        return len(self.inner)

    def get(self, indices):
        return self.inner.get(indices)[0], None

    def label_probs(self):
        return None

    def reference(self):
        return self.inner.reference()

    def fingerprint(self):
        return self.inner.fingerprint()

    def to_uint8(self, x):
        return self.inner.to_uint8(x)


def load_dataset(cfg: DataConfig) -> Dataset:
    """`cfg.spec` is `PREFIX` or `PREFIX:ARG` with PREFIX in LOADERS."""
    prefix, _, arg = cfg.spec.partition(":")
    if prefix not in LOADERS:
        raise BenchError(f"Unknown dataset {cfg.spec!r}; use {', '.join(k + (':...' if k not in ('digits', 'cifar10') else '') for k in LOADERS)}.")
    data = LOADERS[prefix](arg, cfg)
    return data if cfg.labels or not data.num_classes else Unlabelled(data)



