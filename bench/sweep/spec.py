"""Sweep files (sweeps/*.toml): their schema, where they are found, and the seeded draws of their
random keys. The format is described in bench/sweep/tune.py."""

from __future__ import annotations

import difflib
import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
LISTS = ("grid", "choice")  # every value (grid) or one per draw (choice; every value when sampling-time)
RANGES = ("uniform", "loguniform", "randint")  # [low, high]; drawn `samples` times
TIMES = ("training", "sampling")
PATH_DATA = ("imagefolder", "npz", "latents")  # data specs whose argument is a path


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
    tune: TuneSettings = field(default_factory=lambda: TuneSettings())


SCHEDULERS = ("fifo", "asha")
SEARCHES = ("grid", "random", "optuna")
ASHA_OPTIONS = ("grace_period", "reduction_factor", "max_t")
TUNE_ENTRIES = ("metric", "mode", "scheduler", "search", "num_samples", "seeds", "max_concurrent",
                "points_to_evaluate") + ASHA_OPTIONS
# what a run logs: train/<loss part>, during/<metric>_n<n> (evaluations during training), <metric>_n<n> (final)
METRIC = re.compile(r"^(train/[a-z0-9_]+|during/[a-z0-9_]+_n[0-9]+|[a-z0-9_]+_n[0-9]+)$")


@dataclass
class TuneSettings:
    """The sweep file's [tune] table, with Ray Tune's own names (tune.TuneConfig, ASHAScheduler, OptunaSearch)."""

    metric: str | None = None  # a name the run logs: train/loss, during/fid_n1, fid_n1 (final)
    mode: str | None = None  # min | max
    scheduler: str = "fifo"  # fifo | asha
    search: str = "grid"  # grid | random | optuna
    num_samples: int | None = None  # random / optuna: configurations drawn (random: per grid combination)
    seeds: list[int] = field(default_factory=list)  # each configuration once per seed
    max_concurrent: int | None = None  # trials at once (default: as many as the resources allow)
    points_to_evaluate: list[dict] = field(default_factory=list)  # optuna: known good starting points
    grace_period: int | None = None  # asha, in training steps: no trial is cut before it
    reduction_factor: float | None = None  # asha: keep the best 1/reduction_factor at each rung
    max_t: int | None = None  # asha, in training steps (default: train.steps)
    given: bool = False  # the file has a [tune] table


