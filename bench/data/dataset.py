"""The `Dataset` interface every loader returns (bench/data/, bench/data/latents.py): what training
reads and what evaluation needs to know about the data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor


@dataclass
class ToyModes:
    """What counts as a mode of a 2-D toy: `assign(points) -> (N,) mode index or -1`."""

    count: int
    assign: Callable[[Tensor], Tensor]
    description: str


class Dataset:
    """A training set plus what evaluation needs to know about it.

    kind: "points" (2-D toys), "images" (decoded with `to_uint8`), "vectors" (anything else).
    shape: one sample's shape; num_classes: 0 when unconditional.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_classes: int = 0
    modes: ToyModes | None = None
    latent: ClassVar[bool] = False  # model space is a VAE's latents (images only after decoding)

    @property
    def feature_space(self) -> str:
        """What evaluation measures in when eval.features = auto (bench.evaluation.metrics.FeatureSpace):
        the coordinates (points), the raw values (vectors), Inception-v3's features (images). A dataset
        with a feature network of its own says so here (digits: "digits-classifier")."""
        return {"points": "coords", "vectors": "raw"}.get(self.kind, "inception")

    @property
    def classifier(self) -> str | None:
        """The frozen classifier that methods distilling through one (CFD, RDD) use when method.classifier
        = auto (bench.classifiers): ImageNet's ResNet-18 for images, None for points and vectors. A dataset
        with a classifier of its own says so here (digits: "digits-probe")."""
        return "resnet18" if self.kind == "images" else None

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B,) long -> x (B, *shape) float32, y (B,) long or None."""
        raise NotImplementedError

    def label_probs(self) -> Tensor | None:
        """Class frequencies (num_classes,) used to draw labels for generated samples."""
        return None

    def reference(self) -> "Dataset":
        """The real samples evaluation compares against (the data itself unless said)."""
        return self

    def fingerprint(self) -> str:
        """A short hash that changes whenever the data change (cache keys)."""
        raise NotImplementedError

    def to_uint8(self, x: Tensor) -> Tensor:
        """Model-space images (B, C, H, W) in [-1, 1] -> uint8 (B, 3, H, W) for feature extractors."""
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img[:, :3]


def label_frequencies(labels: Tensor | None, num_classes: int) -> Tensor | None:
    """Class frequencies (num_classes,) of integer labels; None for unlabelled data."""
    if labels is None or num_classes == 0:
        return None
    counts = torch.bincount(labels, minlength=num_classes).float()
    return counts / counts.sum()


def flip_rows(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image of x (B, C, H, W) mirrored left-right with probability 1/2 (EDM's --xflip, MeanFlow's CIFAR-10
    training), the coin per row drawn from `generator` on its device; a new tensor, x untouched."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device).view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
