"""One benchmark run: check inputs, train, evaluate every n, track. Shared by `bench run`, sweeps
and tests. Everything a user can get wrong is checked before the tracking store is touched."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.classifiers import classifier_for
from bench.files import checkpoint as ckpt
from bench.config import Config
from bench.data import Dataset, load_dataset
from bench.errors import BenchError, TrainingFailed
from bench.phases import PhaseClock, recording, span
from bench.evaluation.evaluate import EvalResult, Evaluator, save_picture, save_samples
from bench.models import build_model, count_parameters
from bench.store.session import RunSession, checkpoint_dir, config_hash, run_is_live
from bench.config import pick_device
from bench.train.trainer import Trainer
from methods import get_method
from methods.base import Method


@dataclass
class RunOutcome:
    run_id: str
    experiment: str
    tracking_uri: str
    artifact_uri: str
    checkpoint: Path
    results: dict[int, dict[str, float]] = field(default_factory=dict)  # n -> metrics


@dataclass
class Prepared:
    """Everything checked and built before anything is written."""

    cfg: Config
    device: torch.device
    data: Dataset
    evaluator: Evaluator
    method: Method
    model: torch.nn.Module


def prepare(cfg: Config, progress: bool = True, teacher: torch.nn.Module | None = None,
            device: torch.device | None = None) -> Prepared:
    """device: None = train.device (a data-parallel worker passes the device Ray Train gave it)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = device or pick_device(cfg.train.device)
    data = load_dataset(cfg.data)
    from bench.store.tracking import store_root

    evaluator = Evaluator(cfg, data, device, store_root() / "cache", progress=progress)
    method_cls = get_method(cfg.method_name)
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg.model, data.shape, data.num_classes)
    method = method_cls(cfg.method, data.num_classes, teacher, train_steps=cfg.train.steps)
    # a method that cannot use these data (or the classifier it distils through) says so before anything is written
    method.setup(data, device, classifier_for(method, data, device))
    evaluator.precision = method.eval_precision(evaluator.precision)  # logged as eval.sampling_precision
    return Prepared(cfg, device, data, evaluator, method, model)


