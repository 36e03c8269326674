"""What `bench report` reads: the store's finished runs (and a sweep's stopped and failed trials) as one frame
(a row per run, metric and n), their groups and labels, and the level losses."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.errors import BenchError
from bench.evaluation.registry import report_names
from methods.base import step_cost


SWEEP_TAG = "sweep.keys"  # comma-separated config keys a sweep varied; their values are params


# params that group runs: the resolved config (settable) and what the harness derived from it
GROUP_PREFIXES = ("data.", "model.", "train.", "eval.", "method.", "budget.", "classifier.")


# per run by nature, never a reason to split a group: the seed (and the evaluation seed derived
# from it), ids and hashes of a run's own teacher or checkpoint, and paths whose file is
# identified by a hash param
PER_RUN = {"seed", "eval.seed", "method.teacher", "eval.checkpoint", "eval.checkpoint_step", "eval.checkpoint_ema_sha256",
           "eval.inception_weights", "method.classifier_weights"}


# the runs' fid_floor_* metrics, columns of collect()'s frame; fresh_sd_fixed_ref: runs from 2026-12 on
# (nan in older runs and CSVs)
FLOORS = ("fresh", "fresh_se", "fresh_sd", "fresh_sd_fixed_ref", "copy")


# a sweep trial's outcome (its `sweep.outcome` tag; runs before the tag: from the run's status)
OUTCOMES = ("finished", "stopped", "failed")
OUTCOME_OF_STATUS = {"FINISHED": "finished", "KILLED": "stopped", "FAILED": "failed"}

# what a trial ended as: per-run columns of collect()'s frame and metrics.csv. stopped_at_step: the training step a
# scheduler stopped it at (sweep.stopped_at_step) or it failed at (failure.step); nan for a finished run
OUTCOME_COLUMNS = ("outcome", "stopped_at_step", "train_steps", "failure_reason")

# the last FID during training (the during/fid_n{n} histories) of a stopped or failed trial, one row per n in 1, 4, M:
# its metric name in collect()'s frame; never `fid`, so no table, leaderboard or pairing takes it for a final FID
DURING_FID = "during/fid"


def outcome(status: str, tags: dict[str, str]) -> str | None:
    """finished, stopped or failed; None for a run still going (RUNNING, SCHEDULED)."""
    tagged = tags.get("sweep.outcome", "")
    return tagged if tagged in OUTCOMES else OUTCOME_OF_STATUS.get(status)


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (every row of a frame without an outcome column: CSVs of old), attrs kept:
    what every table, leaderboard, pairing and FID-vs-steps figure reads."""
    if "outcome" not in df.columns:
        return df
    out = df[df["outcome"].fillna("finished") == "finished"]
    out.attrs = dict(df.attrs)
    return out


def _during_fid(store, run, params: dict[str, str]) -> list[tuple[int, float]]:
    """(n, the last logged during/fid_n{n}) for n in 1, 4 and M (method.M, else the largest n logged), value nan
    where that n has none; every n is nan for a trial stopped before its first evaluation."""
    logged = {int(k.rsplit("_n", 1)[1]) for k in run.metrics if k.startswith("during/fid_n") and k.rsplit("_n", 1)[1].isdigit()}
    M = int(float(params["method.M"])) if "method.M" in params else max(logged, default=1)
    out = []
    for n in sorted({n for n in (1, 4, M) if n <= M}):
        points = store.history(run.run_id, f"during/fid_n{n}") if n in logged else []
        out.append((n, max(points, key=lambda m: m.step).value if points else math.nan))
    return out


