"""`--data cifar10:PATH`: the official python-format CIFAR-10 (Krizhevsky 2009).

PATH is the `cifar-10-batches-py/` folder, a folder holding it or the `cifar-10-python.tar.gz` archive,
or that archive itself. Where PATH does not exist, the archive is downloaded to it (a folder, or the
.tar.gz name) from the official URL ($BENCH_CIFAR10_URL names a mirror) and kept only when its MD5 is
the published one; $BENCH_OFFLINE=1 forbids that, as for the Inception weights. `cifar10` alone uses
~/.cache/bench/cifar-10 ($XDG_CACHE_HOME respected).

The batches are pickles (Python 2's protocol 2): dicts of byte-string keys holding `data`, a (10000, 3072)
uint8 array in channel-major order (1024 red, 1024 green, 1024 blue, rows top to bottom), and `labels`, a
list of ints 0-9. They are read with an unpickler that builds only plain containers, strings, numbers and
numpy arrays (numpy's array reconstruction, ndarray, dtype) and refuses any other global unexecuted.

The training set is the 50,000 images of data_batch_1..5; it is also the reference set (FID-50K against
the training images, the convention of EDM, the consistency-model papers, ECT and MeanFlow). test_batch
is not read.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.data.dataset import Dataset, label_frequencies
from bench.errors import BenchError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # as published on https://www.cs.toronto.edu/~kriz/cifar.html
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# the only globals an official batch names: numpy's array pickling (numpy 1 and numpy 2 module names)
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class PickleRefused(BenchError):
    """A batch whose unpickling would import something other than numpy's array reconstruction."""


class _BatchUnpickler(pickle.Unpickler):
    """Plain containers and numbers come from opcodes; globals only from ALLOWED_GLOBALS."""

    def __init__(self, fh, where: str):
        super().__init__(fh, encoding="bytes")  # Python 2 str -> bytes, as the official files need
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise PickleRefused(f"CIFAR-10 batch {self.where} names {module}.{name}, which an official batch "
                                f"never holds (loading it could run code); it was refused and not loaded.")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch's bytes -> images (N, 3, 32, 32) uint8, labels (N,) int64; BenchError when it is not one."""
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), where).load()
    except BenchError:
        raise
    except Exception as e:  # truncated or garbled pickles
        raise BenchError(f"CIFAR-10 batch {where} is truncated or corrupt ({type(e).__name__}).") from None
    if not isinstance(obj, dict):
        raise BenchError(f"CIFAR-10 batch {where} is not a dict of data and labels.")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BenchError(f"CIFAR-10 batch {where} has no 'data' array of shape (N, 3072) and dtype uint8.")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise BenchError(f"CIFAR-10 batch {where} has no {len(data)} labels in 0-9.")
    return data.reshape(-1, 3, 32, 32), labels


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bench" / "cifar-10"


def locate(path: str, progress: bool = True) -> Path:
    """The batches folder or the archive that PATH names; downloads the archive where PATH does not exist."""
    p = Path(path).expanduser() if path else cache_dir()
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (p, p / FOLDER):
            if (cand / TRAIN_BATCHES[0]).is_file():
                return cand
        if (p / ARCHIVE).is_file():
            return p / ARCHIVE
        if any(p.iterdir()):
            raise BenchError(f"{p} holds neither {FOLDER}/ (data_batch_1..5) nor {ARCHIVE}.")
    dest = p if p.name.endswith(".tar.gz") else p / ARCHIVE
    if os.environ.get("BENCH_OFFLINE", "") not in ("", "0"):
        raise BenchError(f"CIFAR-10 is not at {p} and BENCH_OFFLINE forbids downloading it: place {ARCHIVE} "
                         f"(from {CIFAR10_URL}) or its {FOLDER}/ folder there.")
    from bench.files.download import download_checked

    return download_checked(os.environ.get("BENCH_CIFAR10_URL") or CIFAR10_URL, dest, CIFAR10_MD5, progress,
                            timeout=120.0, where="unpack it there (BENCH_CIFAR10_URL names a mirror)", algorithm="md5")


def read_batches(source: Path) -> dict[str, bytes]:
    """The raw bytes of data_batch_1..5 from the folder or the archive."""
    out: dict[str, bytes] = {}
    if source.is_dir():
        for name in TRAIN_BATCHES:
            f = source / name
            if not f.is_file():
                raise BenchError(f"CIFAR-10 folder {source} lacks {name}.")
            out[name] = f.read_bytes()
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if name in TRAIN_BATCHES and member.isfile() and Path(member.name).parent.name == FOLDER:
                    fh = tar.extractfile(member)
                    out[name] = fh.read() if fh else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BenchError(f"CIFAR-10 archive {source} is truncated or corrupt ({type(e).__name__}).") from None
    missing = [n for n in TRAIN_BATCHES if n not in out]
    if missing:
        raise BenchError(f"CIFAR-10 archive {source} lacks {FOLDER}/{', '.join(missing)}.")
    return out


class Cifar10(Dataset):
    """The 50,000 training images held as uint8 (150 MB), mapped to [-1, 1] per batch; 10 labels."""

    kind = "images"
    num_classes = len(CLASSES)

    def __init__(self, images: np.ndarray, labels: np.ndarray, source: Path):
        if len(images) == 0:
            raise BenchError(f"CIFAR-10 at {source} holds no images.")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels)
        self.shape = (3, 32, 32)
        self.name = "cifar10"
        self.source = source
        self._fp = ""

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices):
        return self.images[indices].float() / 127.5 - 1.0, self.labels[indices]

    def label_probs(self):
        return label_frequencies(self.labels, self.num_classes)

    def fingerprint(self) -> str:
        if not self._fp:
            h = hashlib.sha256(self.images.numpy().tobytes())
            h.update(self.labels.numpy().tobytes())
            self._fp = h.hexdigest()[:16]
        return self._fp


def load_cifar10(path: str, progress: bool = True) -> Cifar10:
    source = locate(path, progress)
    raw = read_batches(source)
    parts = [unpickle_batch(raw[n], f"{source}:{n}" if source.is_file() else str(source / n)) for n in TRAIN_BATCHES]
    return Cifar10(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), source)