def run_params(p: Prepared) -> dict[str, Any]:
    passes = p.method.passes_per_step(p.cfg.train.batch_size)
    return {
        **p.cfg.flat(),
        **p.evaluator.params(),
        "eval.weights": p.method.eval_weights,
        **p.method.run_params(p.cfg.train.batch_size // p.cfg.train.workers),
        "data.name": p.data.name,
        "data.size": len(p.data),
        "data.shape": "x".join(map(str, p.data.shape)),
        "data.num_classes": p.data.num_classes,
        "data.fingerprint": p.data.fingerprint(),
        "model.parameters": count_parameters(p.model),
        "device": str(p.device),
        "budget.train_steps": p.cfg.train.steps,
        "budget.train_examples": p.cfg.train.steps * p.cfg.train.batch_size,
        **{f"budget.{k}_per_step": v for k, v in passes.items()},
        "eval.sampling_steps": ",".join(map(str, p.cfg.sampling_steps())),
        **ladder_params(p.method),
    }


def ladder_params(method: Method) -> dict[str, str]:
    """`loss_ladder`: the method's ladder of row groups as JSON (groups, labels, base), so that
    `bench report` draws the train/loss_<group> metrics in order and named without asking the method."""
    ladder = method.loss_ladder()
    if ladder is None:
        return {}
    return {"loss_ladder": json.dumps({"groups": list(ladder.groups), "labels": list(ladder.labels), "base": ladder.base})}


def deviation_text(cfg: Config) -> str:
    """"levels=quarter_large, bootstrap_weight=8": the method's knobs away from its recipe, or ""."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.method.deviations().items())


def deviation_tag(cfg: Config) -> dict[str, str]:
    text = deviation_text(cfg)
    return {"method.deviations": text} if text else {}


def open_tracker(p: Prepared, experiment: str, run_name: str, extra_tags: dict[str, str] | None,
                 parent_run_id: str | None, resume_run_id: str | None, uri: str):
    """The MLflow run of one configuration: its name and the tags every run carries."""
    from bench.store.tracking import Tracker, environment, git_commit

    cfg = p.cfg
    return Tracker(
        experiment,
        run_name=run_name or f"{cfg.method_name}-{cfg.data.spec.split('/')[-1]}-s{cfg.seed}",
        tags={"method": cfg.method_name, "profile": cfg.profile, "dataset": p.data.name, "seed": str(cfg.seed),
              "git_commit": git_commit(), "config_hash": config_hash(cfg), **environment(), **deviation_tag(cfg),
              **(extra_tags or {})},
        parent_run_id=parent_run_id,
        resume_run_id=resume_run_id,
        uri=uri,
    )


def execute(
    cfg: Config,
    experiment: str | None = None,
    *,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str = "",
    extra_tags: dict[str, str] | None = None,
    extra_params: dict[str, Any] | None = None,
    progress: bool = True,
    teacher: torch.nn.Module | None = None,
    echo=print,
    on_run=None,
    on_metrics=None,
) -> RunOutcome:
    """Train and evaluate one configuration; returns the metrics per number of sampling steps.

    on_run(run_id): called once the MLflow run exists (a sweep trial keeps the id in its Ray checkpoint).
    on_metrics(step, metrics): called with what the run logs during training, at each train/* log point and
    each during-training evaluation (during/*), after it is in the store (a sweep trial reports it to Tune).
    A run that stops on its own evidence (non-finite loss, the failure rule) raises TrainingFailed after
    tagging itself failure.reason / failure.step / failure.message and ending FAILED.
    resume_run_id: continue that run from its last.pt, or from step 0 when it died before its first checkpoint.
    The run's wall time by phase goes to its artifacts as phases.json (bench.phases) and is printed.
    """
    clock = PhaseClock()
    with recording(clock):
        return _execute(cfg, experiment or cfg.profile, clock, resume_run_id=resume_run_id, parent_run_id=parent_run_id,
                        run_name=run_name, extra_tags=extra_tags, extra_params=extra_params, progress=progress,
                        teacher=teacher, echo=echo, on_run=on_run, on_metrics=on_metrics)


def log_phases(tracker, clock: PhaseClock, echo=print) -> None:
    """phases.json (the clock's rows) into the run's artifacts, and the table printed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phases.json"
        path.write_text(json.dumps(clock.rows(), indent=1))
        tracker.log_artifact(path)
    echo("wall time by phase (phases.json in the run's artifacts):\n" + clock.text())


def _execute(cfg: Config, experiment: str, clock: PhaseClock, *, resume_run_id, parent_run_id, run_name, extra_tags,
             extra_params, progress, teacher, echo, on_run, on_metrics=None) -> RunOutcome:
    from bench.store.tracking import check_reachable, tracking_uri

    with span("setup"):
        p = prepare(cfg, progress=progress, teacher=teacher)
    teacher_plan = None
    if p.method.needs_teacher:  # check a given teacher now; train one (nested run) once this run exists
        from bench.train.teachers import TeacherPlan

        teacher_plan = TeacherPlan.check(p, teacher)
    with span("setup"):
        if p.evaluator.space.extractor is not None:
            p.evaluator.extractor()  # load the feature extractor now: missing weights fail before training
        uri = tracking_uri()
        check_reachable(uri)
    if cfg.train.workers > 1:  # data parallel (Ray Train): the GPUs / CPUs asked for are checked before anything is written
        from bench.train.distributed import check_request

        extra_params = {"device": check_request(cfg), **(extra_params or {})}

    resume_state = None
    if resume_run_id:
        path = checkpoint_dir(resume_run_id) / "last.pt"
        resume_state, _ = ckpt.load_latest(path, warn=echo)  # None: died before its first checkpoint
        # through Config: keys added to the harness since the checkpoint take their defaults
        if resume_state is not None and Config.from_dict(resume_state["config"]).to_dict() != cfg.to_dict():
            raise BenchError(f"Run {resume_run_id} was started with another configuration; resume it without new overrides.")
        if run_is_live(resume_run_id):
            raise BenchError(f"Run {resume_run_id} is still running in another process.")

    with span("mlflow_writes"):  # the run's creation (and the store's, on first use)
        tracker = open_tracker(p, experiment, run_name, extra_tags, parent_run_id, resume_run_id, uri)
    with RunSession(tracker) as session:  # --resume never picks a run a live process holds
        if on_run is not None:
            on_run(tracker.run_id)
        if teacher_plan is not None:
            with span("teacher"):  # a nested run with its own phases
                extra_params = {**teacher_plan.provide(p, tracker, experiment, execute, progress, echo), **(extra_params or {})}
        with span("setup"):
            params = {**run_params(p), **(extra_params or {})}
        tracker.log_params(params)
        ckpt_path = checkpoint_dir(tracker.run_id) / "last.pt"
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.json"
            config_file.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
            tracker.log_artifact(config_file)
        if cfg.train.workers > 1:
            from bench.train.distributed import fit_data_parallel

            results = fit_data_parallel(p, experiment, tracker.run_id, uri, data_parallel_worker, progress=progress, echo=echo)
        else:
            try:
                results = train_and_evaluate(p, tracker.run_id, tracker, resume_state, progress=progress, echo=echo,
                                             on_metrics=on_metrics)
            except TrainingFailed as e:
                for k, v in {"failure.reason": e.reason, "failure.step": str(e.step), "failure.message": str(e)[:4000]}.items():
                    tracker.set_tag(k, v)
                log_phases(tracker, clock, echo)
                raise
        log_phases(tracker, clock, echo)
        session.status = "FINISHED"
        return RunOutcome(tracker.run_id, experiment, uri, tracker.artifact_uri, ckpt_path, results)


def train_and_evaluate(p: Prepared, run_id: str, tracker, resume_state: dict[str, Any] | None = None, *,
                       progress: bool = True, echo=print, distributed: bool = False,
                       on_metrics=None) -> dict[int, dict[str, float]]:
    """Train (from resume_state when given), write final.pt, evaluate at every n; returns n -> metrics.

    Data parallel (distributed=True) every rank calls this; tracker is None on the ranks other than
    0: they train in lockstep only (no checkpoints, logs or evaluation) and return {}.
    """
    cfg = p.cfg
    main = tracker is not None
    ckpt_path = checkpoint_dir(run_id) / "last.pt"

    def weights() -> torch.nn.Module:
        return trainer.model if p.method.eval_weights == "live" else trainer.ema

    during = p.evaluator.during() if (main and cfg.train.eval_every) else None

    def evaluate_during(step: int) -> None:
        out: dict[str, float] = {}
        for r in during.evaluate_steps(p.method, weights(), cfg.during_steps(), cfg.method.M):
            out.update({f"during/{k}_n{r.num_sampling_steps}": v for k, v in r.metrics.items()})
        tracker.log_metrics(out, step)
        if on_metrics is not None:
            on_metrics(step, out)

    ladder = p.method.loss_ladder()
    rule = signal = None
    if main and ladder is not None:
        from bench.evaluation.levels import FailureRule, LevelWindows

        tc = cfg.train
        # train/level_ratio: the levels' mean loss / target second moment over the rule's window (5 log
        # points when the rule is off), a cheap signal a sweep's scheduler can act on (docs/output.md)
        signal = LevelWindows(ladder, tc.divergence_points or 5)
        if tc.divergence_points > 0:
            rule = FailureRule(ladder, tc.divergence_points, growth=tc.failure_growth, ceiling=tc.failure_ceiling)

    def log(metrics: dict[str, float], step: int) -> None:
        if signal is not None and signal.add(metrics):
            metrics = {**metrics, "train/level_ratio": signal.mean_ratio()}
        tracker.log_metrics(metrics, step)
        if on_metrics is not None:
            on_metrics(step, metrics)
        if rule is not None and rule.update(metrics, step):
            tracker.set_tag("train.failing_level", rule.message())
            if cfg.train.failure_rule == "stop":
                raise TrainingFailed(f"The failure rule stopped training: {rule.message()} (train.failure_rule = stop; "
                                     f"the last checkpoint is kept).", step=step, reason="failure_rule")
            echo(f"warning: {rule.message()}; training continues (train.failure_rule = warn; run tag train.failing_level)")

    with span("setup"):  # the optimiser's first use imports much of torch
        trainer = Trainer(cfg, p.method, p.model, p.data, p.device, checkpoint_path=ckpt_path if main else None,
                          log=log if main else None, evaluate=evaluate_during if main else None,
                          checkpoint_extra=lambda: {"mlflow_run_id": run_id}, progress=progress and main,
                          distributed=distributed)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        if main:
            echo(f"resuming run {run_id} at step {trainer.step}/{cfg.train.steps} from {ckpt_path}")
    if during is not None:
        with span("eval_during"):  # what the evaluation during training will cost, said before training
            with span("reference_features"):
                during.reference_features()
            est = during.estimate(p.method, weights(), cfg.during_steps())
        calls = len(range(trainer.step + cfg.train.eval_every, cfg.train.steps, cfg.train.eval_every))
        each = est.seconds - est.reference_seconds - est.warmup_seconds - est.output_seconds * len(est.steps)  # no files
        echo(f"evaluation during training: every {cfg.train.eval_every} steps ({calls} more), "
             f"{cfg.eval.during_samples:,} samples at n = {','.join(map(str, cfg.during_steps()))}: "
             f"~{each:.1f} s each, ~{calls * each / 60:.1f} min in all "
             f"(metrics during/<metric>_n<n> at the training step)")
        tracker.set_tag("eval.during_estimate_seconds", f"{calls * each:.3f}")
    trainer.fit()
    by_t = trainer.loss_by_t() if ladder is not None else {}  # data parallel: a collective, every rank takes part
    if not main:
        return {}
    if ladder is not None:
        from bench.evaluation.levels import log_level_maps
        from bench.train.trainer import LOSS_BY_T_SHARE

        with span("level_maps"):
            log_level_maps(tracker, run_id, ladder, by_t, f"{cfg.method_name} on {cfg.data.spec}, seed {cfg.seed}", LOSS_BY_T_SHARE)
    final = ckpt_path.parent / "final.pt"
    with span("final_checkpoint"):
        ema_sha256 = ckpt.state_hash(trainer.ema.state_dict())
        ckpt.save({"ema": trainer.ema.state_dict(), "model": trainer.model.state_dict(), "config": cfg.to_dict(),
                   "method": p.method.state_dict(), "step": trainer.step, "ema_sha256": ema_sha256}, final)
    tracker.log_artifact(final, "checkpoint")
    tracker.set_tag("ema_sha256", ema_sha256)  # the trained weights' hash: two runs that should agree compare it
    return evaluate_all(p, weights(), tracker, progress=progress, echo=echo)


def data_parallel_worker(config: dict[str, Any]) -> dict[int, dict[str, float]]:
    """One Ray Train worker (bench.train.distributed runs it): rebuild the run, train in lockstep; rank 0
    logs, checkpoints, evaluates."""
    import ray.train
    import ray.train.torch

    from bench.train.distributed import EchoingTracker
    from bench.store.tracking import Tracker

    torch.set_num_threads(config["threads"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if config["gpus"] else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = Config.from_dict(config["cfg"])
    teacher = config["teacher"].to(device) if config["teacher"] is not None else None
    p = prepare(cfg, progress=False, teacher=teacher, device=device)
    p.model.load_state_dict(config["model_state"])
    p.method.load_state_dict(config["method_state"])
    # a checkpoint of this run exists when resuming or when Ray Train restarts the workers
    state_path = checkpoint_dir(config["run_id"]) / "last.pt"
    resume_state = ckpt.load(state_path) if state_path.is_file() else None
    tracker = None
    if rank == 0:
        tracker = Tracker(config["experiment"], resume_run_id=config["run_id"], uri=config["uri"])
        if config["progress"]:
            tracker = EchoingTracker(tracker, cfg.train.steps)
    return train_and_evaluate(p, config["run_id"], tracker, resume_state, progress=False,
                              echo=lambda s: print(s, flush=True), distributed=True)


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: Path,
    experiment: str | None = None,
    *,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str = "",
    extra_tags: dict[str, str] | None = None,
    extra_params: dict[str, Any] | None = None,
    progress: bool = True,
    echo=print,
    on_run=None,
) -> RunOutcome:
    """Evaluate a trained checkpoint's EMA weights (or live ones, Method.eval_weights) under `cfg` without training, in a run with the
    same metric layout as `execute`: sampling-time settings (flow matching's CFG scale, eval.*) swept
    on one trained model. `cfg` may differ from the checkpoint's own config only where sampling reads it."""
    from bench.store.tracking import check_reachable, tracking_uri

    experiment = experiment or cfg.profile
    state = ckpt.load(checkpoint)
    trained, wanted = state.get("config", {}), cfg.to_dict()
    if any(trained.get(k) != wanted[k] for k in ("method_name", "data", "model")):
        raise BenchError(f"Checkpoint {checkpoint} was trained with another method, model or data; it cannot be evaluated under this configuration.")
    p = prepare(cfg, progress=progress)
    if p.evaluator.space.extractor is not None:
        p.evaluator.extractor()
    uri = tracking_uri()
    check_reachable(uri)
    p.model.load_state_dict(state["model" if p.method.eval_weights == "live" else "ema"])
    p.method.load_state_dict(state.get("method", {}))
    model = p.model.to(p.device).requires_grad_(False).eval()
    tracker = open_tracker(p, experiment, run_name, extra_tags, parent_run_id, resume_run_id, uri)
    with RunSession(tracker, lock=False) as session:
        if on_run is not None:
            on_run(tracker.run_id)
        tracker.log_params({**run_params(p), "eval.checkpoint": str(checkpoint), "eval.checkpoint_step": state.get("step", ""),
                            "eval.checkpoint_ema_sha256": state.get("ema_sha256", ""), **(extra_params or {})})
        results = evaluate_all(p, model, tracker, progress=progress, echo=echo)
        session.status = "FINISHED"
        return RunOutcome(tracker.run_id, experiment, uri, tracker.artifact_uri, Path(checkpoint), results)


def evaluate_all(p: Prepared, ema: torch.nn.Module, tracker, progress: bool = True, echo=print) -> dict[int, dict[str, float]]:
    """Every n in the config's sampling steps: metrics (step = n), samples and a picture as artifacts."""
    from tqdm import tqdm

    results: dict[int, dict[str, float]] = {}
    with span("reference_features"):  # computed (or read from the cache) once, before the estimate times anything
        features = p.evaluator.reference_features()
    ref = features if p.data.kind == "points" else None
    steps = p.cfg.sampling_steps()
    with span("eval_estimate", absorb=True):  # a timing pass: its sampling and distances are its own cost
        estimate = p.evaluator.estimate(p.method, ema, steps)
    echo(estimate.text())
    tracker.set_tag("eval.estimate_seconds", f"{estimate.seconds:.3f}")  # what the run expected its evaluation to take
    with tempfile.TemporaryDirectory() as tmp:
        # n = M first, then M/2, ..., 1: every n's paired_to_M (paired_to_2n) compares its samples with the
        # M-step (2n-step) ones from the same noise
        for r in tqdm(p.evaluator.evaluate_steps(p.method, ema, steps, p.cfg.method.M), total=len(steps),
                      desc="evaluate", unit="n", disable=not progress):
            n = r.num_sampling_steps
            results[n] = r.metrics
            r.samples = r.samples[: p.cfg.eval.save_samples]
            r.labels = r.labels[: p.cfg.eval.save_samples] if r.labels is not None else None
            with span("samples_and_pictures"):
                files = save_samples(r, Path(tmp) / f"steps_{n}.npz"), save_picture(r, p.data, Path(tmp) / f"steps_{n}.png", ref)
            tracker.log_artifact(files[0], "samples")
            tracker.log_artifact(files[1], "grids" if p.data.kind == "images" else "scatter")
    for n in sorted(results):  # into the store in the order of n (MLflow's history keeps the order of logging)
        tracker.log_metrics(results[n], step=n)
    tracker.log_fid_curve(results, f"{p.cfg.method_name} on {p.cfg.data.spec}, seed {p.cfg.seed}, "
                                   f"{p.cfg.eval.num_samples} samples per n")
    with span("fid_floor"):
        floor = p.evaluator.fid_floor()
    if floor:
        tracker.log_metrics(floor, step=0)
        echo(f"FID floor at {p.cfg.eval.num_samples} samples against the {len(p.evaluator.reference)} reference "
             f"{'images' if p.data.kind == 'images' else 'rows'}: {floor['fid_floor_fresh']:.3g} for new data from their distribution "
             f"(sd of one such run {floor['fid_floor_fresh_sd']:.2g} with the reference drawn anew too"
             + (f", {floor['fid_floor_fresh_sd_fixed_ref']:.2g} against this reference set" if "fid_floor_fresh_sd_fixed_ref" in floor else "")
             + f"; s.e. of this mean {floor['fid_floor_fresh_se']:.1g}), "
             f"{floor['fid_floor_copy']:.3g} for copies of them (metrics fid_floor_*)")
    return dict(sorted(results.items()))


def format_table(results: dict[int, dict[str, float]]) -> str:
    """Metrics against sampling steps as a fixed-width text table: the registry's table columns
    (bench/evaluation/registry.py) that any n has, in their order and format."""
    from bench.evaluation.registry import table_columns

    columns = [c for c in table_columns() if any(c.name in m for m in results.values())]
    head = f"{'steps':>6} " + " ".join(f"{c.name:>10}" for c in columns)
    lines = [head, "-" * len(head)]
    for n in sorted(results):
        lines.append(f"{n:>6} " + " ".join(f"{results[n].get(c.name, math.nan):>10{c.column}}" for c in columns))
    return "\n".join(lines)



