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
from bench.sweep.spec import LISTS, PATH_DATA, SweepFile, TuneSettings, domain, draw_values, load_sweep


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
    tune: TuneSettings = field(default_factory=TuneSettings)  # the [tune] table (metric, scheduler, search)
    # search = "optuna": Tune draws the training-time values at run time from `space` (config key -> tune domain)
    # and the trial resolves them with `template`; `trials` then holds the configurations checked here (every
    # grid and choice value, the ends of each range, the starting points), not the trials that will run
    space: dict[str, Any] = field(default_factory=dict)
    template: dict[str, Any] | None = None
    starts: list[dict[str, Any]] = field(default_factory=list)  # optuna: points_to_evaluate, by config key

    @property
    def drawn_at_run_time(self) -> bool:
        return self.template is not None

    @property
    def num_trials(self) -> int:
        return self.tune.num_samples or 1 if self.drawn_at_run_time else len(self.trials)

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
        if self.tune.given:  # files from before [tune] keep their hash (--resume finds their parent)
            doc["tune"] = {k: v for k, v in vars(self.tune).items()}
            doc["keys"] = [[k.key, k.kind, k.spec, k.time] for f in self.sweeps for k in f.keys]  # what Optuna draws from
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
    if "train.failure_rule" not in set_keys | set(owner) and base.train.failure_rule == "warn":
        # in a sweep the failure rule stops a failing trial (recorded as failed, the sweep goes on): the compute
        # is the point; --set train.failure_rule=warn keeps every trial training
        pairs = pairs + [("train.failure_rule", "stop")]
        base = resolve(method, profile, pairs, data_spec=data_spec, seed=seed, doc=doc)
    resources: dict[str, float] = {}
    for f in files:
        for k, v in f.resources.items():
            if k in resources and resources[k] != v:
                raise BenchError(f"The sweep files ask for different resources.{k} ({resources[k]:g} and {v:g}).")
            resources[k] = v

    settings = _one_tune(files)
    check_tune(settings, base, method)
    cpus = resources.get("cpus", float(base.train.threads) if base.train.threads > 0 else 1.0)
    threads = max(1, math.floor(cpus))
    resolve_args = {"method": method, "profile": profile, "pairs": list(pairs), "threads": threads,
                    "data_spec": data_spec, "seed": seed, "doc": doc}

    sampling: dict[str, list] = {}
    space: dict[str, Any] = {}
    starts: list[dict] = []
    if settings.search == "optuna":
        train_combos = []
        for f in files:
            keys = [k for k in f.keys if times[canon[k.key]] == "training"]
            space.update({canon[k.key]: domain(k) if k.kind != "grid" else domain(type(k)(k.key, "choice", k.spec, k.time))
                          for k in keys})
            train_combos = _check_combos(keys, canon, train_combos)
            for k in f.keys:
                if times[canon[k.key]] == "sampling":
                    if k.kind not in LISTS:
                        raise BenchError(f"{f.path}: keys.{k.key} is sampling-time and drawn at random; with "
                                         f"search = \"optuna\" list its values (grid = [...]).")
                    sampling[canon[k.key]] = list(k.spec)
            for point in f.tune.points_to_evaluate:
                start = {canonical_key(k, method): v for k, v in point.items()}
                spec = {canon[k.key]: k for k in keys}
                if set(start) - set(spec):
                    raise BenchError(f"{f.path}: tune.points_to_evaluate names {', '.join(sorted(set(start) - set(spec)))}, "
                                     f"which the file does not draw.")
                if set(start) != set(spec):
                    raise BenchError(f"{f.path}: each of tune.points_to_evaluate names every key Optuna draws "
                                     f"({', '.join(spec)}), got {', '.join(start)}.")
                for k, v in start.items():
                    lo_hi = spec[k].spec
                    inside = v in lo_hi if spec[k].kind in LISTS else lo_hi[0] <= v <= lo_hi[1]
                    if not inside:
                        raise BenchError(f"{f.path}: tune.points_to_evaluate has {k} = {v!r}, outside keys.{spec[k].key}.")
                starts.append(start)
                train_combos.append(start)
    else:
        train_combos = [{}]
        for f in files:
            combos, samp = draw_values(f, times, canon)
            train_combos = [{**a, **b} for a in train_combos for b in combos]
            sampling.update(samp)
    sampling_combos = [dict(zip(sampling, vs)) for vs in itertools.product(*sampling.values())]

    trials = [make_trial(resolve_args, i, tv, sampling_combos) for i, tv in enumerate(train_combos)]
    for t in trials:
        refuse_noop_axes(t, times, method_cls)
    keys = [k for k in times if k in trials[0].points[0].values]
    values = {k: sorted({p.values[k] for t in trials for p in t.points}, key=lambda v: (str(type(v)), v)) for k in keys}
    for t in trials:  # the same configuration twice would be two runs of one model
        if len({p.key for p in t.points}) != len(t.points):
            raise BenchError(f"The sweep repeats a configuration ({label(t.values)}); list each value once.")
    template = None
    if settings.search == "optuna":
        template = {"resolve": resolve_args, "sampling": sampling_combos}
    elif len({t.key for t in trials}) != len(trials):
        raise BenchError("The sweep draws the same training configuration twice; list each value once or draw from a wider range.")
    experiment = experiment or f"{base.profile}-{'+'.join(f.name for f in files)}-{method}"
    return Plan(method, experiment, files, base, {k: times[k] for k in keys}, notes, values, trials,
                cpus, resources.get("gpus"), threads, local_checks=[trials[0].points[0].cfg], tune=settings,
                space=space, template=template, starts=starts)


