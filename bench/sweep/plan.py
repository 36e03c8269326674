"""A sweep's plan: every trial's configuration resolved and checked before anything is written, and
which keys are training-time (one model per value) or sampling-time (one model evaluated per value)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.sweep.spec import PATH_DATA, SweepFile, draw_values, load_sweep


@dataclass
class Point:
    """One child run: a training configuration at one combination of sampling-time values."""

    key: str  # stable id within its trial (hash of the swept values)
    values: dict[str, Any]  # every swept key -> its resolved value
    cfg: dict[str, Any]  # Config.to_dict()


@dataclass
class Trial:
    """One Ray trial: one trained model; its first point trains, the others evaluate that checkpoint."""

    key: str
    index: int
    values: dict[str, Any]  # the training-time swept values
    points: list[Point]

    def payload(self) -> dict[str, Any]:
        return {"key": self.key, "index": self.index, "label": label(self.values),
                "points": [{"key": p.key, "label": label(p.values), "cfg": p.cfg} for p in self.points]}


@dataclass
class Plan:
    method: str
    experiment: str
    sweeps: list[SweepFile]
    base: Any  # the Config without the swept values
    times: dict[str, str]  # swept key -> training | sampling (after the method's say)
    notes: list[str]  # where the method overrode the sweep file
    values: dict[str, list]  # swept key -> its distinct values
    trials: list[Trial]
    cpus: float  # per trial
    gpus: float | None  # per trial; None: one when the cluster has GPUs and train.device allows
    threads: int  # torch threads per trial
    local_checks: list[Any] = field(default_factory=list)  # configs to check on this machine when Ray is local

    @property
    def keys(self) -> list[str]:
        return list(self.times)

    @property
    def report_keys(self) -> list[str]:
        """The `sweep.keys` tag: what `bench report` colours by (seeds are spread, not lines)."""
        return [k for k in self.keys if k != "seed"] or self.keys

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.sweeps)

    def points(self) -> list[Point]:
        return [p for t in self.trials for p in t.points]

    def hash(self) -> str:
        """Identifies the sweep (tag `sweep.hash`): `--resume` finds its parent run by it."""
        doc = {"method": self.method, "experiment": self.experiment, "cpus": self.cpus, "gpus": self.gpus,
               "trials": [[t.key, [p.cfg for p in t.points]] for t in self.trials]}
        return _hash(doc, 16)


def _hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in values.items())


def format_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def decide_time(key: str, said: str, method_cls: type, where: Path, options=None) -> tuple[str, str | None]:
    """(training | sampling, a note when the method overrides the file); options: the base config's method options."""
    section, _, name = key.partition(".")
    if section == "method":
        sampling = method_cls.is_sampling_time(name, options) if options is not None else name in method_cls.sampling_time_options
        t = "sampling" if sampling else "training"
        note = None if t == said else f"{key} is {t}-time for {method_cls.name} (the sweep file says {said}-time)"
        return t, note
    if said == "sampling" and section != "eval":
        raise BenchError(f"{key} is fixed before training; the sweep file {where} cannot mark it sampling-time.")
    return said, None


def _absolute_paths(cfg):
    """Trials run in another working directory (and maybe on another machine): absolute paths."""
    prefix, sep, arg = cfg.data.spec.partition(":")
    if prefix in PATH_DATA and arg and not Path(arg).expanduser().is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, spec=f"{prefix}{sep}{Path(arg).expanduser().resolve()}"))
    w = cfg.eval.inception_weights
    if w and not Path(w).expanduser().is_absolute():
        cfg = replace(cfg, eval=replace(cfg.eval, inception_weights=str(Path(w).expanduser().resolve())))
    return cfg


