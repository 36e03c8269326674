"""Sweeps on Ray Tune: sweeps/*.toml -> trials -> one MLflow child run per swept point.

A sweep file names config keys, their values, and whether each key is *training-time* (one
model trained per value) or *sampling-time* (one trained model evaluated per value). For
`method.*` keys the method has the last word (`Method.sampling_time_options`): flow matching's
CFG scale is sampling-time, the shortcut's is baked into its bootstrap targets.

    description = "..."
    samples = 1          # draws of the random keys (choice, uniform, loguniform, randint)
    seed = 0             # seed of those draws
    [keys."method.k"]
    grid = ["1/8", "1/4", "1/2"]  # or choice = [...], uniform = [lo, hi], loguniform = [lo, hi], randint = [lo, hi)
    time = "training"             # or "sampling"
    [resources]          # optional, per trial; torch threads = the CPU share (at least 1)
    cpus = 1
    gpus = 0.5

The driver draws every value (seeded), resolves and checks every configuration, connects to
Ray, then creates the tracking store, the experiment and the sweep's parent run, and only then
starts one Ray trial per training configuration. A trial trains its first point with
`bench.run.execute` and evaluates that final checkpoint at its other sampling-time points with
`bench.run.evaluate_checkpoint`; every point is a child run with the layout of a single run.
The trial keeps its runs' ids in its Ray checkpoint (and tags them `sweep.trial`/`sweep.point`),
so `--resume` continues each run where it stopped and does not rerun finished ones.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError, RunFailed

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"
LISTS = ("grid", "choice")  # every value (grid) or one per draw (choice; every value when sampling-time)
RANGES = ("uniform", "loguniform", "randint")  # [low, high]; drawn `samples` times
TIMES = ("training", "sampling")
PATH_DATA = ("imagefolder", "npz", "latents")  # data specs whose argument is a path


# ----------------------------------------------------------------------------- sweep files


@dataclass
class SweepKey:
    key: str  # config key as the file writes it ("method.k", "k", "seed")
    kind: str  # grid | choice | uniform | loguniform | randint
    spec: list  # the values (grid, choice) or [low, high]
    time: str  # what the file says: training | sampling


@dataclass
class SweepFile:
    name: str
    path: Path
    text: str
    description: str
    keys: list[SweepKey]
    samples: int
    seed: int
    resources: dict[str, float]


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.toml"))


def find_sweep(name_or_path: str) -> Path:
    """A name in sweeps/ ("k") or a path to a .toml file."""
    if (SWEEPS_DIR / f"{name_or_path}.toml").is_file():
        return SWEEPS_DIR / f"{name_or_path}.toml"
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix == ".toml" or os.sep in name_or_path:
        raise BenchError(f"Sweep file {name_or_path} does not exist.")
    close = difflib.get_close_matches(name_or_path, sweep_names(), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise BenchError(f"Unknown sweep {name_or_path!r}; known sweeps: {', '.join(sweep_names())} (or a path to a .toml file).{hint}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_sweep(name_or_path: str) -> SweepFile:
    path = find_sweep(name_or_path)
    text = path.read_text()
    where = f"Sweep file {path}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"{where} is not valid TOML: {e}.") from None
    unknown = sorted(set(doc) - {"description", "samples", "seed", "keys", "resources"})
    if unknown:
        raise BenchError(f"{where} has unknown entries {', '.join(unknown)}; it takes description, samples, seed, [keys.\"section.key\"] and [resources].")
    table = doc.get("keys")
    if not isinstance(table, dict) or not table:
        raise BenchError(f"{where} sweeps no keys; add a [keys.\"section.key\"] table with grid = [...] and time = \"training\" or \"sampling\".")
    keys = []
    for key, entry in table.items():
        if not isinstance(entry, dict):
            raise BenchError(f"{where}: keys.{key} must be a table with one of grid, choice, uniform, loguniform, randint, and time.")
        kinds = [k for k in LISTS + RANGES if k in entry]
        extra = sorted(set(entry) - set(LISTS + RANGES) - {"time"})
        if extra or len(kinds) != 1:
            raise BenchError(f"{where}: keys.{key} needs exactly one of grid, choice, uniform, loguniform, randint, and time"
                             + (f" (unknown: {', '.join(extra)})." if extra else "."))
        kind, spec = kinds[0], entry[kinds[0]]
        if not isinstance(spec, list) or not spec:
            raise BenchError(f"{where}: keys.{key}.{kind} must be a non-empty list.")
        if kind in RANGES and not (len(spec) == 2 and all(map(_number, spec)) and spec[0] < spec[1]
                                   and (kind != "loguniform" or spec[0] > 0)
                                   and (kind != "randint" or all(isinstance(v, int) for v in spec))):
            raise BenchError(f"{where}: keys.{key}.{kind} must be [low, high] with low < high"
                             + {"loguniform": " and low > 0", "randint": ", both integers"}.get(kind, "") + ".")
        if entry.get("time") not in TIMES:
            raise BenchError(f"{where}: keys.{key}.time must be \"training\" or \"sampling\", got {entry.get('time')!r}.")
        keys.append(SweepKey(key, kind, list(spec), entry["time"]))
    samples, seed = doc.get("samples", 1), doc.get("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise BenchError(f"{where}: samples must be an integer >= 1, got {samples!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BenchError(f"{where}: seed must be an integer, got {seed!r}.")
    res = doc.get("resources", {})
    if not isinstance(res, dict) or set(res) - {"cpus", "gpus"}:
        raise BenchError(f"{where}: [resources] takes cpus and gpus (per trial).")
    if "cpus" in res and not (_number(res["cpus"]) and res["cpus"] > 0):
        raise BenchError(f"{where}: resources.cpus must be a number > 0, got {res['cpus']!r}.")
    if "gpus" in res and not (_number(res["gpus"]) and res["gpus"] >= 0):
        raise BenchError(f"{where}: resources.gpus must be a number >= 0, got {res['gpus']!r}.")
    return SweepFile(path.stem, path, text, str(doc.get("description", "")), keys, samples, seed,
                     {k: float(v) for k, v in res.items()})


def _draw(k: SweepKey, rng: random.Random) -> Any:
    lo, hi = k.spec[0], k.spec[-1]
    if k.kind == "choice":
        return rng.choice(k.spec)
    if k.kind == "uniform":
        return rng.uniform(lo, hi)
    if k.kind == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randrange(lo, hi)  # randint: lo <= v < hi


def draw_values(sweep: SweepFile, times: dict[str, str], canon: dict[str, str]) -> tuple[list[dict], dict[str, list]]:
    """(training combinations, sampling values): grid keys crossed with `samples` draws of the
    random training keys (one draw when there are none); sampling-time keys keep every listed
    value, random ones are drawn `samples` times. Keys are canonical (canon: file key -> config key)."""
    rng = random.Random(sweep.seed)
    train = [k for k in sweep.keys if times[canon[k.key]] == "training"]
    grid = [k for k in train if k.kind == "grid"]
    rand = [k for k in train if k.kind != "grid"]
    draws = [{canon[k.key]: _draw(k, rng) for k in rand} for _ in range(sweep.samples)] if rand else [{}]
    combos = [{**dict(zip([canon[k.key] for k in grid], values)), **d}
              for d in draws for values in itertools.product(*[k.spec for k in grid])]
    sampling = {}
    for k in sweep.keys:
        if times[canon[k.key]] == "sampling":
            sampling[canon[k.key]] = list(k.spec) if k.kind in LISTS else sorted(_draw(k, rng) for _ in range(sweep.samples))
    return combos, sampling


# ----------------------------------------------------------------------------- the plan


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
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in values.items())


def _fmt(v: Any) -> str:
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
    from bench.metrics import FeatureSpace

    for d in plan.local_checks:
        cfg = Config.from_dict(d)
        data = load_dataset(cfg.data)
        FeatureSpace.resolve(cfg.eval.features, data.kind, data.name, cfg.eval.inception_weights)


# ----------------------------------------------------------------------------- Ray


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """One sentence, before anything is written, when a Ray cluster address does not answer."""
    if address == "auto":
        return  # ray.init says itself when there is no cluster on this machine
    if address.startswith(("http://", "https://")):
        raise BenchError(f"Ray address {address} is a dashboard (job submission) address; give the head node's GCS address host:6379.")
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BenchError(f"Ray address {address!r} is not host:port (or auto, or local).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise BenchError(f"The Ray cluster at {address} is unreachable ({e.strerror or e}).") from None


class RaySession:
    """A local Ray for this command only (own temp dir, shut down and removed after), or a
    connection to an existing cluster (only the connection is closed after)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus, self.temp_dir = address, num_cpus, None

    def __enter__(self) -> "RaySession":
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no boxed tables; we print one line per trial
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # a checkpoint per run id forces a state snapshot (num_to_keep=1): wanted, so no warning
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        import ray

        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise BenchError(f"Cannot connect to the Ray cluster at {self.address}: {str(e).splitlines()[0]}") from None
        else:
            # short path: Ray's sockets live under it (107-byte limit)
            self.temp_dir = tempfile.mkdtemp(prefix="bench-sweep-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
            ray.init(address="local", num_cpus=self.num_cpus or len(os.sched_getaffinity(0)), include_dashboard=False,
                     _temp_dir=self.temp_dir, log_to_driver=False, logging_level="WARNING")
        return self

    def nodes(self) -> list[dict[str, float]]:
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def describe(self) -> str:
        cpus = sum(n.get("CPU", 0) for n in self.nodes())
        gpus = sum(n.get("GPU", 0) for n in self.nodes())
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray for this command"
        return f"{where} ({len(self.nodes())} node(s), {cpus:g} CPUs, {gpus:g} GPUs)"

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _fits(plan: Plan, gpus: float, session: RaySession) -> None:
    nodes = session.nodes()
    if not any(n.get("CPU", 0) >= plan.cpus and n.get("GPU", 0) >= gpus for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        raise BenchError(f"No node of {session.describe()} has {plan.cpus:g} CPUs and {gpus:g} GPUs for one trial "
                         f"(the largest has {most:g} CPUs); lower [resources] in the sweep file or train.threads.")


# ----------------------------------------------------------------------------- one trial (on a Ray worker)


def _save_runs(runs: dict[str, str], metrics: dict[str, Any]) -> None:
    """Report to Tune with a checkpoint that holds the trial's MLflow run ids (point key -> run id)."""
    from ray import tune

    d = tempfile.mkdtemp(prefix="bench-trial-")
    try:
        (Path(d) / "runs.json").write_text(json.dumps(runs))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _runs_of_trial(c, experiment: str, parent_run_id: str, trial_key: str) -> dict[str, Any]:
    """Point key -> its run (FINISHED first, then the newest), found by tags."""
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`sweep.trial` = '{trial_key}'",
                         order_by=["attributes.start_time DESC"])
    out: dict[str, Any] = {}
    for r in runs:
        pk = r.data.tags.get("sweep.point")
        if pk not in out or (r.info.status == "FINISHED" and out[pk].info.status != "FINISHED"):
            out[pk] = r
    return out


def _stored_results(c, run_id: str) -> dict[int, dict[str, float]]:
    return {int(m.step): {"fid": float(m.value)} for m in c.get_metric_history(run_id, "fid")}


def _summary(lbl: str, results: dict[int, dict[str, float]]) -> str:
    ns = sorted(results)
    shown = [n for n in (1, 4, ns[-1] if ns else 0) if n in results]
    fids = ", ".join(f"{results[n].get('fid', math.nan):.4g} (n={n})" for n in dict.fromkeys(shown))
    return f"{lbl}: fid {fids}" if fids else f"{lbl}: no metrics"


def run_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one training configuration, every sampling-time point."""
    os.environ.update(config["env"])  # absolute store, tracking URI (trials run in their own cwd, maybe elsewhere)
    import ray
    from ray import tune

    from bench import checkpoint as ckpt
    from bench.config import Config
    from bench.run import evaluate_checkpoint, execute
    from bench.session import checkpoint_dir
    from bench.tracking import client

    trial, experiment, parent = config["trial"], config["experiment"], config["parent_run_id"]
    c = client()
    runs: dict[str, str] = {}
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            runs.update(json.loads((Path(d) / "runs.json").read_text()))
    stored = _runs_of_trial(c, experiment, parent, trial["key"])
    for pk, r in stored.items():  # a run created after the driver's last look at this trial's checkpoint
        runs.setdefault(pk, r.info.run_id)
    node = ray.get_runtime_context().get_node_id()

    lines, train_run = [], None
    for i, point in enumerate(trial["points"]):
        cfg = Config.from_dict(point["cfg"])
        rid = runs.get(point["key"])
        run = c.get_run(rid) if rid else None
        if run is not None and run.info.status == "FINISHED":
            results = _stored_results(c, rid)
        else:
            tags = {"sweep.role": "trial", "sweep.name": config["sweep_name"], "sweep.keys": config["sweep_keys"],
                    "sweep.trial": trial["key"], "sweep.point": point["key"], "sweep.attempts": "1"}
            if run is not None:  # continue this point's own run
                last = checkpoint_dir(rid) / "last.pt"
                step = int(ckpt.load(last, mmap=True)["step"]) if (i == 0 and last.is_file()) else 0
                attempts = int(run.data.tags.get("sweep.attempts", "1")) + 1
                c.set_tag(rid, "sweep.attempts", str(attempts))
                c.set_tag(rid, "sweep.resumed_at_step", str(step))

            def on_run(run_id: str, pk: str = point["key"]) -> None:
                runs[pk] = run_id
                c.set_tag(run_id, "sweep.node", node)
                _save_runs(runs, {"phase": f"point {pk}", "done": False})

            common = dict(resume_run_id=rid, parent_run_id=parent, run_name=f"{cfg.method_name} {point['label']}",
                          progress=False, echo=lambda *a, **k: None, on_run=on_run)
            if i == 0:
                out = execute(cfg, experiment, extra_tags=tags, **common)
            else:
                final = checkpoint_dir(train_run) / "final.pt"
                out = evaluate_checkpoint(cfg, final, experiment, extra_tags={**tags, "sweep.trained_in": train_run},
                                          extra_params={"sweep.trained_in": train_run}, **common)
            rid, results = out.run_id, out.results
        if i == 0:
            train_run = rid
        lines.append(_summary(point["label"], results))
    _save_runs(runs, {"summary": "; ".join(lines), "done": True})


def _trial_name(trial) -> str:
    return f"trial_{trial.config['trial']['index']:03d}"


# ----------------------------------------------------------------------------- the driver


def _progress_callback(total: int, quiet: bool):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished or failed trial (picklable: Tune stores it with the experiment)."""

        def __init__(self):
            self.total, self.quiet, self.done, self.t0 = total, quiet, 0, time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if not self.quiet:
                summary = (trial.last_result or {}).get("summary", "")
                print(f"[{self.done}/{self.total}] {time.time() - self.t0:6.0f} s  {summary}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            if not self.quiet:
                err = str(trial.get_error() or "").strip().splitlines()
                print(f"[{self.done}/{self.total}] {time.time() - self.t0:6.0f} s  {trial.config['trial']['label']}: FAILED "
                      f"({err[-1] if err else 'see ' + str(trial.path)})", flush=True)

    return Progress()


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    status: str
    rows: list[dict[str, Any]]  # one per point: swept values, run_id, status, fid per n
    seconds: float
    notes: list[str] = field(default_factory=list)


def find_unfinished_sweep(plan: Plan, uri: str) -> str:
    from bench.tracking import client

    c = client(uri)
    exp = c.get_experiment_by_name(plan.experiment)
    runs = [] if exp is None else c.search_runs(
        [exp.experiment_id], f"tags.`sweep.hash` = '{plan.hash()}' and tags.`sweep.role` = 'parent'",
        order_by=["attributes.start_time DESC"])
    for r in runs:
        if r.info.status != "FINISHED":
            return r.info.run_id
    raise BenchError(f"No unfinished sweep of this configuration in experiment {plan.experiment!r}; nothing to resume.")


def sweep_rows(plan: Plan, parent_run_id: str, uri: str) -> list[dict[str, Any]]:
    """Every point of the plan with its run's status and FID per n (from the tracking store)."""
    from bench.tracking import client

    c = client(uri)
    rows = []
    for t in plan.trials:
        found = _runs_of_trial(c, plan.experiment, parent_run_id, t.key)
        for p in t.points:
            r = found.get(p.key)
            rows.append({**p.values, "trial": t.index, "run_id": r.info.run_id if r else "",
                         "status": r.info.status if r else "NOT STARTED",
                         "fid": _stored_results(c, r.info.run_id) if r else {}, "M": p.cfg["method"]["M"]})
    return rows


def format_rows(plan: Plan, rows: list[dict[str, Any]]) -> str:
    keys = plan.keys
    head = [k.split(".")[-1] for k in keys] + ["fid n=1", "fid n=4", "fid n=M", "status", "run"]
    table = []
    for r in rows:
        fid = {n: m["fid"] for n, m in r["fid"].items()}
        cell = lambda n: f"{fid[n]:.4g}" if n in fid else "-"  # noqa: E731
        table.append([_fmt(r[k]) for k in keys] + [cell(1), cell(4), cell(r["M"]), r["status"], r["run_id"]])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), "-" * len(line(head))] + [line(row) for row in table])


