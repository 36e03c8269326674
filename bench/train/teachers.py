"""Teachers for the methods that distil (`Method.needs_teacher`): a frozen flow-matching model.

Where it comes from, in this order:
- `--set teacher=RUN_ID`: a finished run in the tracking store; its artifact checkpoint/final.pt
  holds the "ema" weights (used) and the "config" (checked against the student's);
- `--set teacher=PATH`: a checkpoint file with the same two entries (final.pt or last.pt);
- neither: a flow-matching run with the student's profile, data, model, training budget and
  evaluation is trained first, as a nested MLflow run of the student's run (tag bench.role =
  teacher), and printed so it can be reused with `--set teacher=RUN_ID`.
The teacher is frozen (requires_grad False, eval mode). The student's run records its source,
the hash of its weights (`teacher.ema_sha256`, bench.files.checkpoint.state_hash) and its training
budget (`budget.teacher_*`, `budget.total_*`), so distillation is charged for its teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from bench.files import checkpoint as ckpt
from bench.config import Config
from bench.errors import BenchError
from bench.store.session import checkpoint_dir

TEACHER_METHOD = "flow_matching"
ROLE_TAG = "bench.role"  # "teacher" on a teacher trained inside a student's run


@dataclass
class Teacher:
    """A frozen teacher and where it came from. config is None for a bare module handed over in code."""

    module: nn.Module
    source: str  # "run" | "checkpoint" | "trained" | "given"
    sha256: str
    config: Config | None = None
    run_id: str = ""
    path: str = ""

    def params(self, student: Config) -> dict[str, Any]:
        """Run params of the student: the teacher's identity and its share of the training budget."""
        out: dict[str, Any] = {"teacher.source": self.source, "teacher.run_id": self.run_id or "-",
                               "teacher.path": self.path or "-", "teacher.ema_sha256": self.sha256}
        if self.config is None:
            return out
        from methods import get_method

        tc = self.config.train
        method = get_method(self.config.method_name)(self.config.method, 0, train_steps=tc.steps)
        out.update({
            "teacher.method": self.config.method_name,
            "budget.teacher_train_steps": tc.steps,
            "budget.teacher_examples": tc.steps * tc.batch_size,
            **{f"budget.teacher_{k}_per_step": v for k, v in method.passes_per_step(tc.batch_size).items()},
            "budget.total_train_steps": student.train.steps + tc.steps,
            "budget.total_train_examples": student.train.steps * student.train.batch_size + tc.steps * tc.batch_size,
        })
        return out


def teacher_config(cfg: Config) -> Config:
    """The flow-matching teacher trained when none is given: the student's profile, seed, data, model,
    training budget and evaluation; its M and CFG scale."""
    from methods import get_method

    opts = get_method(TEACHER_METHOD).Options(M=cfg.method.M, cfg_scale=cfg.method.cfg_scale)
    opts.validate()
    return Config(method_name=TEACHER_METHOD, profile=cfg.profile, seed=cfg.seed, data=copy.deepcopy(cfg.data),
                  model=copy.deepcopy(cfg.model), train=copy.deepcopy(cfg.train), eval=copy.deepcopy(cfg.eval),
                  method=opts)


def freeze(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False).eval()


def from_checkpoint_state(state: dict[str, Any], student: Config, data, device, source: str, where: str,
                          run_id: str = "", path: str = "") -> Teacher:
    """Build the frozen teacher from a checkpoint's "config" and "ema" weights, after checking that it
    is a flow-matching model of the student's data and architecture."""
    from bench.models import build_model

    if not isinstance(state, dict) or "config" not in state or not ({"ema", "model"} & set(state)):
        raise BenchError(f"Teacher {where} is not a bench checkpoint (it needs 'config' and 'ema' entries).")
    tcfg = Config.from_dict(state["config"])
    if tcfg.method_name != TEACHER_METHOD:
        raise BenchError(f"Teacher {where} is a {tcfg.method_name} model; {student.method_name} distils a {TEACHER_METHOD} teacher.")
    if dataclasses.asdict(tcfg.data) != dataclasses.asdict(student.data):
        raise BenchError(f"Teacher {where} was trained on data {tcfg.data.spec!r} with other data settings than this run "
                         f"({student.data.spec!r}); use a teacher trained on the same data.")
    # d_scale is no weight, and a flow-matching teacher is only queried at d = 0, whose embedding is the
    # same at every scale: the teacher keeps its own, the student (and a copy of the teacher) its own
    shapes = lambda m: {k: v for k, v in dataclasses.asdict(m).items() if k != "d_scale"}  # noqa: E731
    if shapes(tcfg.model) != shapes(student.model):
        raise BenchError(f"Teacher {where} has another architecture ({dataclasses.asdict(tcfg.model)}) than this run's "
                         f"model ({dataclasses.asdict(student.model)}); the student starts from the teacher, so they must match.")
    weights = state["ema"] if "ema" in state else state["model"]
    module = build_model(tcfg.model, data.shape, data.num_classes)
    try:
        module.load_state_dict(weights)
    except RuntimeError:
        raise BenchError(f"Teacher {where}'s weights do not fit the model built from its own config.") from None
    return Teacher(freeze(module.to(device)), source, ckpt.state_hash(weights), tcfg, run_id=run_id, path=path)