def build_plan(method: str, profile: str | None = None, overrides: list = (), sweeps: list[str] = (), *,
               data_spec: str | None = None, seed: int | None = None, config_path: Path | None = None,
               experiment: str | None = None) -> Plan:
    """Every trial's configuration, resolved and checked; nothing is written."""
    from bench.config import canonical_key, load_toml, parse_overrides, resolve
    from methods import get_method

    if not sweeps:
        raise BenchError("No sweep given; name one of sweeps/ or a .toml file with --sweep.")
    method_cls = get_method(method)
    doc = load_toml(config_path)
    pairs = parse_overrides(list(overrides)) if overrides and isinstance(overrides[0], str) else list(overrides)
    base = resolve(method, profile, pairs, data_spec=data_spec, seed=seed, doc=doc)
    if getattr(base.train, "workers", 1) > 1:
        raise BenchError("train.workers > 1 (data parallel) is not available inside a sweep; give each trial GPUs with [resources] instead.")
    set_keys = {canonical_key(k, method) for k, _ in pairs}
    files = [load_sweep(s) for s in sweeps]

    times: dict[str, str] = {}
    notes: list[str] = []
    canon: dict[str, str] = {}
    owner: dict[str, Path] = {}
    for f in files:
        for k in f.keys:
            full = canonical_key(k.key, method)
            if full in owner:
                raise BenchError(f"Config key {full} is swept by both {owner[full]} and {f.path}.")
            if full in set_keys:
                raise BenchError(f"Config key {full} is both swept (by {f.path}) and set with --set; drop one.")
            owner[full], canon[k.key] = f.path, full
            times[full], note = decide_time(full, k.time, method_cls, f.path, base.method)
            if note:
                notes.append(note)
    resources: dict[str, float] = {}
    for f in files:
        for k, v in f.resources.items():
            if k in resources and resources[k] != v:
                raise BenchError(f"The sweep files ask for different resources.{k} ({resources[k]:g} and {v:g}).")
            resources[k] = v

    train_combos: list[dict] = [{}]
    sampling: dict[str, list] = {}
    for f in files:
        combos, samp = draw_values(f, times, canon)
        train_combos = [{**a, **b} for a in train_combos for b in combos]
        sampling.update(samp)
    sampling_combos = [dict(zip(sampling, vs)) for vs in itertools.product(*sampling.values())]

    cpus = resources.get("cpus", float(base.train.threads) if base.train.threads > 0 else 1.0)
    threads = max(1, math.floor(cpus))
    trials = []
    for i, tv in enumerate(train_combos):
        points = []
        for sv in sampling_combos:
            swept = {**tv, **sv}
            cfg = resolve(method, profile, pairs + list(swept.items()) + [("train.threads", threads)],
                          data_spec=data_spec, seed=seed, doc=doc)
            cfg = _absolute_paths(cfg)
            flat = cfg.flat()
            values = {k: flat[k] for k in swept}
            points.append(Point(_hash(values), values, cfg.to_dict()))
        tvals = {k: points[0].values[k] for k in tv}
        trials.append(Trial(_hash(tvals), i, tvals, points))
    keys = [k for k in times if k in trials[0].points[0].values]
    values = {k: sorted({p.values[k] for t in trials for p in t.points}, key=lambda v: (str(type(v)), v)) for k in keys}
    for t in trials:  # the same configuration twice would be two runs of one model
        if len({p.key for p in t.points}) != len(t.points):
            raise BenchError(f"The sweep repeats a configuration ({label(t.values)}); list each value once.")
    if len({t.key for t in trials}) != len(trials):
        raise BenchError("The sweep draws the same training configuration twice; list each value once or draw from a wider range.")
    experiment = experiment or f"{base.profile}-{'+'.join(f.name for f in files)}-{method}"
    return Plan(method, experiment, files, base, {k: times[k] for k in keys}, notes, values, trials,
                cpus, resources.get("gpus"), threads, local_checks=[trials[0].points[0].cfg])


def preflight(plan: Plan) -> None:
    """What a trial would fail on at once (missing data, missing feature weights), checked here."""
    from bench.config import Config
    from bench.data import load_dataset
    from bench.evaluation.metrics import FeatureSpace

    for d in plan.local_checks:
        cfg = Config.from_dict(d)
        data = load_dataset(cfg.data)
        FeatureSpace.resolve(cfg.eval.features, data, cfg.eval.inception_weights)


