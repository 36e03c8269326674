"""`bench prepare-latents`: encode an image dataset once with a Stable Diffusion VAE into the folder
that `latents:DIR` reads (format: bench/data/latents.py). It sits above the loaders (it reads any image spec)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import latents  # called through the module: tests replace latents.encode
from bench.config import DataConfig
from bench.data import load_dataset
from bench.data.dataset import Dataset
from bench.errors import BenchError
from bench.config import pick_device


class _Rows(torch.utils.data.Dataset):
    """Rows of a bench Dataset for a DataLoader (workers decode image files in parallel)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data.get(torch.tensor([i]))
        return x[0], (y[0] if y is not None else torch.tensor(-1))


def prepare_latents(
    data_spec: str,
    vae_path: str | Path,
    out: str | Path,
    resolution: int = 256,
    batch_size: int = 32,
    device: str = "auto",
    workers: int = 0,
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Encode every image of `data_spec` once into `out` (see the module doc); returns `out`.

    Written into a temporary sibling folder that is renamed to `out` only when complete, so an
    interrupted run leaves no `out` behind. `resolution`: side after resize + centre crop
    (image folders); `dtype`: float32 or float16 storage.
    """
    from tqdm import tqdm

    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"Output folder {out} already exists and is not empty; remove it or choose another --out.")
    if dtype not in ("float32", "float16"):
        raise BenchError(f"--dtype must be float32 or float16, got {dtype!r}.")
    if batch_size < 1:
        raise BenchError(f"--batch-size must be >= 1, got {batch_size}.")
    folder = latents.vae_folder(vae_path)
    data = load_dataset(DataConfig(spec=data_spec, resolution=resolution))
    if data.kind != "images" or len(data.shape) != 3 or data.shape[0] not in (1, 3):
        raise BenchError(f"{data_spec} holds {data.kind} of shape {tuple(data.shape)}; prepare-latents encodes RGB or grey images.")
    dev = pick_device(device)
    vae = latents.load_vae(folder, dev)
    factor = latents.downsampling_factor(vae)
    H, W = data.shape[1:]
    if H % factor or W % factor:
        raise BenchError(f"Image side {H}x{W} is not divisible by the VAE's downsampling factor {factor}; pick another --resolution.")
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual mode
    try:
        workers = min(workers, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(_Rows(data), batch_size=batch_size, shuffle=False, num_workers=workers)
        arr = None
        labels = np.full(len(data), -1, dtype=np.int64)
        h = hashlib.sha256()
        done = 0
        bar = tqdm(total=len(data), desc=f"encode {data.name}", unit="img", disable=not progress, dynamic_ncols=True)
        for x, y in loader:
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            z = latents.encode(vae, x, scaling, shift).cpu().numpy().astype(dtype)
            if arr is None:
                arr = np.lib.format.open_memmap(tmp / latents.LATENTS_FILE, mode="w+", dtype=dtype, shape=(len(data), *z.shape[1:]))
            arr[done: done + len(z)] = z
            labels[done: done + len(z)] = y.numpy()
            h.update(np.ascontiguousarray(z).tobytes())
            done += len(z)
            bar.update(len(z))
        bar.close()
        arr.flush()
        latent_shape = list(arr.shape[1:])
        del arr
        has_labels = data.num_classes > 0
        if has_labels:
            np.save(tmp / latents.LABELS_FILE, labels)
        meta: dict[str, Any] = {
            "format": latents.FORMAT,
            "num_samples": len(data),
            "latent_shape": latent_shape,
            "dtype": dtype,
            "latents_sha256": h.hexdigest(),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest() if has_labels else None,
            "num_classes": data.num_classes,
            "classes": list(getattr(data, "classes", [])),
            "scaling_factor": scaling,
            "shift_factor": shift,
            "posterior": "mean",
            "vae_path": str(folder),
            "vae_weights_sha256": latents.vae_weights_sha256(folder),
            "vae_downsampling": factor,
            "source": data.name,
            "source_fingerprint": data.fingerprint(),
            "resolution": int(H),
            "image_shape": list(data.shape),
        }
        (tmp / latents.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
