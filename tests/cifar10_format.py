"""Writes CIFAR-10 in the official python format, independently of bench/data/cifar10.py: what tests and
the GPU script (scripts/gpu_cifar10_timings.sh) load instead of the real archive, which nothing here downloads.

The official batches were pickled by Python 2's cPickle with protocol 2: every string is a byte string
(opcodes SHORT_BINSTRING / BINSTRING), and the numpy array names numpy.core.multiarray._reconstruct,
numpy.ndarray and numpy.dtype. `Py2Pickler` writes the same opcodes from Python 3 (whose own protocol 2
would write bytes as calls to _codecs.encode)."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"


class Py2Pickler(pickle._Pickler):
    """Protocol 2 with Python 2's string opcodes and numpy 1's module name for _reconstruct."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, fh):
        super().__init__(fh, protocol=2)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def batch_bytes(images: np.ndarray, labels, batch_label: str = "training batch 1 of 5") -> bytes:
    """images (N, 32, 32, 3) uint8 (HWC, as images are usually held) -> one official batch's bytes."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))  # channel-major rows
    obj = {b"batch_label": batch_label.encode(), b"labels": [int(v) for v in labels], b"data": data,
           b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))]}
    fh = io.BytesIO()
    Py2Pickler(fh).dump(obj)
    return fh.getvalue()


def make_batches(num_per_batch: int, seed: int = 0, structured: bool = True):
    """Five training batches and a test batch of images (N, 32, 32, 3) uint8 and labels 0-9.
    structured: each label's images are a smooth colour gradient of its own plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(6):
        labels = rng.integers(0, 10, num_per_batch)
        if structured:
            yy, xx = np.mgrid[0:32, 0:32] / 31.0
            base = np.stack([np.stack([(xx * (c % 3 + 1) / 3 + yy * (c // 3) / 4 + k / 3) % 1.0 for k in range(3)], -1)
                             for c in range(10)])  # (10, 32, 32, 3)
            imgs = base[labels] * 200 + rng.normal(0, 20, (num_per_batch, 32, 32, 3)) + 28
            imgs = np.clip(imgs, 0, 255).astype(np.uint8)
        else:
            imgs = rng.integers(0, 256, (num_per_batch, 32, 32, 3), dtype=np.uint8)
        out.append((imgs, labels))
    return out


def write_folder(root: Path, batches) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, (imgs, labels) in enumerate(batches):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        (folder / name).write_bytes(batch_bytes(imgs, labels, f"training batch {i + 1} of 5" if i < 5 else "testing batch 1 of 1"))
    meta = io.BytesIO()
    Py2Pickler(meta).dump({b"num_cases_per_batch": len(batches[0][0]), b"num_vis": 3072,
                           b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                            b"horse", b"ship", b"truck"]})
    (folder / "batches.meta").write_bytes(meta.getvalue())
    return folder


def write_archive(path: Path, batches, members: dict[str, bytes] | None = None) -> Path:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/...; `members` replaces or adds files by name."""
    files = {}
    for i, (imgs, labels) in enumerate(batches):
        files[f"data_batch_{i + 1}" if i < 5 else "test_batch"] = batch_bytes(imgs, labels)
    files.update(members or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


if __name__ == "__main__":  # python -m tests.cifar10_format OUT.tar.gz [IMAGES_PER_BATCH]: a stand-in archive
    import sys

    out = Path(sys.argv[1])
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    write_archive(out, make_batches(per))
    print(f"wrote {out} ({5 * per:,} training images in the official format; structured stand-ins, not CIFAR-10)")
