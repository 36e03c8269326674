"""The MLflow adapter: Tracker writes runs, RunStore reads them back (the one way the rest of bench
reads the store). One run per training run, evaluation metrics logged with
step = number of sampling steps n. MLflow charts steps on a linear axis (n = 1..8 crammed at the
left of 1..128), so each run also logs `fid_by_log2_steps` at step = log2(n) and its own
fid_vs_steps.png; experiments are tagged as model development so MLflow 3's UI opens on runs.

Embedded default: a SQLite file under results/store/ (ignored by git). MLFLOW_TRACKING_URI
overrides, as everywhere in MLflow. Uses MlflowClient only (no global active run), so several
runs, Ray trials and tests can share a process.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.phases import span

STORE_ENV = "BENCH_STORE"
# MLflow 3 opens an experiment without this tag in its GenAI view (traces); this value opens the runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOG2_FID = "fid_by_log2_steps"
PAGE = 1000  # runs one search returns unless told (MLflow's default page)
LARGEST_PAGE = 50_000  # the most runs one search returns (MLflow's threshold)


def store_root() -> Path:
    """Where the embedded store, checkpoints and caches live: $BENCH_STORE or ./results/store."""
    return Path(os.environ.get(STORE_ENV) or Path.cwd() / "results" / "store").resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{store_root() / 'mlflow.db'}"  # sqlite:/// + /abs/path = four slashes


def is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


def sqlite_path(uri: str) -> Path:
    """The database file of a sqlite:/// URI."""
    return Path(uri[len("sqlite:///"):])


def store_exists(uri: str) -> bool:
    """False for an embedded store whose file is not there yet (a server is taken to exist)."""
    return not (is_local_sqlite(uri) and not sqlite_path(uri).is_file())


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """One sentence, before anything is written, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BenchError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}).") from None
    elif is_local_sqlite(uri):
        path = sqlite_path(uri)
        if not path.parent.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BenchError(f"Cannot create the tracking store folder {path.parent}: {e.strerror}.") from None
    elif uri.startswith("file:") or "://" not in uri:
        raise BenchError(f"Tracking URI {uri} is a plain file store; MLflow keeps it in maintenance mode: use sqlite:////abs/path/mlflow.db or a server.")


def git_commit() -> str:
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def environment() -> dict[str, str]:
    """What besides the commit, seed and config decides a run's numbers (tags env.*): the same commit and seed on
    one thread gave flow matching on digits other final weights on another machine (results/README.md, "Same
    commit, other weights"), since torch picks its kernels by build and CPU. Tags, not params: a run resumed
    elsewhere says where it ended."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:  # Linux: the CPU's model name
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"env.torch": torch.__version__, "env.cpu": name, "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "env.threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        env["env.gpu"] = torch.cuda.get_device_name()
    return env


def client(uri: str | None = None):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    if is_local_sqlite(uri):
        _create_sqlite_once(sqlite_path(uri))
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _create_sqlite_once(db: Path) -> None:
    """Several processes opening a FRESH SQLite store race on its migrations (`table ... already
    exists`): the first creates it under an exclusive file lock, the others wait and reuse it."""
    if db.is_file() and db.stat().st_size > 0:
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)  # runs the migrations
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The experiment's id, creating it (with an explicit artifact location for the embedded store)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise BenchError(f"MLflow experiment {name!r} is deleted; restore it or pick another --experiment.")
        for k, v in EXPERIMENT_KIND.items():
            if k not in exp.tags:  # made by an older bench or by hand: still open on the runs
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    uri = uri or tracking_uri()
    location = None
    if is_local_sqlite(uri):
        location = (sqlite_path(uri).parent / "artifacts" / name).resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """One MLflow run. `resume_run_id` continues an existing run: points at steps already
    logged for a metric are skipped, so a resumed run has no duplicate points (any order of steps:
    the evaluation logs n = M first)."""

    def __init__(self, experiment: str, run_name: str = "", tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None, resume_run_id: str | None = None, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.client = client(self.uri)
        self.runs = RunStore(self.uri, mlflow_client=self.client)  # run-time reads on the same client
        self.experiment_id = ensure_experiment(experiment, self.uri)
        self._logged: dict[str, set[int]] = {}  # metric -> the steps it has in the store
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = resume_run_id
            for key in run.data.metrics:
                self._logged[key] = {m.step for m in self.runs.history(resume_run_id, key)}
            self.client.update_run(resume_run_id, status="RUNNING")
        else:
            tags = dict(tags or {})
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name or None)
            self.run_id = run.info.run_id
        self.artifact_uri = self.client.get_run(self.run_id).info.artifact_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        with span("mlflow_writes"):
            self._log_params(params, Param)

    def _log_params(self, params: dict[str, Any], Param) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in values.items():
            seen = self._logged.setdefault(k, set())
            if int(step) in seen:
                continue  # already in the store (from before a resume)
            items.append(Metric(k, float(v), now, int(step)))
            seen.add(int(step))
        with span("mlflow_writes"):
            for i in range(0, len(items), 1000):
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_fid_curve(self, results: dict[int, dict[str, float]], title: str) -> None:
        """FID against n readable in MLflow's UI: `fid_by_log2_steps` at step = log2(n) (n a power of
        two; evenly spaced points) and the run's own fid_vs_steps.png / .svg (log2 axis) as artifacts."""
        import math
        import tempfile

        fid = {n: m["fid"] for n, m in results.items() if "fid" in m}
        if not fid:
            return
        for n in sorted(fid):
            if n & (n - 1) == 0:
                self.log_metrics({LOG2_FID: fid[n]}, step=int(math.log2(n)))
        from bench.files.plots import plot_run_curve

        with tempfile.TemporaryDirectory() as tmp:
            with span("plots"):
                paths = plot_run_curve(fid, Path(tmp) / "fid_vs_steps.png", title)
            for path in paths:
                self.log_artifact(path, "plots")

    def set_tag(self, key: str, value: str) -> None:
        with span("mlflow_writes"):
            self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        with span("mlflow_writes"):
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        with span("mlflow_writes"):
            self.client.set_terminated(self.run_id, status=status)


