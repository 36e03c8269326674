"""Stable Diffusion VAE latents: `bench prepare-latents` encodes an image dataset once;
`latents:DIR` reads the result back as a `Dataset`.

DIR holds
  latents.npy   (N, C, h, w) scaled latents z = (mean - shift) * scale, memory-mapped when read
  labels.npy    (N,) int64, only when the images sit in class sub-folders
  latents.json  scaling and shift, shapes, the VAE's folder and weights hash, the source
                images and resolution, hashes of the arrays
Training reads the latents. Evaluation decodes generated latents with the same VAE
(`to_uint8`) and compares them with the real images of the source (`reference()`), so FID is
measured against real pixels, not against decoded latents.

The encoder stores the mean of the VAE's posterior (deterministic: the same images give the
same file and fingerprint). Nothing is downloaded: the VAE is a local diffusers folder
(`AutoencoderKL.save_pretrained`, e.g. stabilityai/sd-vae-ft-mse copied to disk).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from bench.config import DataConfig
from bench.data.dataset import Dataset, label_frequencies
from bench.errors import BenchError

LATENTS_FILE = "latents.npy"
LABELS_FILE = "labels.npy"
META_FILE = "latents.json"
FORMAT = 1
# the weight files AutoencoderKL.from_pretrained reads, in its order of preference
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# ----------------------------------------------------------------------------- the VAE


def vae_folder(path: str | Path) -> Path:
    """The folder holding the AutoencoderKL's config.json and weights: PATH or PATH/vae (a pipeline)."""
    p = Path(path).expanduser()
    if not str(path) or not p.exists():
        raise BenchError(f"VAE path {str(path)!r} does not exist.")
    if not p.is_dir():
        raise BenchError(f"VAE path {p} is not a folder; give the folder written by AutoencoderKL.save_pretrained.")
    for folder in (p, p / "vae"):
        if (folder / "config.json").is_file():
            vae_weights_file(folder)
            return folder.resolve()
    raise BenchError(f"VAE folder {p} has no config.json (nor a vae/ sub-folder with one); it is not a diffusers AutoencoderKL.")


def vae_weights_file(folder: Path) -> Path:
    for name in VAE_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise BenchError(f"VAE folder {folder} has a config.json but no weights ({' or '.join(VAE_WEIGHT_FILES)}).")


def vae_weights_sha256(folder: Path) -> str:
    from bench.files.checkpoint import file_sha256

    return file_sha256(vae_weights_file(folder))


def load_vae(folder: Path, device: torch.device | str = "cpu"):
    """AutoencoderKL from a local folder (no download), frozen, in eval mode, on `device`."""
    try:
        from diffusers import AutoencoderKL
        from diffusers.utils import logging as dlogging
    except ImportError:
        raise BenchError("Latent datasets need diffusers; install it with `pip install diffusers`.") from None
    dlogging.set_verbosity_error()  # its advice to install accelerate is noise here
    try:
        vae, info = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False,
                                                  output_loading_info=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BenchError(f"Cannot load an AutoencoderKL from {folder} ({type(e).__name__}: {first.rstrip('.')}).") from None
    missing = info.get("missing_keys") or []
    if missing:
        raise BenchError(f"The VAE weights in {folder} lack {len(missing)} of the network's tensors (e.g. {missing[0]}); "
                         f"they are not an AutoencoderKL checkpoint of this config.")
    return vae.to(device).eval().requires_grad_(False)