def _tune_settings(doc: Any, where: str) -> TuneSettings:
    """[tune]: every entry checked here, one sentence per mistake."""
    if doc is None:
        return TuneSettings()
    if not isinstance(doc, dict):
        raise BenchError(f"{where}: [tune] must be a table.")
    unknown = sorted(set(doc) - set(TUNE_ENTRIES))
    if unknown:
        raise BenchError(f"{where}: [tune] has unknown entries {', '.join(unknown)}; it takes {', '.join(TUNE_ENTRIES)}.")
    t = TuneSettings(given=True)
    metric, mode = doc.get("metric"), doc.get("mode")
    if metric is not None and not (isinstance(metric, str) and METRIC.match(metric)):
        raise BenchError(f"{where}: tune.metric must name what a run logs (train/loss, train/loss_<part>, "
                         f"during/fid_n<n>, fid_n<n>), got {metric!r}.")
    if mode is not None and mode not in ("min", "max"):
        raise BenchError(f"{where}: tune.mode must be \"min\" or \"max\", got {mode!r}.")
    if (metric is None) != (mode is None):
        raise BenchError(f"{where}: tune.metric and tune.mode go together; give both or neither.")
    t.metric, t.mode = metric, mode
    for name, allowed in (("scheduler", SCHEDULERS), ("search", SEARCHES)):
        v = doc.get(name, allowed[0])
        if v not in allowed:
            raise BenchError(f"{where}: tune.{name} must be one of {', '.join(allowed)}, got {v!r}.")
        setattr(t, name, v)
    if (t.scheduler != "fifo" or t.search == "optuna") and metric is None:
        raise BenchError(f"{where}: tune.scheduler = {t.scheduler!r} with tune.search = {t.search!r} decides by a metric; "
                         f"add metric = \"...\" and mode = \"min\" or \"max\" to [tune].")
    for name in ("num_samples", "max_concurrent", "grace_period", "max_t"):
        v = doc.get(name)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise BenchError(f"{where}: tune.{name} must be an integer >= 1, got {v!r}.")
        setattr(t, name, v)
    rf = doc.get("reduction_factor")
    if rf is not None and not (_number(rf) and rf > 1):
        raise BenchError(f"{where}: tune.reduction_factor must be a number > 1, got {rf!r}.")
    t.reduction_factor = rf
    given_asha = [k for k in ASHA_OPTIONS if k in doc]
    if given_asha and t.scheduler != "asha":
        raise BenchError(f"{where}: tune.{given_asha[0]} is an ASHA setting; add scheduler = \"asha\" or drop it.")
    if t.grace_period and t.max_t and t.grace_period > t.max_t:
        raise BenchError(f"{where}: tune.grace_period ({t.grace_period}) must not exceed tune.max_t ({t.max_t}).")
    if t.num_samples is not None and t.search == "grid":
        raise BenchError(f"{where}: tune.num_samples draws configurations; it needs search = \"random\" or \"optuna\".")
    seeds = doc.get("seeds", [])
    if not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise BenchError(f"{where}: tune.seeds must be a list of distinct integers, got {seeds!r}.")
    t.seeds = list(seeds)
    points = doc.get("points_to_evaluate", [])
    if not (isinstance(points, list) and all(isinstance(p, dict) and p for p in points)):
        raise BenchError(f"{where}: tune.points_to_evaluate must be a list of tables of swept keys and values.")
    if points and t.search != "optuna":
        raise BenchError(f"{where}: tune.points_to_evaluate are starting points of search = \"optuna\".")
    t.points_to_evaluate = points
    if t.seeds and t.search == "optuna":
        raise BenchError(f"{where}: tune.seeds with search = \"optuna\" is not supported (Optuna proposes one "
                         f"configuration per trial); repeat its best configurations in a grid sweep with seeds.")
    return t


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
    unknown = sorted(set(doc) - {"description", "samples", "seed", "keys", "resources", "tune"})
    if unknown:
        raise BenchError(f"{where} has unknown entries {', '.join(unknown)}; it takes description, samples, seed, [keys.\"section.key\"], [resources] and [tune].")
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
    tune = _tune_settings(doc.get("tune"), where)
    if tune.given and "samples" in doc:
        raise BenchError(f"{where}: samples and [tune] both count draws; use tune.num_samples.")
    if tune.num_samples is not None:
        samples = tune.num_samples
    rand = [k.key for k in keys if k.kind in RANGES + ("choice",)]
    if tune.search == "grid" and rand and tune.given:
        raise BenchError(f"{where}: keys {', '.join(rand)} are drawn at random; set tune.search = \"random\" or \"optuna\".")
    if not tune.given and rand:
        tune.search = "random"  # files from before [tune]: random keys were always drawn
    if tune.seeds:
        if any(k.key == "seed" for k in keys):
            raise BenchError(f"{where}: tune.seeds and keys.seed both sweep the seed; keep one.")
        keys.append(SweepKey("seed", "grid", list(tune.seeds), "training"))
    return SweepFile(path.stem, path, text, str(doc.get("description", "")), keys, samples, seed,
                     {k: float(v) for k, v in res.items()}, tune)


def domain(k: SweepKey):
    """The key as a Ray Tune search space entry (tune.grid_search, tune.choice, tune.uniform, ...)."""
    from ray import tune

    if k.kind == "grid":
        return tune.grid_search(list(k.spec))
    if k.kind == "choice":
        return tune.choice(list(k.spec))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[k.kind](*k.spec)  # randint: lo <= v < hi


def _draw(k: SweepKey, rng) -> Any:
    """One draw of Tune's own sampler for this key. Random search draws here, when the plan is made, and
    not in Tune's BasicVariantGenerator at run time: a random search does not adapt, so the draws are the
    same, and drawn first every configuration is resolved and checked before anything is written,
    hashed for --resume and seeded (sweep file `seed`)."""
    v = domain(k).sample(random_state=rng)
    return v.item() if hasattr(v, "item") else v


def draw_values(sweep: SweepFile, times: dict[str, str], canon: dict[str, str]) -> tuple[list[dict], dict[str, list]]:
    """(training combinations, sampling values): grid keys crossed with `samples` draws of the
    random training keys (one draw when there are none); sampling-time keys keep every listed
    value, random ones are drawn `samples` times. Keys are canonical (canon: file key -> config key)."""
    import numpy as np

    rng = np.random.default_rng(sweep.seed)
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


