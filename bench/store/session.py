"""The life of one MLflow run, shared by training runs, evaluate-only runs and a sweep's parent run:
where its checkpoints live, the lock a live process holds, and the end status it gets whatever happens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from bench.files import checkpoint as ckpt
from bench.config import Config
from bench.errors import BenchError


def checkpoint_dir(run_id: str) -> Path:
    from bench.store.tracking import store_root

    return store_root() / "checkpoints" / run_id


def config_hash(cfg: Config) -> str:
    """Identifies a configuration (tag `config_hash`): `--resume` finds runs by it."""
    import hashlib

    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def find_unfinished_run(cfg: Config, experiment: str) -> str:
    """The newest run of this configuration in `experiment` that did not finish and that no live
    process holds (a run killed before its first checkpoint restarts from step 0 in the same run)."""
    from bench.store.tracking import RunStore

    for r in RunStore().find(experiment, tags={"config_hash": config_hash(cfg)}, newest_first=True):
        if r.status != "FINISHED" and not run_is_live(r.run_id):
            return r.run_id
    raise BenchError(f"No unfinished run of this configuration in experiment {experiment!r}; nothing to resume.")


def _lock_path(run_id: str) -> Path:
    return checkpoint_dir(run_id) / ".lock"


def run_is_live(run_id: str) -> bool:
    """True while a process holds the run's lock (it is training or evaluating right now)."""
    import fcntl

    path = _lock_path(run_id)
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class RunLock:
    """Held for the whole life of a run; the OS drops it when the process dies (even on SIGKILL)."""

    def __init__(self, run_id: str):
        self.path = _lock_path(run_id)

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise BenchError(f"Run {self.path.parent.name} is still running in another process.") from None
        return self

    def release(self) -> None:
        self.fh.close()


def config_of_run(run_id: str) -> tuple[Config, str]:
    """The configuration and experiment name of a run, from its last checkpoint and the store."""
    from bench.store.tracking import RunStore

    state, _ = ckpt.load_latest(checkpoint_dir(run_id) / "last.pt")
    if state is None:
        raise BenchError(f"Run {run_id} has no checkpoint under {checkpoint_dir(run_id)}; resume it with `bench run ... --resume`.")
    store = RunStore()
    run = store.get(run_id)  # NotInStore: "Run <id> is not in the tracking store <uri>."
    return Config.from_dict(state["config"]), store.experiment_name(run.experiment_id)


class RunSession:
    """`with RunSession(tracker) as s: ...; s.status = "FINISHED"`: the run ends FINISHED only when the
    body says so, KILLED on Ctrl-C, FAILED otherwise. lock: hold the run's RunLock while it lasts
    (acquired here, before the body: a run a live process holds is never reopened); before_end: called
    first on the way out (a sweep stops its children)."""

    def __init__(self, tracker, *, lock: bool = True, before_end: Callable[[], None] | None = None):
        self.tracker, self.status, self._before_end = tracker, "FAILED", before_end
        self._lock = RunLock(tracker.run_id).acquire() if lock else None

    def __enter__(self) -> "RunSession":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            # Ctrl-C, or SystemExit: a sweep's scheduler (ASHA) stopping a trial (Tune exits its thread at tune.report)
            self.status = "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            if self._before_end is not None:
                self._before_end()
            self.tracker.end(self.status)
        finally:
            if self._lock is not None:
                self._lock.release()
