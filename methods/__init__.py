"""The method registry: one file per method, each behind `methods.base.Method`."""

from __future__ import annotations

from bench.errors import BenchError
from methods.base import Batch, Method, MethodOptions, Targets
from methods.consistency import ConsistencyDistillation, ConsistencyTraining, legacy_cd_options
from methods.diffusion import Diffusion
from methods.flow_matching import FlowMatching
from methods import meanflow
from methods.meanflow import MeanFlow
from methods.pd_variants import ClassifierDistillation, RelationalDistillation, legacy_pd_variant_options
from methods.progressive import Progressive, legacy_progressive_options
from methods.reflow import LiveReflow, Reflow, legacy_live_reflow_options
from methods.shortcut import Shortcut

METHODS: dict[str, type[Method]] = {
    FlowMatching.name: FlowMatching,
    Shortcut.name: Shortcut,
    Progressive.name: Progressive,
    ConsistencyTraining.name: ConsistencyTraining,
    ConsistencyDistillation.name: ConsistencyDistillation,
    Reflow.name: Reflow,
    LiveReflow.name: LiveReflow,
    MeanFlow.name: MeanFlow,
    Diffusion.name: Diffusion,
    ClassifierDistillation.name: ClassifierDistillation,
    RelationalDistillation.name: RelationalDistillation,
}


# model.d_scale of a config stored before the key existed: d was embedded at 1000 unless listed here
LEGACY_D_SCALE = {MeanFlow.name: meanflow.legacy_d_scale}


def legacy_d_scale(method_name: str, options: dict) -> float:
    """A config migration, kept off the method interface: the d_scale a stored run was trained with."""
    return LEGACY_D_SCALE[method_name](options) if method_name in LEGACY_D_SCALE else 1000.0


# method options of a config stored before a key existed: the values that run trained with
LEGACY_OPTIONS = {LiveReflow.name: legacy_live_reflow_options, Progressive.name: legacy_progressive_options,
                  ClassifierDistillation.name: legacy_pd_variant_options, RelationalDistillation.name: legacy_pd_variant_options,
                  ConsistencyDistillation.name: legacy_cd_options}


def legacy_options(method_name: str, options: dict) -> dict:
    """A config migration, kept off the method interface: a stored run's method options as it ran."""
    return LEGACY_OPTIONS[method_name](options) if method_name in LEGACY_OPTIONS else options


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise BenchError(f"Unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}.{hint}")
    return METHODS[name]


__all__ = ["METHODS", "Batch", "Method", "MethodOptions", "Targets", "get_method", "legacy_d_scale", "legacy_options"]
