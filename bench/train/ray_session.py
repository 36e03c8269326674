"""Ray for one command: a local Ray started here (own temp dir, shut down and removed after) or a
connection to an existing cluster. Used by sweeps (bench/sweep/tune.py) and data-parallel runs (bench/train/distributed.py)."""

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
    """Ray for one command, for sweeps and data-parallel runs alike. address: connect to that cluster
    (only the connection is closed after); None: start a local Ray here (own temp dir under $RAY_TMPDIR
    or /tmp, shut down and removed after; `started` is then True). reuse: a Ray this process already
    runs (a Tune trial's, a script's) is used as it is and left running. log_to_driver: forward the
    workers' output (a data-parallel run's rank-0 lines; a sweep prints its own line per trial).
    env: variables set while the session lasts."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *, num_gpus: int | None = None,
                 reuse: bool = False, log_to_driver: bool = False, temp_prefix: str = "bench-sweep-",
                 env: dict[str, str] | None = None):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.reuse, self.log_to_driver, self.temp_prefix, self.env = reuse, log_to_driver, temp_prefix, env or {}
        self.temp_dir: str | None = None
        self.started = False  # a local Ray started by this session
        self._owned = False  # this session initialised Ray (and shuts it down)
        self._old_env: dict[str, str | None] = {}

    @classmethod
    def for_data_parallel(cls) -> "RaySession":
        """$RAY_ADDRESS, or the Ray already running here, or a local one with every CPU and GPU; Ray's own
        logs quieted and the preemption watcher (meaningless on one machine) off."""
        import torch

        return cls(os.environ.get("RAY_ADDRESS") or None, os.cpu_count(), num_gpus=torch.cuda.device_count(),
                   reuse=True, log_to_driver=True, temp_prefix="bench-ray-",
                   env={"RAY_LOGGER_LEVEL": "error", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"})

    def __enter__(self) -> "RaySession":
        import ray

        if self.reuse and ray.is_initialized():  # inside a Tune trial or a script's Ray: use it, leave it running
            return self
        self._old_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        self._owned = True
        try:
            if self.address:
                try:
                    ray.init(address=self.address, log_to_driver=self.log_to_driver, logging_level="WARNING")
                except (ConnectionError, ValueError, RuntimeError) as e:
                    raise BenchError(f"Cannot connect to the Ray cluster at {self.address}: {str(e).splitlines()[0]}") from None
            else:
                # short path: Ray's sockets live under it (107-byte limit); its own dir keeps clear of other Rays here
                self.temp_dir = tempfile.mkdtemp(prefix=self.temp_prefix, dir=os.environ.get("RAY_TMPDIR") or "/tmp")
                ray.init(address="local", num_cpus=self.num_cpus or len(os.sched_getaffinity(0)), num_gpus=self.num_gpus,
                         include_dashboard=False, _temp_dir=self.temp_dir, log_to_driver=self.log_to_driver,
                         logging_level="WARNING")
                self.started = True
        except BaseException:
            self.__exit__()
            raise
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

        if not self._owned:
            return
        self._owned = False
        ray.shutdown()  # a joined cluster keeps running
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