def load_from_run(run_id: str, student: Config, data, device, source: str = "run") -> Teacher:
    """A finished run's artifact checkpoint/final.pt."""
    from bench.store.tracking import NotInStore, RunStore, store_exists, tracking_uri

    uri = tracking_uri()
    missing = f"Teacher {run_id!r} is neither a checkpoint file nor a run in the tracking store {uri}."
    if not store_exists(uri):
        raise BenchError(missing)  # no store yet: nothing to look up (and none is created by looking)
    store = RunStore(uri)
    try:
        run = store.get(run_id)
    except NotInStore:
        raise BenchError(missing) from None
    if run.status != "FINISHED":
        raise BenchError(f"Teacher run {run_id} has not finished (status {run.status}); "
                         f"continue it with `bench resume {run_id}` or pick a finished run.")
    with tempfile.TemporaryDirectory() as tmp:  # unused by the embedded store: its artifact is read where it lies
        try:
            local = store.fetch_artifact(run, "checkpoint/final.pt", tmp)
        except NotInStore:
            raise BenchError(f"Teacher run {run_id} has no artifact checkpoint/final.pt.") from None
        state = ckpt.load(local)
    return from_checkpoint_state(state, student, data, device, source, f"run {run_id}", run_id=run_id)


def looks_like_path(spec: str) -> bool:
    return "/" in spec or spec.endswith((".pt", ".pth")) or Path(spec).exists()


def load_teacher(spec: str, student: Config, data, device) -> Teacher:
    """`teacher=` as a checkpoint path or a run id."""
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        state = ckpt.load(path)
        return from_checkpoint_state(state, student, data, device, "checkpoint", str(path),
                                     run_id=str(state.get("mlflow_run_id", "")), path=str(path.resolve()))
    return load_from_run(spec, student, data, device)


def child_teacher_run(tracker) -> Any | None:
    """The newest teacher run nested under the student's run (a resumed student finds its teacher), a
    bench.store.tracking.StoredRun."""
    runs = tracker.runs.find(experiment_id=tracker.experiment_id,
                             tags={"mlflow.parentRunId": tracker.run_id, ROLE_TAG: "teacher"}, newest_first=True, limit=1)
    return runs[0] if runs else None


class TeacherPlan:
    """What `bench.train.run.execute` does for a method that needs a teacher. `check` runs before the store
    is written (a given teacher is loaded and checked there); `provide` runs once the student's run
    exists: it trains the nested teacher if none was given, hands the teacher to the method, starts
    the student from it when the method says so, and returns the params to log."""

    def __init__(self, teacher: Teacher | None):
        self.teacher = teacher

    @classmethod
    def check(cls, p, module: nn.Module | None = None) -> "TeacherPlan":
        if module is not None:
            frozen = freeze(module.to(p.device))
            return cls(Teacher(frozen, "given", ckpt.state_hash(frozen.state_dict())))
        spec = p.cfg.method.teacher  # a method that needs a teacher has TeacherOptions
        return cls(load_teacher(spec, p.cfg, p.data, p.device) if spec else None)

    def provide(self, p, tracker, experiment: str, train: Callable[..., Any], progress: bool = True, echo=print
                ) -> dict[str, Any]:
        """train: bench.train.run.execute, passed in (a nested teacher run is a run like any other)."""
        if self.teacher is None:
            self.teacher = self.train_nested(p, tracker, experiment, train, progress, echo)
        p.method.teacher = self.teacher.module
        if p.method.init_from_teacher:
            p.model.load_state_dict(self.teacher.module.state_dict())
        return self.teacher.params(p.cfg)

    def train_nested(self, p, tracker, experiment: str, train: Callable[..., Any], progress: bool, echo) -> Teacher:
        child = child_teacher_run(tracker)
        if child is not None and child.status == "FINISHED":
            echo(f"using the teacher run {child.run_id} trained earlier inside run {tracker.run_id}")
            return load_from_run(child.run_id, p.cfg, p.data, p.device, source="trained")
        resume = child.run_id if child is not None and (checkpoint_dir(child.run_id) / "last.pt").is_file() else None
        tcfg = teacher_config(p.cfg)
        echo(f"{p.cfg.method_name} needs a {TEACHER_METHOD} teacher and none was given (teacher=RUN_ID or a "
             f"checkpoint path): training one first, {tcfg.train.steps} steps, as a nested run of {tracker.run_id}")
        out = train(tcfg, experiment, resume_run_id=resume, parent_run_id=tracker.run_id,
                      run_name=f"teacher-{p.cfg.method_name}-{p.cfg.data.spec.split('/')[-1]}-s{p.cfg.seed}",
                      extra_tags={ROLE_TAG: "teacher", "teacher_of": tracker.run_id}, progress=progress, echo=echo)
        echo(f"teacher run {out.run_id} finished; reuse it with --set teacher={out.run_id}")
        return load_from_run(out.run_id, p.cfg, p.data, p.device, source="trained")
