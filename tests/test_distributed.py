"""Data parallel training (train.workers > 1) on CPU with gloo.

- Two DDP ranks each taking half of a batch take the same optimiser steps as one process taking
  the whole batch: checked against a plain AdamW loop written here, not against the Trainer.
- `bench run --set train.workers=2` through Ray Train leaves one MLflow run with the same metric,
  param and artifact layout as a single-process run, and nothing running afterwards.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.config import resolve
from bench.errors import BenchError
from bench.models import build_model
from methods.base import Batch, Method, Targets, interpolate

DIM, CLASSES, BATCH, STEPS = 2, 3, 8, 3


def tiny_config(**train):
    sets = [("model.hidden", 16), ("model.depth", 2), ("train.batch_size", BATCH), ("train.steps", STEPS),
            ("train.log_every", STEPS), ("train.lr", 1e-2), ("train.weight_decay", 0.1), ("train.ema_decay", 0.5),
            ("train.grad_clip", 0.0), ("train.eval_every", 2), ("train.checkpoint_every", 100), ("train.threads", 1)]
    return resolve("flow_matching", "smoke", sets + [(f"train.{k}", v) for k, v in train.items()])


def fixed_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x1, x0, y) of BATCH rows for every step, fixed in advance."""
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(BATCH, DIM, generator=g), torch.randn(BATCH, DIM, generator=g),
             torch.randint(CLASSES, (BATCH,), generator=g)) for _ in range(STEPS)]


def row_targets(model, x1, x0, y):
    """Times from the rows themselves (no random draws, so any split of the rows gives the same targets),
    and a no-grad model call inside the target, as bootstrapping methods make."""
    t = torch.sigmoid(x1[:, 0])
    x_t = interpolate(x0, x1, t)
    with torch.no_grad():
        nudge = model(x_t, t, torch.zeros_like(t), y)
    return x_t, t, x1 - x0 + 0.1 * nudge


class RowTimes(Method):
    name = "row_times"

    def targets(self, model, ema, batch: Batch, step, generator) -> Targets:
        x_t, t, target = row_targets(model, batch.x1, batch.x0, batch.y)
        return Targets(x_t=x_t, t=t, d=torch.zeros_like(t), y=batch.y, target=target)


def make_trainer(cfg, distributed: bool, **hooks):
    from bench.train.trainer import Trainer

    class FixedRows(Trainer):
        """Rank r takes rows [r B/W, (r + 1) B/W) of the step's fixed batch."""

        def prepare_batch(self) -> Batch:
            x1, x0, y = fixed_batches()[self.step]
            rows = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
            return Batch(x1=x1[rows], x0=x0[rows], y=y[rows], null_class=CLASSES)

    torch.manual_seed(0)
    model = build_model(cfg.model, (DIM,), CLASSES)
    method = RowTimes(cfg.method, CLASSES)
    return FixedRows(cfg, method, model, SimpleNamespace(num_classes=CLASSES), torch.device("cpu"),
                     progress=False, distributed=distributed, **hooks)


def reference_steps(cfg) -> tuple[dict, dict, list[float]]:
    """Plain AdamW on the whole batch, EMA by hand: the weights and EMA after STEPS steps, and the losses."""
    tc = cfg.train
    torch.manual_seed(0)
    model = build_model(cfg.model, (DIM,), CLASSES)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    losses = []
    for x1, x0, y in fixed_batches():
        x_t, t, target = row_targets(model, x1, x0, y)
        loss = (model(x_t, t, torch.zeros_like(t), y) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(tc.ema_decay).add_((1 - tc.ema_decay) * pm)
        losses.append(loss.item())
    return model.state_dict(), ema.state_dict(), losses


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = tiny_config()
        logged, evaluated = [], []
        hooks = {"checkpoint_path": Path(out_dir) / "last.pt", "log": lambda m, s: logged.append((s, m)),
                 "evaluate": evaluated.append} if rank == 0 else {}
        trainer = make_trainer(cfg, distributed=True, **hooks)
        trainer.fit()
        dist.barrier()  # rank 0's checkpoint is on disk
        resumed = make_trainer(cfg, distributed=True)
        resumed.load_state_dict(torch.load(Path(out_dir) / "last.pt", weights_only=False))
        same_streams = (torch.equal(resumed.gen.get_state(), trainer.gen.get_state())
                        and torch.equal(resumed.data_gen.get_state(), trainer.data_gen.get_state()))
        torch.save({"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(), "logged": logged,
                    "evaluated": evaluated, "local_batch_size": trainer.local_batch_size,
                    "resumes_own_streams": same_streams}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_with_half_batches_step_like_one_process_with_the_whole_batch(tmp_path):
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    cfg = tiny_config()
    weights, ema, losses = reference_steps(cfg)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for out in ranks:
        assert out["local_batch_size"] == BATCH // 2
        for k in weights:
            torch.testing.assert_close(out["model"][k], weights[k], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out["ema"][k], ema[k], rtol=1e-5, atol=1e-6)
    # rank 0 alone logged and evaluated; the losses it logged (before the evaluation at step 2 and at the
    # end) are the whole batch's, averaged over each interval
    logged = [(step, m["train/loss"]) for step, m in ranks[0]["logged"]]
    assert [s for s, _ in logged] == [2, 3]
    assert [v for _, v in logged] == pytest.approx([(losses[0] + losses[1]) / 2, losses[2]], rel=1e-5)
    assert ranks[0]["evaluated"] == [2] and ranks[1]["evaluated"] == [] and ranks[1]["logged"] == []
    # the checkpoint carries every rank's random streams, they differ, and each rank resumes its own
    assert ranks[0]["resumes_own_streams"] and ranks[1]["resumes_own_streams"]
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == STEPS and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0][1], state["rank_rng"][1][1])


