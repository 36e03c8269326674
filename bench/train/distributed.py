"""Data-parallel training through Ray Train's TorchTrainer (`train.workers` > 1).

`bench run ... --set train.workers=2 [--set train.gpus_per_worker=1]` runs one training process
per worker (gloo on CPU, nccl on CUDA). Ray is, in this order: the Ray this process already
belongs to (a Tune trial, a script that called ray.init), the cluster at $RAY_ADDRESS, or a local
Ray started here and shut down afterwards. The driver has created the MLflow run; every rank
rebuilds the run from the same config and the driver's initial weights, rank 0 logs to that run,
writes the checkpoints, evaluates at every n and returns the metrics.

train.batch_size stays the global batch: each rank takes batch_size / workers rows per step.
On a cluster, bench (and the data, checkpoints and tracking store paths) must be reachable from
every node: install bench on each node and use shared paths (or an MLflow server).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from typing import Any, Callable

import torch

from bench.config import Config
from bench.errors import BenchError

# Rank 0 evaluates during training (FID-50K at every n) while the other ranks wait at their next
# all-reduce; the process group must not time out meanwhile.
COLLECTIVE_TIMEOUT_S = 3 * 3600
PROGRESS_EVERY_S = 10.0  # rank 0 prints a training line at most this often (Ray forwards whole lines only)


def gpus_per_worker(cfg: Config) -> int:
    """train.gpus_per_worker, with -1 (auto) = 1 when this machine has CUDA and train.device is not cpu."""
    if cfg.train.gpus_per_worker >= 0:
        return cfg.train.gpus_per_worker
    return int(cfg.train.device != "cpu" and torch.cuda.is_available())


def _joins_existing_ray() -> bool:
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


def cpus_per_worker(cfg: Config, local: bool) -> int:
    """train.threads when set; else a local Ray's CPU workers share this machine's cores, others take 1."""
    if cfg.train.threads > 0:
        return cfg.train.threads
    if local and gpus_per_worker(cfg) == 0:
        return max(1, (os.cpu_count() or 1) // cfg.train.workers)
    return 1


def check_request(cfg: Config) -> str:
    """Raise BenchError for GPUs / CPUs this machine cannot give (when Ray is started here); returns
    the run's `device` param, e.g. "cpu x 2 workers (gloo)"."""
    tc = cfg.train
    gpus = gpus_per_worker(cfg)
    if not _joins_existing_ray():  # a cluster may grow (autoscaler): only a local Ray is checked here
        have = torch.cuda.device_count()
        if gpus and tc.workers * gpus > have:
            raise BenchError(f"train.workers = {tc.workers} with train.gpus_per_worker = {gpus} needs "
                             f"{tc.workers * gpus} GPUs; this machine has {have}.")
        cpus, have_cpus = cpus_per_worker(cfg, local=True), os.cpu_count() or 1
        if tc.workers * cpus > have_cpus:
            raise BenchError(f"train.workers = {tc.workers} with train.threads = {cpus} needs {tc.workers * cpus} "
                             f"CPUs; this machine has {have_cpus}.")
    return f"{'cuda' if gpus else 'cpu'} x {tc.workers} workers ({'nccl' if gpus else 'gloo'})"


