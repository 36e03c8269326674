"""One source for the defaults: the dataclasses (bench/config.py, each method's Options).

bench.toml's [defaults.*] tables may only change a default deliberately (listed below); a key there
that repeats its field's value is a second copy that can drift from the first.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.config import DEFAULT_SEED, SECTIONS, load_toml, parse_value, resolve
from methods import METHODS

# [defaults.*] keys that change a dataclass default for every profile, with why; none at present
DELIBERATE: dict[str, str] = {}


def default_values(doc: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every key of doc's [defaults.*] as `where` -> (its value, the value the dataclasses give it).

    A shared `method` key is compared with every method's Options. The dataclass side is an instance
    built with no arguments, so the shortcut's recipe-set knobs (k, flow_d, ...) compare by the value
    they resolve to."""
    out: dict[str, tuple[Any, Any]] = {}

    def compare(where: str, cls: type, key: str, raw: Any) -> None:
        default = getattr(cls(), key)
        out[where] = (parse_value(where, raw, type(default)), default)

    defaults = doc.get("defaults", {})
    for section, table in defaults.items():
        if section == "seed":
            out["defaults.seed"] = (table, DEFAULT_SEED)
        elif section == "method":
            for key, raw in table.items():
                for name, method in METHODS.items():
                    compare(f"defaults.method.{key} ({name})", method.Options, key, raw)
        elif section == "methods":
            for name, entries in table.items():
                for key, raw in entries.items():
                    if isinstance(raw, dict):  # a whole section for one method
                        for sub, value in raw.items():
                            compare(f"defaults.methods.{name}.{key}.{sub}", SECTIONS[key], sub, value)
                    else:
                        compare(f"defaults.methods.{name}.{key}", METHODS[name].Options, key, raw)
        else:
            for key, raw in table.items():
                compare(f"defaults.{section}.{key}", SECTIONS[section], key, raw)
    return out


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_bench_toml_defaults_repeat_no_dataclass_default():
    values = default_values(load_toml())
    repeats = [where for where, (value, default) in values.items() if same(value, default)]
    assert not repeats, f"bench.toml [defaults] repeats the dataclass defaults of {repeats}; delete them there"
    unlisted = [where for where in values if where not in DELIBERATE]
    assert not unlisted, f"bench.toml [defaults] changes {unlisted} for every profile; list them in DELIBERATE with why"
    assert set(DELIBERATE) <= set(values), "a DELIBERATE override is gone from bench.toml; drop it from the list"


def test_the_check_finds_a_repeated_and_a_changed_default():
    doc = {"defaults": {
        "seed": 0,
        "train": {"lr": 1e-4, "steps": 10},
        "method": {"M": 128},
        "methods": {"meanflow": {"adaptive_p": 1.0, "mean_fraction": 0.5},
                    "shortcut": {"k": "1/4", "eval": {"num_samples": 2000}}},
    }}
    values = default_values(doc)
    repeats = {where for where, (value, default) in values.items() if same(value, default)}
    assert repeats == {"defaults.seed", "defaults.train.lr", "defaults.methods.meanflow.adaptive_p",
                       "defaults.methods.shortcut.k", "defaults.methods.shortcut.eval.num_samples"} | {
        f"defaults.method.M ({name})" for name in METHODS}
    assert set(values) - repeats == {"defaults.train.steps", "defaults.methods.meanflow.mean_fraction"}


# What a bare profile resolves to: the published settings bench.toml's [defaults] used to repeat
# (the shortcut paper's optimiser; each baseline's paper or released code), written out by hand.
SHARED = {"train.lr": 1e-4, "train.lr_schedule": "constant", "train.beta1": 0.9, "train.beta2": 0.999,
          "train.weight_decay": 0.1, "train.ema_decay": 0.999, "method.M": 128, "method.cfg_scale": 1.0, "seed": 0}
PER_METHOD = {
    "flow_matching": {},
    "shortcut": {"recipe": "paper", "k": 0.25, "flow_d": "zero", "levels": "uniform", "eval_weights": "ema"},
    # PD as kvfrans/shortcut-models runs it: targets_progressive.py lines 34/49 clip x_t2 to [-4, 4]; train.py line 140
    # ignore_dt for PD (d = 0 everywhere); no label dropout in PD's targets; one schedule for the run (lines 146-153)
    "progressive": {"refresh_from": "ema", "cfg": "baked", "final_steps": 1, "clip": 4.0, "student_d": "zero",
                    "dropout_rows": "none", "lr_per_stage": False, "reading": "final"},
    "consistency_training": {"schedule": "authors", "target_decay": 0.95},
    # targets_consistency_distillation.py line 26 clips x_t2 to [-4, 4], line 27 reads it with the training EMA
    "consistency_distillation": {"target_decay": 0.95, "target": "training_ema", "clip": 4.0},
    "reflow": {"num_pairs": 50_000},
    "live_reflow": {"recipe": "authors", "rollout_steps": 8, "k": 0.125, "flow_d": "min"},
    "meanflow": {"mean_fraction": 0.25, "adaptive_p": 1.0, "time_input_scale": 0.01},
    "diffusion": {"parameterization": "v", "num_timesteps": 1024},
    # the releases stop at the 4-step student (8 -> 4 with the classifier) and step each classifier stage with Adam
    # 5e-5, cosine to 0, clip 1.0, no EMA (zju-SWJ/RCFD RCFD.py lines 151-152, 188; config/CIFAR10_RCFD.txt);
    # RDD's feature temperature 0.9 (cantbebetter2/RDD train_rdd.sh, --temperature 0.9)
    "cfd": {"cfg": "baked", "final_steps": 4, "loss_stages": "4", "lambda_pd": 0.0, "feature_temperature": 0.95,
            "beta": 0.003, "gamma": 0.75, "stage_optimiser": "released", "stage_lr": 5e-5},
    "rdd": {"cfg": "baked", "final_steps": 4, "loss_stages": "4", "lambda_pd": 0.0, "feature_temperature": 0.9,
            "beta": 0.0, "pair_weight": 1.0, "pair_temperature": 1.0, "memory_weight": 0.1, "memory_temperature": 0.1,
            "queue_size": 20_000, "queue_update": 128, "num_anchors": 4096, "anchors": "fixed",
            "stage_optimiser": "released", "stage_lr": 5e-5},
}


def test_every_method_has_its_expected_defaults():
    assert set(PER_METHOD) == set(METHODS)


@pytest.mark.parametrize("method", sorted(PER_METHOD))
def test_a_bare_profile_resolves_to_the_published_defaults(method):
    flat = resolve(method, "bare", doc={"profiles": {"bare": {}}}).flat()
    expected = {**SHARED, **{f"method.{k}": v for k, v in PER_METHOD[method].items()}}
    got = {k: flat[k] for k in expected}
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}