def collect(experiment: str, uri: str | None = None, names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (finished run, metric, sampling steps) of `experiment`, with the run's group and outcome;
    a sweep's stopped and failed trials add one row per n in 1, 4, M each (metric DURING_FID: their last FID
    during training, nan where they have none) and none of their other metrics."""
    from bench.store.tracking import LARGEST_PAGE, RunStore

    store = RunStore.existing(uri)  # reporting never creates a store
    experiment_id = store.experiment_id(experiment)
    if experiment_id is None:
        raise BenchError(f"No experiment {experiment!r} in the tracking store {store.uri}.")
    metric_names = report_names()  # read now, so a metric registered after this module's import is collected
    rows = []
    for run in store.find(experiment_id=experiment_id, limit=LARGEST_PAGE):
        tags, params = run.tags, run.params
        if tags.get("bench.role") == "teacher":
            continue  # teachers trained inside a distillation run are reported by their student
        ended = outcome(run.status, tags)
        trial = tags.get("sweep.role") == "trial" or (SWEEP_TAG in tags and tags.get("sweep.role") != "parent")
        if ended is None or (ended != "finished" and not trial) or (ended == "finished" and run.status != "FINISHED"):
            continue  # still running, a failed run outside a sweep (as before), or a tag that contradicts the status
        swept = [k for k in tags.get(SWEEP_TAG, "").split(",") if k]
        base = {
            "run_id": run.run_id,
            "method": tags.get("method", params.get("method", "?")),
            "dataset": tags.get("dataset", params.get("data.spec", "?")),
            "profile": tags.get("profile", params.get("profile", "?")),
            "seed": int(params.get("seed", tags.get("seed", 0))),
            "num_samples": int(params.get("eval.num_samples", 0)),
            "feature_space": params.get("eval.feature_space", "?"),
            "swept": ",".join(swept),
            "train_examples": float(params.get("budget.train_examples", "nan")),
            "teacher_examples": float(params.get("budget.teacher_examples", 0) or 0),
            "train_compute": training_compute(params),
            # what a perfect sampler scores here (bench.evaluation.metrics.fid_floor); nan for runs before it was logged
            **{k: run.metrics.get(f"fid_floor_{k}", math.nan) for k in FLOORS},
            **run_identity(tags, params),
            "outcome": ended,
            "stopped_at_step": _float(tags.get("sweep.stopped_at_step" if ended == "stopped" else "failure.step"))
            if ended != "finished" else math.nan,
            "train_steps": _float(params.get("train.steps")),
            "failure_reason": tags.get("failure.reason", "") if ended == "failed" else "",
        }
        group = {k: v for k, v in params.items() if k.startswith(GROUP_PREFIXES) and k not in PER_RUN}
        base["config"] = json.dumps({"method": base["method"], "profile": base["profile"], "dataset": base["dataset"],
                                     **group}, sort_keys=True)
        if ended != "finished":
            rows += [{**base, "steps": n, "metric": DURING_FID, "value": v} for n, v in _during_fid(store, run, params)]
            continue
        for key in metric_names:
            if key not in run.metrics:
                continue
            for m in store.history(run.run_id, key):
                rows.append({**base, "steps": m.step, "metric": key, "value": m.value})
    return label_groups(pd.DataFrame(rows), names)


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def run_identity(tags: dict[str, str], params: dict[str, str]) -> dict[str, str]:
    """What metrics.csv records of a run beyond its group, for checking which code made a row and for
    pairing runs (bench.report.paired): the commit, the evaluation seed, the reference set's fingerprint and
    the teacher's weights' hash ("" for a method without a teacher); the machine it trained on ("" for runs
    stored before runs tagged it), since one commit and seed train to other weights on another machine."""
    return {"git_commit": tags.get("git_commit", ""), "machine": machine(tags), "eval_seed": params.get("eval.seed", ""),
            "reference": params.get("eval.reference_fingerprint", ""), "teacher_sha256": params.get("teacher.ema_sha256", "")}


def machine(tags: dict[str, str]) -> str:
    """'AMD EPYC (AVX512), torch 2.14.1' from a run's env.* tags (bench.store.tracking.environment); "" without them."""
    if not tags.get("env.torch"):
        return ""
    gpu = f", {tags['env.gpu']}" if tags.get("env.gpu") else ""
    return f"{tags.get('env.cpu', '?')} ({tags.get('env.cpu_capability', '?')}){gpu}, torch {tags['env.torch']}"


# metrics.csv's columns after the group's: the run's identity and its floor (bench.evaluation.metrics.fid_floor)
RUN_COLUMNS = ("git_commit", "machine", "eval_seed", "reference", "teacher_sha256", *(f"fid_floor_{k}" for k in FLOORS))


