"""Ray for one command: a local Ray started here (own temp dir, shut down and removed after) or a
connection to an existing cluster. Used by sweeps (bench/tune.py) and data-parallel runs (bench/distributed.py)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from bench.errors import BenchError


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