def downsampling_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode(vae, images: Tensor, scaling: float, shift: float) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f) float32 (posterior mean)."""
    mean = vae.encode(images.to(vae.device, torch.float32)).latent_dist.mean
    return ((mean - shift) * scaling).float()


@torch.no_grad()
def decode(vae, latents: Tensor, scaling: float, shift: float) -> Tensor:
    """Scaled latents (B, C, h, w) -> uint8 images (B, 3, H, W), the convention of the feature extractors."""
    x = vae.decode(latents.to(vae.device, torch.float32) / scaling + shift).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ----------------------------------------------------------------------------- the dataset


def read_metadata(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    if not path.is_file():
        raise BenchError(f"Latents folder {root} has no {META_FILE}; make it with `bench prepare-latents`.")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise BenchError(f"{path} is not valid JSON ({e}).") from None
    required = ("num_samples", "latent_shape", "scaling_factor", "vae_path", "vae_weights_sha256", "source", "resolution")
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BenchError(f"{path} lacks {', '.join(missing)}; it was not written by `bench prepare-latents`.")
    return meta


class LatentDataset(Dataset):
    """Latents in model space; images for evaluation by decoding with the recorded VAE.

    get() reads rows of the memory-mapped array; to_uint8() decodes (B, C, h, w) latents on the
    GPU when there is one, in chunks of `decode_batch_size`; reference() is the source image set.
    """

    kind = "images"
    latent = True
    decode_batch_size = 32

    def __init__(self, root: Path, meta: dict[str, Any], load_source: Callable[[DataConfig], Dataset]):
        self.root, self.meta = root, meta
        self._load_source = load_source  # bench.data.load_dataset, passed in: the loaders sit above this module
        try:
            self.latents = np.load(root / LATENTS_FILE, mmap_mode="r")
        except FileNotFoundError:
            raise BenchError(f"Latents folder {root} has no {LATENTS_FILE}; make it again with `bench prepare-latents`.") from None
        except ValueError as e:
            raise BenchError(f"{root / LATENTS_FILE} is not a readable .npy array ({e}).") from None
        expected = (int(meta["num_samples"]), *map(int, meta["latent_shape"]))
        if tuple(self.latents.shape) != expected:
            raise BenchError(f"{root / LATENTS_FILE} has shape {tuple(self.latents.shape)}, its metadata says {expected}.")
        self.num_classes = int(meta.get("num_classes") or 0)
        self.labels: Tensor | None = None
        if self.num_classes:
            try:
                self.labels = torch.from_numpy(np.load(root / LABELS_FILE)).long()
            except FileNotFoundError:
                raise BenchError(f"Latents folder {root} has {self.num_classes} classes but no {LABELS_FILE}.") from None
            if self.labels.shape != (expected[0],):
                raise BenchError(f"{root / LABELS_FILE} holds {tuple(self.labels.shape)} labels for {expected[0]} latents.")
        self.shape = expected[1:]
        self.name = f"latents:{root}"
        self.scaling = float(meta["scaling_factor"])
        self.shift = float(meta.get("shift_factor") or 0.0)
        self.vae_path = vae_folder(meta["vae_path"])  # fail now, not at the end of training
        self.decoder_name = f"AutoencoderKL sha256:{meta['vae_weights_sha256'][:16]}"
        self._vae = None
        self._reference: Dataset | None = None

    def __len__(self):
        return len(self.latents)

    def get(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(np.asarray(self.latents[idx], dtype=np.float32))
        return x, (self.labels[idx] if self.labels is not None else None)

    def label_probs(self):
        return label_frequencies(self.labels, self.num_classes)

    def fingerprint(self):
        keys = ("latents_sha256", "labels_sha256", "vae_weights_sha256", "scaling_factor", "shift_factor", "latent_shape")
        return hashlib.sha256(json.dumps({k: self.meta.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]

    def reference(self) -> Dataset:
        """The real images the latents were made from, at the same resolution."""
        if self._reference is None:
            try:
                self._reference = self._load_source(DataConfig(spec=self.meta["source"], resolution=int(self.meta["resolution"])))
            except BenchError as e:
                raise BenchError(f"The real images of {self.root} are needed as FID's reference but cannot be read "
                                 f"({str(e).rstrip('.')}); fix \"source\" in {self.root / META_FILE}.") from None
            if self._reference.fingerprint() != self.meta.get("source_fingerprint"):
                print(f"warning: the images at {self.meta['source']} changed since {self.root} was encoded.")
        return self._reference

    def vae(self, device: torch.device):
        """The recorded VAE on `device`, loaded once; its weights must be the ones that made the latents."""
        if self._vae is None:
            sha = vae_weights_sha256(self.vae_path)
            if sha != self.meta["vae_weights_sha256"]:
                raise BenchError(f"The VAE weights at {self.vae_path} are not the ones {self.root} was encoded with "
                                 f"(sha256 {sha[:16]} instead of {self.meta['vae_weights_sha256'][:16]}).")
            self._vae = load_vae(self.vae_path, device)
        elif self._vae.device != device:
            self._vae = self._vae.to(device)
        return self._vae

    def to_uint8(self, x: Tensor) -> Tensor:
        """Scaled latents (B, C, h, w) -> decoded uint8 images (B, 3, H, W), on x's device."""
        dev = x.device if x.device.type != "cpu" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        vae = self.vae(dev)
        parts = [decode(vae, x[i: i + self.decode_batch_size], self.scaling, self.shift).to(x.device)
                 for i in range(0, len(x), self.decode_batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, *self.meta["image_shape"][1:], dtype=torch.uint8)



def load_latents(path: str, cfg: DataConfig, load_source: Callable[[DataConfig], Dataset]) -> LatentDataset:
    """`latents:DIR` -> LatentDataset (the folder written by `bench prepare-latents`)."""
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise BenchError(f"Latents folder {path!r} does not exist; make it with `bench prepare-latents`.")
    root = root.resolve()
    meta = read_metadata(root)
    if cfg.resolution and cfg.resolution != int(meta["resolution"]):
        raise BenchError(f"data.resolution = {cfg.resolution} but {root} was encoded at {meta['resolution']} px.")
    return LatentDataset(root, meta, load_source)