def make_trial(resolve_args: dict[str, Any], index: int, train_values: dict[str, Any], sampling_combos: list[dict]) -> Trial:
    """One training configuration at every combination of sampling-time values, resolved and checked
    (also called in a trial, for values Tune's searcher drew)."""
    from bench.config import resolve

    a = resolve_args
    points = []
    for sv in sampling_combos:
        swept = {**train_values, **sv}
        cfg = resolve(a["method"], a["profile"], list(a["pairs"]) + list(swept.items()) + [("train.threads", a["threads"])],
                      data_spec=a["data_spec"], seed=a["seed"], doc=a["doc"])
        cfg = _absolute_paths(cfg)
        flat = cfg.flat()
        values = {k: flat[k] for k in swept}
        points.append(Point(_hash(values), values, cfg.to_dict()))
    tvals = {k: points[0].values[k] for k in train_values}
    return Trial(_hash(tvals), index, tvals, points)


def _check_combos(keys, canon: dict[str, str], before: list[dict]) -> list[dict]:
    """The configurations to check for keys Tune draws at run time: every listed value and both ends of
    each range, one key at a time (the others at their first value); not the whole product."""
    ends = {}
    for k in keys:
        if k.kind in LISTS:
            ends[canon[k.key]] = list(k.spec)
        else:  # randint's high is exclusive
            ends[canon[k.key]] = [k.spec[0], k.spec[1] - 1 if k.kind == "randint" else k.spec[1]]
    first = {key: vs[0] for key, vs in ends.items()}
    combos = [dict(first)] + [{**first, key: v} for key, vs in ends.items() for v in vs[1:]]
    return [{**b, **c} for b in (before or [{}]) for c in combos]


def _one_tune(files: list[SweepFile]) -> TuneSettings:
    given = [f for f in files if f.tune.given]
    if len(given) > 1:
        raise BenchError(f"Sweep files {given[0].path} and {given[1].path} both have a [tune] table; keep one.")
    if given:
        return given[0].tune
    rand = [f for f in files if f.tune.search == "random"]  # files from before [tune] with random keys
    return rand[0].tune if rand else TuneSettings()


def check_tune(t: TuneSettings, base, method: str) -> None:
    """The [tune] table against this configuration: the metric is something its runs log, ASHA can reach the end."""
    if t.metric is None:
        return
    name = t.metric
    if "_n" in name and not name.startswith("train/"):
        n = int(name.rsplit("_n", 1)[1])
        # evaluations during training may have their own n list (Config.during_steps, where the config has one)
        ns = base.during_steps() if name.startswith("during/") and hasattr(base, "during_steps") else base.sampling_steps()
        if n not in ns:
            raise BenchError(f"tune.metric {name} asks for n = {n}, which the runs do not evaluate "
                             f"(n in {', '.join(map(str, ns))}).")
    if name.startswith("during/") and base.train.eval_every <= 0:
        raise BenchError(f"tune.metric {name} is logged by evaluations during training; set train.eval_every > 0.")
    if t.max_t is not None and t.max_t < base.train.steps:
        raise BenchError(f"tune.max_t = {t.max_t} would stop every trial before train.steps = {base.train.steps}, where its "
                         f"final evaluation is; leave max_t out (it defaults to train.steps).")
    if t.scheduler == "asha" and not name.startswith(("train/", "during/")):
        raise BenchError(f"tune.metric {name} is known only when a trial ends; ASHA compares trials during "
                         f"training: use train/... or during/... .")


def unconditional(cfg) -> bool:
    """Whether these data train without labels (no class, so no guidance): labels switched off, or a
    dataset without classes (the toys; other loaders are asked in preflight, with the data loaded)."""
    from bench.data import classes_known_absent

    return not cfg.data.labels or classes_known_absent(cfg.data.spec)


def refuse_noop_axes(trial: Trial, times: dict[str, str], method_cls: type) -> None:
    """A swept key that cannot change what is trained or sampled here is refused before anything runs."""
    from bench.config import Config

    cfg = Config.from_dict(trial.points[0].cfg)
    if "method.cfg_scale" in times and unconditional(cfg):
        raise BenchError(f"Sweeping method.cfg_scale on {cfg.data.spec} changes nothing: the data have no labels, "
                         f"so guidance has no class to steer by; sweep a conditional profile (digits) instead.")
    if times.get("method.M") == "training" and not method_cls.trains_on_M(cfg.method):
        raise BenchError(f"Sweeping method.M for {method_cls.name} retrains the same model: its training does not use M, "
                         f"which only sets the evaluated n = 1, 2, ..., M; set the largest M once instead.")


def preflight(plan: Plan) -> None:
    """What a trial would fail on at once (missing data, missing feature weights), checked here."""
    from bench.config import Config
    from bench.data import load_dataset
    from bench.evaluation.metrics import FeatureSpace

    for d in plan.local_checks:
        cfg = Config.from_dict(d)
        data = load_dataset(cfg.data)
        if "method.cfg_scale" in plan.times and not data.num_classes:
            raise BenchError(f"Sweeping method.cfg_scale on {cfg.data.spec} changes nothing: the data have no labels, "
                             f"so guidance has no class to steer by; sweep a conditional dataset instead.")
        FeatureSpace.resolve(cfg.eval.features, data, cfg.eval.inception_weights)