def _settable() -> set[str]:
    """Config keys a user sets (bench.toml / --set); the other params are derived from them."""
    from dataclasses import fields

    from bench import config

    sections = {"data": config.DataConfig, "model": config.ModelConfig, "train": config.TrainConfig,
                "eval": config.EvalConfig}
    return {"method", "profile"} | {f"{name}.{f.name}" for name, cls in sections.items() for f in fields(cls)}


def group_keys(configs: list[dict[str, str]]) -> list[str]:
    """The keys that tell the groups apart: method, then every settable key whose value differs
    between groups that have it (method.* keys: every method's own options are settable; a key only
    some methods have counts where it differs between runs of one method), then derived keys (data
    fingerprints, budgets, ...) only where those leave two groups alike."""
    settable = _settable()
    keys = sorted({k for c in configs for k in c}, key=lambda k: (k != "method", k != "profile", k))

    def differs(k: str) -> bool:
        if k.startswith("method.") and not all(k in c for c in configs):
            # a key only some methods have: it labels a row only where it splits one method's runs
            # (meanflow's time_sampling = uniform against flow matching's grid says nothing the method does not)
            by_method: dict[str, set] = {}
            for c in configs:
                if k in c:
                    by_method.setdefault(c.get("method"), set()).add(c[k])
            return any(len(v) > 1 for v in by_method.values())
        return len({c[k] for c in configs if k in c}) > 1

    def classes(ks: list[str]) -> int:
        return len({tuple(c.get(j) for j in ks) for c in configs})

    chosen = [k for k in keys if (k in settable or k.startswith("method.")) and differs(k)]
    for k in keys:
        if classes(chosen) == len(configs):
            break
        if k not in chosen and classes(chosen + [k]) > classes(chosen):  # it tells two groups apart
            chosen.append(k)
    return chosen or ["method"]