def test_one_process_matches_the_same_reference():
    """The reference above is the single-process Trainer's own semantics too (so the DDP test compares like with like)."""
    cfg = tiny_config()
    trainer = make_trainer(cfg, distributed=False)
    trainer.fit()
    weights, ema, _ = reference_steps(cfg)
    for k in weights:
        torch.testing.assert_close(trainer.model.state_dict()[k], weights[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(trainer.ema.state_dict()[k], ema[k], rtol=1e-5, atol=1e-6)


def test_global_batch_must_split_evenly():
    with pytest.raises(BenchError, match="does not divide"):
        resolve("flow_matching", "smoke", [("train.batch_size", 10), ("train.workers", 3)])
    with pytest.raises(BenchError, match="gpus_per_worker"):
        resolve("flow_matching", "smoke", [("train.gpus_per_worker", 2)])


def test_more_gpus_than_the_machine_has_fails_before_any_run_is_created(isolated_store, monkeypatch):
    from bench.train.run import execute

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = resolve("flow_matching", "smoke", [("train.workers", 64), ("train.gpus_per_worker", 1),
                                             ("train.batch_size", 64), ("train.steps", 1)])
    with pytest.raises(BenchError, match="needs 64 GPUs; this machine has"):
        execute(cfg, "gpus", progress=False)
    assert not (isolated_store / "mlflow.db").exists()


# ----------------------------------------------------------------------------- end to end through Ray


def _descendants(pid: int) -> set[int]:
    """Live processes below pid (from /proc), zombies excluded."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _layout(experiment: str):
    from mlflow.tracking import MlflowClient

    from bench.store.tracking import tracking_uri

    c = MlflowClient(tracking_uri())
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs in {experiment}"
    run = runs[0]
    steps = {k: sorted(m.step for m in c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}

    def artifacts(path=None):
        out = []
        for f in c.list_artifacts(run.info.run_id, path):
            out += artifacts(f.path) if f.is_dir else [f.path]
        return out

    return run, steps, sorted(artifacts())


@pytest.mark.slow
def test_bench_run_with_two_workers_has_the_single_worker_layout(isolated_store, monkeypatch):
    from typer.testing import CliRunner

    from bench.files import checkpoint as ckpt
    from bench.cli import app
    from bench.train.run import checkpoint_dir

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    common = ["--method", "shortcut", "--profile", "smoke", "--quiet",
              "--set", "train.steps=12", "--set", "train.batch_size=32", "--set", "train.log_every=4",
              "--set", "train.checkpoint_every=8", "--set", "train.eval_every=8", "--set", "model.hidden=32",
              "--set", "method.M=4", "--set", "eval.num_samples=64", "--set", "eval.batch_size=64",
              "--set", "train.threads=1"]
    before = _descendants(os.getpid())
    runner = CliRunner()
    for name, workers in (("one", 1), ("two", 2)):
        r = runner.invoke(app, ["run", *common, "--experiment", name, "--set", f"train.workers={workers}"])
        assert r.exit_code == 0, r.output + repr(r.exception)

    one, one_steps, one_files = _layout("one")
    two, two_steps, two_files = _layout("two")
    assert one.info.status == two.info.status == "FINISHED"
    assert two_steps == one_steps  # same keys, each at the same steps (train/* every 4, during/* at 8, n = 1, 2, 4)
    assert one_steps["train/loss"] == [4, 8, 12] and one_steps["fid"] == [1, 2, 4]
    assert set(one.data.params) == set(two.data.params)
    differ = {k for k in one.data.params if one.data.params[k] != two.data.params[k]}
    assert differ == {"train.workers", "device"}, differ
    assert two.data.params["device"] == "cpu x 2 workers (gloo)"
    assert two_files == one_files and "checkpoint/final.pt" in two_files
    final = ckpt.load(checkpoint_dir(two.info.run_id) / "final.pt")
    last = ckpt.load(checkpoint_dir(two.info.run_id) / "last.pt")
    assert final["step"] == last["step"] == 12 and len(last["rank_rng"]) == 2
    assert final["ema_sha256"] == ckpt.state_hash(last["ema"])
    import ray

    assert not ray.is_initialized()
    deadline = time.time() + 20  # ray.shutdown() has signalled its processes; give them time to exit
    while _descendants(os.getpid()) - before and time.time() < deadline:
        time.sleep(0.5)
    assert not _descendants(os.getpid()) - before, "processes left running after bench run"
