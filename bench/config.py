"""bench.toml + --set overrides -> one resolved, validated `Config`.

The defaults are the fields of the dataclasses below (sections `data`, `model`, `train`, `eval`)
and of each method's Options (section `method`; the options every method has, `M` and `cfg_scale`,
in methods/base.py), each commented with its source. bench.toml's `[profiles.<name>.<section>]`
tables override them; `[defaults.<section>]` (same layout, every profile) is only for a deliberate
change of a default, and tests/test_defaults.py fails on a key there that repeats its field's value. Keys that only one method has live under
`[profiles.<name>.methods.<method>]` (e.g. the shortcut's `k`), so a profile can carry them
without breaking the other methods. On the command line `--set section.key=value`, or just
`--set key=value` when the key names exactly one field.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.errors import BenchError


@dataclass
class DataConfig:
    spec: str = "digits"  # toy:NAME | digits | cifar10[:PATH] | imagefolder:PATH | npz:PATH | latents:DIR
    resolution: int = 0  # imagefolder: side after resize + centre crop (0: keep the files' size)
    num_train: int = 50_000  # toys: points drawn once for training (fixed by data_seed)
    data_seed: int = 1234  # toys: seed of the training points and of the reference set
    labels: bool = True  # train on the dataset's labels (class-conditional, CFG); false: unconditional, labels ignored
    # training-time augmentation of image batches: "none" or "flip" (each row flipped left-right with probability 1/2,
    # as EDM's --xflip and MeanFlow's CIFAR-10 training); evaluation's reference set is never augmented
    augment: str = "none"


@dataclass
class ModelConfig:
    arch: str = "mlp"  # "mlp" (vectors, 2-D points), "dit" or "unet" (images / latents)
    preset: str = ""  # size preset: DiT (bench.models.dit.PRESETS) or U-Net (bench.models.unet.PRESETS); overrides hidden/depth/heads/patch/channel_mult/attn_resolutions
    hidden: int = 512  # width (mlp, dit); base channels (unet)
    depth: int = 3  # hidden layers (mlp), transformer blocks (dit) or residual blocks per resolution (unet)
    heads: int = 4  # attention heads (dit, unet)
    patch: int = 2  # patch size (dit)
    channel_mult: str = "1,2"  # unet: channels per resolution as multiples of hidden, highest resolution first
    attn_resolutions: str = ""  # unet: resolutions (sides) with self-attention after each block, e.g. "16" (the bottleneck always has one)
    dropout: float = 0.0  # unet: dropout before each residual block's second convolution (DDPM++ on CIFAR-10: 0.13)
    scale_shift: bool = False  # unet: the embedding scales and shifts the normalised activations (ADM); False adds it (DDPM++)
    d_scale: float = 1.0  # sinusoid scale of the step-size input d (t uses 1000): 1 keeps the levels d = 1/M, ..., 1 close, so they share what they learn


@dataclass
class TrainConfig:
    steps: int = 6000  # optimiser steps
    batch_size: int = 256  # rows per step, all methods alike
    # the shortcut paper's optimiser: AdamW, constant lr, betas (0.9, 0.999), weight decay 0.1, EMA 0.999
    lr: float = 1e-4  # AdamW peak learning rate
    # "constant" (the paper's) or "cosine": half a cosine from lr to 0 over train.steps (progressive
    # distillation: per stage, as CFD's code); lr_warmup steps come first
    lr_schedule: str = "constant"
    lr_warmup: int = 0  # steps of linear warm-up from 0 to lr before the schedule
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.1
    ema_decay: float = 0.999  # EMA of the weights; evaluation and bootstrap targets use it
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    label_dropout: float = 0.0  # p_uncond: share of rows whose label becomes the null class (CFG)
    checkpoint_every: int = 2000  # steps between atomic checkpoints (one more at the end)
    log_every: int = 50  # steps between train/loss points (and the non-finite check)
    # the failure rule (bench/evaluation/levels.py FailureRule) on the method's loss ladder: log points per
    # window (0 = off); "warn" (one line, run tag train.failing_level) or "stop" (the run ends FAILED,
    # failure.reason = failure_rule; a sweep records the trial as failed and goes on); a level fails when its
    # loss / target second moment rises to failure_growth x its low, or, for the top level, stays above
    # failure_ceiling (0 = no ceiling: its scale depends on the data and model, a profile sets it)
    divergence_points: int = 5
    failure_rule: str = "warn"
    failure_growth: float = 4.0
    failure_ceiling: float = 0.0
    eval_every: int = 0  # steps between evaluations during training (0: only at the end)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast, CUDA only)
    compile: bool = False  # torch.compile the model (CUDA)
    compile_mode: str = "default"  # torch.compile mode: "reduce-overhead" adds CUDA graphs (small, launch-bound models)
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch CPU threads (0: torch's default)
    workers: int = 1  # data-parallel processes (Ray Train TorchTrainer when > 1); batch_size stays the global batch
    gpus_per_worker: int = -1  # 1 or 0 (CPU, gloo); -1: 1 when this machine has CUDA and device is not cpu


@dataclass
class EvalConfig:
    num_samples: int = 2000  # generated samples per number of sampling steps
    batch_size: int = 1000  # samples generated per batch
    steps: str = ""  # comma list of sampling steps, each dividing M ("" = 1, 2, 4, ..., M)
    features: str = "auto"  # auto | coords | digits-classifier | inception | raw
    fid_backend: str = "torch-fidelity"  # or "clean-fid" (same features, same FID formula)
    inception_weights: str = ""  # path to weights-inception-2015-12-05-6726825d.pth (or $BENCH_INCEPTION_WEIGHTS)
    kid: bool = True  # KID (images)
    prc: bool = True  # precision / recall (images)
    save_samples: int = 10_000  # first samples per n stored as samples/steps_{n}.npz
    precision: str = "auto"  # sampling (and VAE decoding): auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32 (TF32 matmuls on CUDA)
    compile: bool = False  # torch.compile the sampler's model calls once for a fixed batch shape (the last batch is padded)
    compile_mode: str = "default"  # as train.compile_mode; "reduce-overhead" (CUDA graphs) pays for small models
    # the evaluation every train.eval_every steps: its own n list and sample count (a cheap signal a sweep's
    # scheduler reads as during/fid_n{n}); "" = the final evaluation's list
    during_steps: str = "1,4"
    during_samples: int = 1000
    forward_rows: int = 0  # rows per network call while sampling (0 = auto: 256 on a CPU, where large calls leave the cache; the whole batch elsewhere); the same numbers


DEFAULT_SEED = 0  # the run seed where no profile, --seed or --set names one

LR_SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("none", "flip")
FAILURE_RULES = ("warn", "stop")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


@dataclass
class Config:
    method_name: str
    profile: str
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    method: Any  # the method's Options dataclass (methods.base.MethodOptions subclass)

    def flat(self) -> dict[str, Any]:
        """Every resolved key as `section.key` -> value (MLflow params, the saved config)."""
        out: dict[str, Any] = {"method": self.method_name, "profile": self.profile, "seed": self.seed}
        for section in ("data", "model", "train", "eval", "method"):
            for f in fields(getattr(self, section)):
                out[f"{section}.{f.name}"] = getattr(getattr(self, section), f.name)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict; `Config.from_dict` inverts it (checkpoints, Ray trials)."""
        return {
            "method_name": self.method_name,
            "profile": self.profile,
            "seed": self.seed,
            **{s: dataclasses.asdict(getattr(self, s)) for s in ("data", "model", "train", "eval", "method")},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        from methods import get_method, legacy_d_scale, legacy_options

        method_cls = get_method(d["method_name"])
        d = {**d, "model": dict(d["model"])}
        if "d_scale" not in d["model"]:  # stored before the key existed: the scale it was trained with
            d["model"]["d_scale"] = legacy_d_scale(d["method_name"], d["method"])
        return cls(
            method_name=d["method_name"],
            profile=d["profile"],
            seed=int(d["seed"]),
            method=method_cls.Options(**legacy_options(d["method_name"], d["method"])),
            **{s: SECTIONS[s](**d[s]) for s in SECTIONS},
        )

    def sampling_steps(self) -> list[int]:
        """Numbers of sampling steps evaluated: 1, 2, 4, ..., M unless `eval.steps` says."""
        M = self.method.M
        if not self.eval.steps.strip():
            return [2**i for i in range(M.bit_length()) if 2**i <= M]
        return sorted({int(s) for s in self.eval.steps.split(",") if s.strip()})

    def during_steps(self) -> list[int]:
        """Numbers of sampling steps of the evaluation during training (`eval.during_steps`, "" = the final list)."""
        if not self.eval.during_steps.strip():
            return self.sampling_steps()
        return sorted({int(s) for s in self.eval.during_steps.split(",") if s.strip()})


# ----------------------------------------------------------------------------- files


def default_config_path() -> Path:
    """./bench.toml if there is one, else the bench.toml of the checkout this package lives in."""
    env = os.environ.get("BENCH_CONFIG")
    if env:
        return Path(env)
    here = Path.cwd() / "bench.toml"
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[1] / "bench.toml"


def load_toml(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise BenchError(f"Config file {path} does not exist.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"Config file {path} is not valid TOML: {e}.") from None


# ----------------------------------------------------------------------------- parsing


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def key_types(method_name: str) -> dict[str, dict[str, Any]]:
    """section -> key -> type of every config key `method_name` has (its own Options under "method")."""
    from methods import get_method

    types = {s: _field_types(c) for s, c in SECTIONS.items()}
    types["method"] = _field_types(get_method(method_name).Options)
    return types


def canonical_key(key: str, method_name: str) -> str:
    """`section.key` or `seed`; a bare key that names exactly one field is accepted, as in --set."""
    types = key_types(method_name)
    return resolve_key(key, types, method_name, [f"{s}.{k}" for s in types for k in types[s]] + ["seed"])


def has_key(key: str, method_name: str) -> bool:
    """Whether `method_name` has the config key (`section.key`, or a bare key some section has), as --set names it."""
    if key == "seed":
        return True
    types = key_types(method_name)
    section, dot, name = key.partition(".")
    return name in types.get(section, {}) if dot else any(key in t for t in types.values())


def parse_value(key: str, raw: Any, typ: Any) -> Any:
    """Convert `raw` (a TOML value or a --set string) to `typ`, or say why not."""
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(str(raw).replace("_", ""))
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, (int, float)):
                return float(raw)
            return float(Fraction(str(raw).strip()))  # accepts "1/8"
        if typ is str:
            if isinstance(raw, (dict, list)):
                raise ValueError
            return str(raw)
    except (ValueError, ZeroDivisionError):
        pass
    else:
        return raw
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(typ, str(typ))
    raise BenchError(f"{key} expects {name}, got {raw!r}.")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        # bare names: compare the part after the dot too
        bare = {v.split(".")[-1]: v for v in valid}
        hit = difflib.get_close_matches(key.split(".")[-1], list(bare), n=1, cutoff=0.6)
        close = [bare[hit[0]]] if hit else []
    return f" Did you mean {close[0]}?" if close else ""


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise BenchError(f"--set takes key=value, got {item!r}.")
        key, value = item.split("=", 1)
        out.append((key.strip(), value.strip()))
    return out


# ----------------------------------------------------------------------------- resolution


def resolve(
    method_name: str,
    profile: str | None = None,
    overrides: list[str] | list[tuple[str, Any]] = (),
    data_spec: str | None = None,
    seed: int | None = None,
    config_path: Path | None = None,
    doc: dict[str, Any] | None = None,
) -> Config:
    """Defaults < profile < profile's per-method table < --data/--seed < --set, then validate."""
    from methods import get_method

    method_cls = get_method(method_name)
    doc = load_toml(config_path) if doc is None else doc
    profiles = doc.get("profiles", {})
    profile = profile or doc.get("default_profile", "digits")
    if profile not in profiles:
        raise BenchError(
            f"Unknown profile {profile!r}; known profiles: {', '.join(sorted(profiles))}."
            + _suggest(profile, list(profiles))
        )
    types = key_types(method_name)
    from methods.base import MethodOptions

    shared_method_keys = set(_field_types(MethodOptions))
    values: dict[str, dict[str, Any]] = {s: {} for s in types}
    top: dict[str, Any] = {"seed": DEFAULT_SEED}

    def apply_table(table: dict[str, Any], where: str, method_table: bool = False) -> None:
        for section, entries in table.items():
            if section in ("seed",):
                top["seed"] = parse_value(f"{where}.seed", entries, int)
                continue
            if section in ("methods", "description"):
                continue
            if section not in types or not isinstance(entries, dict):
                raise BenchError(f"Unknown config section {where}.{section}." + _suggest(section, list(types)))
            for key, raw in entries.items():
                valid = types[section]
                if section == "method" and not method_table and key not in shared_method_keys:
                    raise BenchError(
                        f"{where}.method.{key} is not shared by every method; put it under "
                        f"[{where}.methods.<name>]."
                    )
                if key not in valid:
                    raise BenchError(
                        f"Unknown config key {where}.{section}.{key}."
                        + _suggest(f"{section}.{key}", [f"{section}.{k}" for k in valid])
                    )
                values[section][key] = parse_value(f"{section}.{key}", raw, valid[key])

    def apply_layer(table: dict[str, Any], where: str) -> None:
        apply_table(table, where)
        # keys only this method has: [<where>.methods.<method>] (method keys, or whole sections)
        for key, v in table.get("methods", {}).get(method_name, {}).items():
            sub = {key: v} if isinstance(v, dict) else {"method": {key: v}}
            apply_table(sub, f"{where}.methods.{method_name}", method_table=True)

    apply_layer(doc.get("defaults", {}), "defaults")
    apply_layer(profiles[profile], f"profiles.{profile}")

    if data_spec is not None:
        values["data"]["spec"] = data_spec
    if seed is not None:
        top["seed"] = seed

    valid_keys = [f"{s}.{k}" for s in types for k in types[s]] + ["seed"]
    pairs = parse_overrides(overrides) if overrides and isinstance(overrides[0], str) else list(overrides)
    for key, raw in pairs:
        full = resolve_key(key, types, method_name, valid_keys)
        if full == "seed":
            top["seed"] = parse_value("seed", raw, int)
            continue
        section, name = full.split(".", 1)
        values[section][name] = parse_value(full, raw, types[section][name])

    cfg = Config(
        method_name=method_name,
        profile=profile,
        seed=top["seed"],
        method=method_cls.Options(**values["method"]),
        **{s: SECTIONS[s](**values[s]) for s in SECTIONS},
    )
    validate(cfg)
    return cfg


def resolve_key(key: str, types: dict[str, dict[str, Any]], method_name: str, valid_keys: list[str]) -> str:
    """`section.key` as given, or a bare key that names exactly one field."""
    if key == "seed":
        return key
    if "." in key:
        section, name = key.split(".", 1)
        if section in types and name in types[section]:
            return key
    else:
        owners = [s for s in types if key in types[s]]
        if len(owners) == 1:
            return f"{owners[0]}.{key}"
        if len(owners) > 1:
            raise BenchError(f"Config key {key!r} is ambiguous; write one of {', '.join(o + '.' + key for o in owners)}.")
    raise BenchError(f"Unknown config key {key!r} for method {method_name}." + _suggest(key, valid_keys))


def validate(cfg: Config) -> None:
    """Checks every method shares; the method's own checks come from Options.validate()."""
    if cfg.data.augment not in AUGMENTATIONS:
        raise BenchError(f"data.augment must be {' or '.join(AUGMENTATIONS)}, got {cfg.data.augment!r}.")
    m = cfg.method
    if m.M < 1 or m.M & (m.M - 1):
        raise BenchError(f"method.M must be a power of two (1, 2, 4, ..., 128, ...), got {m.M}.")
    for n in cfg.sampling_steps():
        if n < 1 or m.M % n:
            raise BenchError(f"eval.steps: {n} sampling steps do not divide M = {m.M}.")
    if cfg.train.eval_every < 0:
        raise BenchError(f"train.eval_every must be >= 0 steps (0 = no evaluation during training), got {cfg.train.eval_every}.")
    if cfg.train.eval_every:  # only read then: a profile with M < 4 keeps the default list when it does not evaluate
        try:
            during = cfg.during_steps()
        except ValueError:
            raise BenchError(f"eval.during_steps must be a comma list of integers, got {cfg.eval.during_steps!r}.") from None
        for n in during:
            if n < 1 or m.M % n:
                raise BenchError(f"eval.during_steps: {n} sampling steps do not divide M = {m.M}.")
        if cfg.eval.during_samples < 1:
            raise BenchError(f"eval.during_samples must be >= 1, got {cfg.eval.during_samples}.")
    if cfg.train.steps < 0 or cfg.train.batch_size < 1:
        raise BenchError("train.steps must be >= 0 and train.batch_size >= 1.")
    if cfg.train.lr_schedule not in LR_SCHEDULES:
        raise BenchError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.train.lr_schedule!r}.")
    if cfg.train.checkpoint_every < 1:
        raise BenchError(f"train.checkpoint_every must be >= 1 step (a checkpoint is also written at the end), "
                         f"got {cfg.train.checkpoint_every}.")
    if cfg.train.lr_warmup < 0:
        raise BenchError(f"train.lr_warmup must be >= 0 steps, got {cfg.train.lr_warmup}.")
    if cfg.train.divergence_points < 0:
        raise BenchError(f"train.divergence_points must be >= 0 (0 = no failure rule), got {cfg.train.divergence_points}.")
    if cfg.train.failure_rule not in FAILURE_RULES:
        raise BenchError(f"train.failure_rule must be {' or '.join(FAILURE_RULES)}, got {cfg.train.failure_rule!r}.")
    if not cfg.train.failure_growth > 1 or cfg.train.failure_ceiling < 0:
        raise BenchError(f"train.failure_growth must be > 1 and train.failure_ceiling >= 0 (0 = none), got "
                         f"{cfg.train.failure_growth} and {cfg.train.failure_ceiling}.")
    if cfg.train.workers < 1:
        raise BenchError(f"train.workers must be >= 1, got {cfg.train.workers}.")
    if cfg.train.batch_size % cfg.train.workers:
        raise BenchError(f"train.batch_size = {cfg.train.batch_size} (the global batch) does not divide into "
                         f"train.workers = {cfg.train.workers} equal shares.")
    if cfg.train.gpus_per_worker not in (-1, 0, 1):
        raise BenchError(f"train.gpus_per_worker must be 0, 1 or -1 (auto), got {cfg.train.gpus_per_worker}; "
                         "one process drives one GPU, so use train.workers for more GPUs.")
    if cfg.train.gpus_per_worker == 1 and cfg.train.device == "cpu":
        raise BenchError("train.gpus_per_worker = 1 contradicts train.device = cpu.")
    if not 0.0 <= cfg.train.label_dropout < 1.0:
        raise BenchError(f"train.label_dropout must be in [0, 1), got {cfg.train.label_dropout}.")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise BenchError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}.")
    if cfg.train.precision not in ("fp32", "bf16"):
        raise BenchError(f"train.precision must be fp32 or bf16, got {cfg.train.precision!r}.")
    for key, mode in (("train", cfg.train.compile_mode), ("eval", cfg.eval.compile_mode)):
        if mode not in COMPILE_MODES:
            raise BenchError(f"{key}.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}.")
    if cfg.eval.precision not in ("auto", "bf16", "fp32"):
        raise BenchError(f"eval.precision must be auto, bf16 or fp32, got {cfg.eval.precision!r}.")
    if cfg.model.arch not in ("mlp", "dit", "unet"):
        raise BenchError(f"model.arch must be mlp, dit or unet, got {cfg.model.arch!r}.")
    if cfg.model.preset and cfg.model.arch in ("dit", "unet"):
        from bench.models.dit import PRESETS as DIT_PRESETS
        from bench.models.unet import PRESETS as UNET_PRESETS

        known = DIT_PRESETS if cfg.model.arch == "dit" else UNET_PRESETS
        if cfg.model.preset not in known:
            raise BenchError(f"model.preset {cfg.model.preset!r} is not a {cfg.model.arch} preset; known: {', '.join(known)}.")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise BenchError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}.")
    if not cfg.model.d_scale > 0:
        raise BenchError(f"model.d_scale must be > 0, got {cfg.model.d_scale}.")
    if cfg.eval.fid_backend not in ("torch-fidelity", "clean-fid"):
        raise BenchError(f"eval.fid_backend must be torch-fidelity or clean-fid, got {cfg.eval.fid_backend!r}.")
    if cfg.eval.features not in ("auto", "coords", "digits-classifier", "inception", "raw"):
        raise BenchError(f"eval.features must be auto, coords, digits-classifier, inception or raw, got {cfg.eval.features!r}.")
    if cfg.eval.num_samples < 2 or cfg.eval.batch_size < 1:
        raise BenchError("eval.num_samples must be >= 2 and eval.batch_size >= 1.")
    if cfg.method.cfg_scale < 0:
        raise BenchError(f"method.cfg_scale must be >= 0, got {cfg.method.cfg_scale}.")
    m.validate()


def pick_device(name: str) -> "torch.device":
    """train.device (auto, cpu, cuda, cuda:1, ...) as a torch device; a clear error where CUDA is missing."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"train.device = {name} but no CUDA device is available; use auto or cpu.")
    return dev
