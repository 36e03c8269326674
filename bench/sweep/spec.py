"""Sweep files (sweeps/*.toml): their schema, where they are found, and the seeded draws of their
random keys. The format is described in bench/sweep/tune.py."""

from __future__ import annotations

import difflib
import itertools
import math
import os
import random
import tomllib
from dataclasses import dataclass
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