def run_sweep(plan: Plan, *, address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              progress: bool = True, echo=print) -> SweepOutcome:
    """Run the plan on Ray Tune; returns every point's run. `address`: an existing cluster
    (default $RAY_ADDRESS); without one a local Ray is started for this call and shut down after."""
    from bench.session import RunSession
    from bench.tracking import Tracker, check_reachable, ensure_experiment, git_commit, store_root, tracking_uri

    t0 = time.time()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    if address:
        check_ray_address(address)
    else:
        preflight(plan)
    uri = tracking_uri()
    check_reachable(uri)
    if resume:
        find_unfinished_sweep(plan, uri)  # fail before starting Ray when there is nothing to resume

    with RaySession(address, num_cpus) as session:
        from ray import tune

        gpus = plan.gpus
        if gpus is None:
            has_gpu = any(n.get("GPU", 0) > 0 for n in session.nodes())
            gpus = 1.0 if has_gpu and plan.base.train.device != "cpu" else 0.0
        _fits(plan, gpus, session)

        ensure_experiment(plan.experiment, uri)  # once, here, before any trial writes
        parent_id = find_unfinished_sweep(plan, uri) if resume else None
        tracker = Tracker(plan.experiment, run_name=f"sweep {plan.name} ({plan.method})", uri=uri, resume_run_id=parent_id,
                          tags={"sweep.role": "parent", "sweep.hash": plan.hash(), "sweep.name": plan.name,
                                "sweep.keys": ",".join(plan.report_keys), "method": plan.method,
                                "profile": plan.base.profile, "git_commit": git_commit()})
        parent_id = tracker.run_id
        with RunSession(tracker, lock=False, before_end=lambda: _stop_children(plan, parent_id, uri)) as parent:
            swept = set(plan.keys)
            tracker.log_params({
                "sweep.files": ",".join(str(s.path) for s in plan.sweeps),
                **{f"sweep.file.{s.name}": s.text for s in plan.sweeps},
                **{f"sweep.values.{k}": ",".join(map(_fmt, v)) for k, v in plan.values.items()},
                **{f"sweep.time.{k}": t for k, t in plan.times.items()},
                "sweep.trials": len(plan.trials), "sweep.points": len(plan.points()),
                "sweep.trial_cpus": plan.cpus, "sweep.trial_gpus": gpus, "sweep.torch_threads": plan.threads,
                **{k: v for k, v in plan.base.flat().items() if k not in swept and k != "train.threads"},
            })
            if not resume:
                for s in plan.sweeps:
                    tracker.log_artifact(s.path, "sweep")
            echo(f"sweep {plan.name}: {len(plan.trials)} trained model(s), {len(plan.points())} run(s) of {plan.method} "
                 f"on {session.describe()}; {plan.cpus:g} CPU(s){f', {gpus:g} GPU(s)' if gpus else ''} and "
                 f"{plan.threads} torch thread(s) per trial")
            for k, t in plan.times.items():
                echo(f"  {k} ({t}-time): {', '.join(map(_fmt, plan.values[k]))}")
            for note in plan.notes:
                echo(f"  note: {note}")
            echo(f"parent run {parent_id} in experiment {plan.experiment!r} at {uri}"
                 + (" (resumed)" if resume else ""))

            env = {"BENCH_STORE": str(store_root()), "MLFLOW_TRACKING_URI": uri}
            for var in ("BENCH_INCEPTION_WEIGHTS", "BENCH_CLASSIFIER_WEIGHTS", "TORCH_HOME"):  # paths: absolute for other nodes
                if os.environ.get(var):
                    env[var] = str(Path(os.environ[var]).expanduser().resolve())
            for var in ("BENCH_OFFLINE", "BENCH_INCEPTION_URL", "BENCH_CLASSIFIER_URL"):  # the driver's download policy holds in every trial
                if os.environ.get(var):
                    env[var] = os.environ[var]
            trainable = tune.with_resources(run_trial, {"cpu": plan.cpus, "gpu": gpus})
            storage = store_root() / "ray"
            path = storage / f"sweep-{parent_id}"
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                name = path.name if not path.exists() else f"{path.name}-{int(time.time())}"
                tuner = tune.Tuner(
                    trainable,
                    param_space={"env": env, "experiment": plan.experiment, "parent_run_id": parent_id,
                                 "sweep_name": plan.name, "sweep_keys": ",".join(plan.report_keys),
                                 "trial": tune.grid_search([t.payload() for t in plan.trials])},
                    tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                    run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              callbacks=[_progress_callback(len(plan.trials), not progress)]),
                )
            tuner.fit()
            rows = sweep_rows(plan, parent_id, uri)
            parent.status = "FINISHED" if all(r["status"] == "FINISHED" for r in rows) else "FAILED"
    status = parent.status
    out = SweepOutcome(parent_id, plan.experiment, uri, status, rows, time.time() - t0, plan.notes)
    if status != "FINISHED":
        bad = sum(r["status"] != "FINISHED" for r in rows)
        raise SweepFailed(out, f"{bad} of {len(rows)} runs of sweep {plan.name} did not finish; fix the cause and continue them with --resume.")
    return out