class NotInStore(BenchError):
    """A run or artifact the store did not give (no such id or path, or the store did not answer)."""


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float


@dataclass(frozen=True)
class StoredRun:
    """A run as the store holds it (our record, not MLflow's Run)."""
    run_id: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED (or SCHEDULED)
    start_time: int  # ms since the epoch
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # each metric's latest value
    end_time: int | None = None  # ms since the epoch; None while it runs


def _quoted(value: str) -> str:
    """A string literal of MLflow's search grammar."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise BenchError(f"Cannot search the tracking store for a value with both kinds of quotes: {value!r}.")


def _condition(kind: str, key: str, value: str) -> str:
    if "`" in key:
        raise BenchError(f"Cannot search the tracking store for a key with a backtick: {key!r}.")
    return f"{kind}.`{key}` = {_quoted(str(value))}"


def run_filter(tags: dict[str, str] | None = None, params: dict[str, str] | None = None, status: str | None = None) -> str:
    """MLflow's filter string for runs with all these tags, params and status ("" matches every run)."""
    parts = [_condition("tags", k, v) for k, v in (tags or {}).items()]
    parts += [_condition("params", k, v) for k, v in (params or {}).items()]
    if status is not None:
        parts.append(f"attributes.status = {_quoted(status)}")
    return " and ".join(parts)


class RunStore:
    """Reading runs back (and marking them): runs by experiment, tags, params and status, a run's record,
    a metric's history, an artifact. The only code outside Tracker that talks to MLflow."""

    def __init__(self, uri: str | None = None, mlflow_client=None):
        self.uri = uri or tracking_uri()
        self._client = mlflow_client or client(self.uri)

    @classmethod
    def existing(cls, uri: str | None = None) -> "RunStore":
        """The store at `uri`, never creating one (reading a store that is not there is a user's mistake)."""
        uri = uri or tracking_uri()
        if not store_exists(uri):
            raise BenchError(f"No tracking store at {uri}; run `bench run` first (or set BENCH_STORE / MLFLOW_TRACKING_URI).")
        return cls(uri)

    def experiments(self) -> list[str]:
        """The names of the active experiments (one page, in MLflow's order)."""
        return [e.name for e in self._client.search_experiments()]

    def experiment_id(self, name: str) -> str | None:
        exp = self._client.get_experiment_by_name(name)
        return None if exp is None else exp.experiment_id

    def experiment_name(self, experiment_id: str) -> str:
        return self._client.get_experiment(experiment_id).name

    def find(self, experiment: str | None = None, *, experiment_id: str | None = None, tags: dict[str, str] | None = None,
             params: dict[str, str] | None = None, status: str | None = None, newest_first: bool = False,
             limit: int = PAGE) -> list[StoredRun]:
        """The active runs of an experiment (by name, or by id) with all these tags and params (and this
        status): the first `limit` of them, newest first when asked, else in the store's order. An
        experiment that does not exist has none."""
        if experiment_id is None:
            experiment_id = self.experiment_id(experiment)
            if experiment_id is None:
                return []
        order = ["attributes.start_time DESC"] if newest_first else None
        found = self._client.search_runs([experiment_id], run_filter(tags, params, status), max_results=limit, order_by=order)
        return [_record(r) for r in found]

    def get(self, run_id: str) -> StoredRun:
        try:
            return _record(self._client.get_run(run_id))
        except Exception:
            raise NotInStore(f"Run {run_id} is not in the tracking store {self.uri}.") from None

    def history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged point of a metric, in the store's order ([] for a metric the run does not have)."""
        return [MetricPoint(int(m.step), float(m.value)) for m in self._client.get_metric_history(run_id, key)]

    def fetch_artifact(self, run: StoredRun, path: str, dest: str | Path) -> Path:
        """A local file of the run's artifact `path`: where it lies for the embedded store, else downloaded into dest."""
        missing = NotInStore(f"Run {run.run_id} has no artifact {path}.")
        if run.artifact_uri.startswith("file:"):
            from urllib.parse import unquote, urlparse

            local = Path(unquote(urlparse(run.artifact_uri).path)) / path
            if not local.is_file():
                raise missing
            return local
        try:
            return Path(self._client.download_artifacts(run.run_id, path, str(dest)))
        except Exception:
            raise missing from None

    def mark(self, run_id: str, tags: dict[str, str] | None = None, status: str | None = None) -> None:
        """Set these tags (one at a time, in order), then end the run with `status` if given."""
        for k, v in (tags or {}).items():
            self._client.set_tag(run_id, k, v)
        if status is not None:
            self._client.set_terminated(run_id, status=status)


def _record(run) -> StoredRun:
    info, data = run.info, run.data
    return StoredRun(info.run_id, info.experiment_id, info.status, info.start_time, info.artifact_uri,
                     dict(data.params), dict(data.tags), dict(data.metrics), info.end_time)