def label_groups(df: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Adds `group` (the group's short label, bench.report.labels.variant_labels: the method plus what
    differs from its published defaults, or the user's name from `names`; unique, so it identifies the
    group) and one column per group key (every key that tells groups apart stays in metrics.csv);
    df.attrs["group_keys"] names them."""
    from bench.report.labels import variant_labels

    if df.empty:
        return df
    configs = {c: json.loads(c) for c in df["config"].unique()}
    keys = group_keys(list(configs.values()))
    for k in keys:
        if k not in df.columns:
            df[k] = df["config"].map(lambda c, k=k: configs[c].get(k))
    labels = variant_labels(configs, keys, names)
    df["group"] = df["config"].map(labels)
    df.attrs["group_keys"] = keys
    return df


GROUP_TITLE = "variant (method: what differs from its defaults)"


def group_title(df: pd.DataFrame) -> str:
    return GROUP_TITLE


def training_compute(params: dict[str, str]) -> float:
    """Rows through the network over the whole training, teacher included, a backward counted as two
    forwards: steps x (forward + 2 backward + no-grad rows per step), from the run's budget.* params."""

    def part(prefix: str) -> float:
        steps = float(params.get(f"budget.{prefix}train_steps", 0) or 0)
        rows = {f"{k}_rows": float(params.get(f"budget.{prefix}{k}_rows_per_step", "nan")) for k in ("forward", "backward", "nograd")}
        return steps * step_cost(rows) if steps else 0.0

    return part("") + part("teacher_")


def hue_column(df: pd.DataFrame) -> str:
    """The key a one-method sweep varies (its values go on an x axis), else `group`."""
    keys = df.attrs.get("group_keys") or ["method"]
    if len(keys) != 1 or keys[0] == "method" or keys[0] not in df.columns:
        return "group"
    swept = {k for s in df["swept"].unique() for k in s.split(",") if k}
    numeric = all(isinstance(_numeric(v), float) for v in df[keys[0]].unique())
    return keys[0] if keys[0] in swept or numeric else "group"  # FID against a dataset name is no curve


def sweep_axes(df: pd.DataFrame) -> tuple[str, str | None]:
    """(x, series) of a one-method sweep's figure: the swept key on the x axis and, for a sweep over two keys
    (k x M), the second one as a line per value, in the sweep's order (the `swept` column); ("group", None)
    when the runs are no such sweep (several methods, no numbers on x, or a group not named by the two keys)."""
    key = hue_column(df)
    if key != "group":
        return key, None
    sweeps = {s for s in df["swept"].unique() if isinstance(s, str) and s} if "swept" in df.columns else set()
    if len(sweeps) != 1 or df["method"].nunique() != 1:
        return "group", None
    keys = [k for k in next(iter(sweeps)).split(",") if k]
    if len(keys) != 2 or not all(k in df.columns for k in keys):
        return "group", None
    if not all(isinstance(_numeric(v), float) for v in df[keys[0]].unique()):
        return "group", None
    if df.groupby(keys)["group"].nunique().max() > 1:  # another key splits a cell: two lines would hide it
        return "group", None
    return keys[0], keys[1]


def _numeric(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


# -- a method's loss ladder over training (bench.evaluation.levels; the runs' loss_ladder param) ------------
def collect_levels(experiment: str, uri: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per finished run, ladder group and logged training step: the train/loss_<group> history,
    the ladder) for the runs of `experiment` that share one loss_ladder; empty when none has one or
    their ladders differ (several methods)."""
    from bench.store.tracking import LARGEST_PAGE, RunStore

    store = RunStore.existing(uri)
    runs = [r for r in store.find(experiment, status="FINISHED", limit=LARGEST_PAGE)
            if "loss_ladder" in r.params and r.tags.get("bench.role") != "teacher" and outcome(r.status, r.tags) == "finished"]
    ladders = {r.params["loss_ladder"] for r in runs}
    if len(ladders) != 1:
        return pd.DataFrame(), {}
    ladder = json.loads(ladders.pop())
    rows = []
    for r in runs:
        for g in ladder["groups"]:
            for m in store.history(r.run_id, f"train/loss_{g}"):
                rows.append({"run_id": r.run_id, "level": g, "step": m.step, "value": m.value})
    return pd.DataFrame(rows), ladder


def read_metrics_csv(path, names: dict[str, str] | None = None) -> pd.DataFrame:
    """A report's metrics.csv (e.g. a committed results/<experiment>/metrics.csv) as collect()'s frame:
    the group keys are the columns between `group` and `method` (and `method`), and each group is
    labelled afresh (bench.report.labels), so a CSV written before the short labels reads like a new one."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"No metrics file {path}.")
    try:
        df = pd.read_csv(path, dtype={"git_commit": str, "machine": str, "eval_seed": str, "reference": str, "teacher_sha256": str,
                                      "outcome": str, "failure_reason": str})
    except Exception as e:
        raise BenchError(f"{path} is not a readable CSV ({type(e).__name__}).") from None
    missing = {"group", "seed", "steps", "metric", "value", "run_id", "method"} - set(df.columns)
    if missing:
        raise BenchError(f"{path} is not a `bench report` metrics.csv: it lacks the columns {sorted(missing)}.")
    cols = list(df.columns)
    keys = cols[cols.index("group") + 1:cols.index("method")] if cols.index("group") < cols.index("method") else []
    if df["method"].nunique() > 1 or not keys:  # as group_keys() chose them: method only where it tells groups apart
        keys = ["method", *keys]
    if "profile" in df.columns and df["profile"].nunique() > 1:
        keys.append("profile")
    first = df.drop_duplicates("group")
    configs = {g: {k: r[k] for k in ["method", *keys] if k in r} for g, r in zip(first["group"], first.to_dict("records"))}
    from bench.report.labels import variant_labels

    labels = variant_labels(configs, keys, names)
    df["group"] = df["group"].map(labels)
    df = df.rename(columns={f"fid_floor_{k}": k for k in FLOORS})  # collect()'s names
    for k in FLOORS:  # a CSV written before a floor column existed
        if k not in df.columns:
            df[k] = math.nan
    for k in ("num_samples",):
        if k in df.columns:
            df[k] = df[k].fillna(0).astype(int)
    # a CSV written before sweeps recorded outcomes holds finished runs only
    df["outcome"] = df["outcome"].fillna("finished") if "outcome" in df.columns else "finished"
    for k in ("stopped_at_step", "train_steps"):
        if k not in df.columns:
            df[k] = math.nan
    df["failure_reason"] = df["failure_reason"].fillna("") if "failure_reason" in df.columns else ""
    df.attrs["group_keys"] = keys
    df.attrs["source"] = path
    return df
