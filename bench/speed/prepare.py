"""`bench speed`'s setup: one config per method, the data (or synthetic latents), trainers for timing."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.speed.cost import BASELINE


def parse_synthetic(spec: str) -> tuple[tuple[int, ...], int]:
    """`synthetic:4x32x32` or `synthetic:4x32x32:1000` -> ((4, 32, 32), classes)."""
    parts = spec.split(":")
    try:
        shape = tuple(int(s) for s in parts[1].lower().split("x"))
        classes = int(parts[2]) if len(parts) > 2 else 0
        if len(parts) > 3 or not shape or min(shape) < 1 or classes < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise BenchError(f"--data {spec!r}: write synthetic:CxHxW or synthetic:CxHxW:CLASSES, e.g. synthetic:4x32x32.") from None
    return shape, classes


def synthetic_data(spec: str, size: int = 1024, seed: int = 0):
    """Standard-normal 'images' of the given shape (latent stand-ins): timing only, no decoder."""
    from bench.data import TensorData

    shape, classes = parse_synthetic(spec)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *shape, generator=g)
    y = torch.randint(classes, (size,), generator=g) if classes else None
    kind = "images" if len(shape) == 3 else "vectors"
    return TensorData(spec, kind, x, y, classes)


@dataclass
class Setup:
    """What every measurement shares: configs per method, data, device."""

    configs: dict[str, Any]  # method name -> resolved Config
    data: Any
    device: torch.device
    skipped: list[str] = field(default_factory=list)  # methods left out and why
    trainers: dict[str, Any] = field(default_factory=dict)  # filled by time_training; sampling reuses their EMA


def _model_overrides(model: str | None) -> list[tuple[str, str]]:
    if not model:
        return []
    if model == "mlp":
        return [("model.arch", "mlp")]
    from bench.models.dit import PRESETS
    from bench.models.unet import PRESETS as UNET_PRESETS

    if model in UNET_PRESETS:
        return [("model.arch", "unet"), ("model.preset", model)]
    if model not in PRESETS:
        raise BenchError(f"--model {model!r} is neither mlp nor a DiT preset ({', '.join(PRESETS)}) nor a U-Net preset "
                         f"({', '.join(UNET_PRESETS)}).")
    return [("model.arch", "dit"), ("model.preset", model)]


def _split_overrides(overrides: list[str], names: list[str], profile: str | None, config_path) -> dict[str, list[str]]:
    """--set keys that only some methods have (e.g. k) go to those methods; a key no method has is an error."""
    from bench.config import has_key, load_toml, parse_overrides, resolve

    doc = load_toml(config_path)
    out: dict[str, list[str]] = {n: [] for n in names}
    for key, value in parse_overrides(overrides):
        takers = [n for n in names if has_key(key, n)]
        if not takers:
            resolve(names[0], profile, [(key, value)], doc=doc)  # raises the usual one sentence
        for n in takers:
            out[n].append(f"{key}={value}")
    return out


def setup(profile: str | None, model: str | None, data_spec: str | None, overrides: list[str], methods: str,
          config_path: Path | None = None) -> Setup:
    """Resolve one config per method (same profile, model, data, overrides) and load the data once."""
    from bench.config import load_toml, resolve
    from bench.data import load_dataset
    from bench.config import pick_device
    from methods import METHODS, get_method

    if methods in ("", "no-teacher"):
        names = [n for n, c in METHODS.items() if not c.needs_teacher]
        skipped = [f"{n} (needs a teacher; name it in --methods to time it with an untrained one)"
                   for n, c in METHODS.items() if c.needs_teacher]
    elif methods == "all":
        names, skipped = list(METHODS), []
    else:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        for n in names:
            get_method(n)
        skipped = []
    if BASELINE not in names:
        names.insert(0, BASELINE)  # every ratio is to flow matching
    names.sort(key=lambda n: n != BASELINE)

    doc = load_toml(config_path)
    extra = [f"{k}={v}" for k, v in _model_overrides(model)]
    per_method = _split_overrides(list(overrides), names, profile, config_path)
    spec = data_spec
    configs = {n: resolve(n, profile, extra + per_method[n], data_spec=spec, doc=doc) for n in names}
    base = configs[BASELINE]
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)
    device = pick_device(base.train.device)
    spec = base.data.spec
    data = synthetic_data(spec, seed=base.data.data_seed) if spec.startswith("synthetic:") else load_dataset(base.data)
    return Setup(configs, data, device, skipped)


def _make_method(cfg, num_classes: int, teacher: nn.Module | None):
    from methods import get_method

    # every method takes train_steps (methods.base.Method); the ones whose __init__ is (*args, **kwargs) hid it from a
    # signature check, so reflow spread its one-off pairs over 1 step (predicted 86x on the H200) and PD / CT
    # timed the stage schedule of a 0-step run
    return get_method(cfg.method_name)(cfg.method, num_classes, teacher, train_steps=cfg.train.steps)


def build_trainer(cfg, data, device):
    """A Trainer for timing: the run's initialisation seed; a frozen untrained teacher when the method needs one."""
    from bench.classifiers import classifier_for
    from bench.models import build_model
    from bench.train.trainer import Trainer
    from methods import get_method

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.shape, data.num_classes)
    teacher = None
    if get_method(cfg.method_name).needs_teacher:
        teacher = copy.deepcopy(model).to(device).requires_grad_(False).eval()
    method = _make_method(cfg, data.num_classes, teacher)
    method.setup(data, device, classifier_for(method, data, device))  # the Trainer's own setup() call then changes nothing
    return Trainer(cfg, method, model, data, device, progress=False)