def _warn_if_short(cfg: Config, gpus: int, cpus: int, echo) -> None:
    """A joined Ray may lack what the workers ask for (busy, or waiting for its autoscaler): say so."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    need = {"GPU": cfg.train.workers * gpus, "CPU": cfg.train.workers * cpus}
    short = [f"{need[k]:g} {k}s ({free.get(k, 0):g} free of {total.get(k, 0):g})" for k in need if need[k] > free.get(k, 0)]
    if short:
        echo(f"waiting for resources: {cfg.train.workers} workers need {' and '.join(short)}; inside a Tune "
             f"trial, leave them to the workers (e.g. tune.with_resources(trainable, {{'CPU': 0}})).")


def fit_data_parallel(p, experiment: str, run_id: str, uri: str, worker: Callable[[dict[str, Any]], Any], *,
                      progress: bool = True, echo=print) -> dict[int, dict[str, float]]:
    """Train and evaluate the prepared run `p` on train.workers Ray Train workers; rank 0 logs to the
    existing MLflow run `run_id` and evaluates. Returns n -> metrics from rank 0.
    worker(loop_config): what each worker runs (bench.train.run.data_parallel_worker), a module-level function."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer

    from bench.train.ray_session import RaySession

    from bench.store.tracking import store_root

    cfg = p.cfg
    gpus = gpus_per_worker(cfg)
    teacher = p.method.teacher
    if teacher is not None and next(teacher.parameters(), torch.empty(0)).device.type != "cpu":
        teacher = copy.deepcopy(teacher).cpu()  # workers move it to their own device
    with RaySession.for_data_parallel() as session:
        local = session.started
        cpus = cpus_per_worker(cfg, local)
        if not local:
            _warn_if_short(cfg, gpus, cpus, echo)
        loop_config = {
            "cfg": cfg.to_dict(), "experiment": experiment, "run_id": run_id, "uri": uri,
            "store": str(store_root()), "cwd": os.getcwd(), "gpus": gpus, "threads": cpus, "progress": progress,
            # the driver's initial weights and method state (a student may start from its teacher)
            "model_state": {k: v.detach().cpu() for k, v in p.model.state_dict().items()},
            "method_state": p.method.state_dict(), "teacher": teacher, "worker": worker,
        }
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=loop_config,
            torch_config=TorchConfig(backend="nccl" if gpus else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S),
            scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=bool(gpus),
                                         resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})}),
            run_config=RunConfig(name=f"bench-{run_id}", storage_path=str(store_root() / "ray"),
                                 logging_config=LoggingConfig("ERROR"),  # its warnings are about Ray itself
                                 worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
        )
        echo(f"data parallel: {cfg.train.workers} workers x {cfg.train.batch_size // cfg.train.workers} rows "
             f"({'1 GPU, nccl' if gpus else f'{cpus} CPU, gloo'} each) on "
             f"{'a local Ray started for this run' if local else 'Ray at ' + (os.environ.get('RAY_ADDRESS') or 'this process')}")
        main_thread = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            result = trainer.fit()
        except WorkerGroupError as e:
            failures = e.worker_failures
            user_errors = [failures[r] for r in sorted(failures) if isinstance(failures[r], BenchError)]
            if user_errors:
                raise user_errors[0] from None  # one sentence, as in a single-process run
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, sigint)  # fit() installs its own handler (abort on Ctrl-C)
        if result.return_value is None:  # rank 0 always returns its metrics unless the run was aborted
            raise KeyboardInterrupt
        return result.return_value


class EchoingTracker:
    """Rank 0's tracker: logs as usual and prints a line per training interval (at most every
    PROGRESS_EVERY_S) and per evaluation, since Ray forwards whole lines (a tqdm bar would arrive
    only at its end)."""

    def __init__(self, tracker, total_steps: int):
        self._tracker, self._total = tracker, total_steps
        self._t0, self._last = time.perf_counter(), 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._tracker.log_metrics(values, step)
        now = time.perf_counter()
        if "train/loss" in values:
            if now - self._last >= PROGRESS_EVERY_S or step == self._total:
                self._last = now
                print(f"step {step}/{self._total}  loss {values['train/loss']:.4f}  "
                      f"({step / max(now - self._t0, 1e-9):.1f} steps/s)", flush=True)
        else:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"evaluated at {step}: {shown}", flush=True)


def _worker_loop(config: dict[str, Any]) -> dict[int, dict[str, float]]:
    """One Ray Train worker: the driver's paths, then the run's own worker function (bench.train.run's)."""
    # paths as the driver sees them (Ray Train moves workers into its own run folder)
    os.environ["BENCH_STORE"] = config["store"]
    os.environ["MLFLOW_TRACKING_URI"] = config["uri"]
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    return config["worker"](config)