class SweepFailed(RunFailed):
    def __init__(self, outcome: SweepOutcome, message: str):
        super().__init__(message)
        self.outcome = outcome


def _stop_children(plan: Plan, parent_run_id: str, uri: str) -> None:
    """Runs whose trial process is gone (interrupted sweep) must not stay RUNNING; resume reopens them."""
    from bench.tracking import client

    c = client(uri)
    exp = c.get_experiment_by_name(plan.experiment)
    for r in c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"):
        c.set_terminated(r.info.run_id, status="KILLED")


def sweep_command(method: str, profile: str | None, overrides: list[str], sweeps: list[str], *, data_spec=None, seed=None,
                  experiment=None, config_path=None, resume=False, address=None, quiet=False) -> SweepOutcome:
    """`bench run --sweep ...`: plan, run, print one line per trial and the table of every point."""
    import typer

    plan = build_plan(method, profile, overrides, sweeps, data_spec=data_spec, seed=seed, config_path=config_path,
                      experiment=experiment)
    try:
        out = run_sweep(plan, address=address, resume=resume, progress=not quiet, echo=typer.echo)
    except SweepFailed as e:
        typer.echo("\n" + format_rows(plan, e.outcome.rows))
        raise
    typer.echo("\n" + format_rows(plan, out.rows))
    typer.echo(f"\nsweep {plan.name} finished in {out.seconds:.0f} s: parent run {out.parent_run_id} in experiment "
               f"{out.experiment!r} at {out.tracking_uri}")
    typer.echo(f"plots and tables: bench report --experiment {out.experiment}")
    return out
