"""bench/evaluation/registry.py is the one place a metric is declared: what the evaluator logs, the
columns of `bench run`'s table and the report's metric list all come from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from bench.config import resolve
from bench.evaluation import registry
from bench.evaluation.registry import Metric, Name

# the per-n metrics logged before the registry existed: stores written then are read by their names
LOGGED_BEFORE = ("fid", "kid", "kid_std", "precision", "recall", "sw", "modes_hit", "mode_share", "nfe",
                 "paired_to_M", "paired_to_M_features", "paired_to_2n")
# `bench run`'s table before the registry: these columns, in this order; counts printed with %g
TABLE_BEFORE = ("fid", "kid", "precision", "recall", "sw", "modes_hit", "mode_share", "paired_to_M", "nfe")


def tiny_evaluation(profile: str, *sets: str) -> dict[int, dict[str, float]]:
    """n -> metrics of an untrained model (M = 2), evaluated as a run evaluates."""
    from bench.train.run import prepare

    cfg = resolve("flow_matching", profile, ["M=2", "model.arch=mlp", "model.hidden=16", *sets])
    p = prepare(cfg, progress=False)
    return {r.num_sampling_steps: r.metrics for r in p.evaluator.evaluate_steps(p.method, p.model, [1, 2], 2)}


@pytest.fixture(scope="module")
def points_and_images():
    """Eight Gaussians (fid, sw, modes, paired in the data space) and digits (fid, kid, precision/recall,
    paired in both spaces): between them every kind of metric."""
    points = tiny_evaluation("smoke", "eval.num_samples=200", "eval.batch_size=200")
    images = tiny_evaluation("digits", "eval.num_samples=40", "eval.batch_size=40", "eval.save_samples=30")
    return points, images


def test_the_evaluator_logs_exactly_the_registry_names(points_and_images):
    points, images = points_and_images
    logged = {k for run in points_and_images for m in run.values() for k in m}
    assert logged == {n.name for n in registry.all_names()}  # nothing outside the registry, nothing it declares unused
    assert set(LOGGED_BEFORE) <= set(registry.report_names())
    assert {"sw", "modes_hit", "mode_share"} <= set(points[1]) and not {"kid", "precision"} & set(points[1])
    assert {"kid", "kid_std", "precision", "recall", "paired_to_M_features"} <= set(images[1]) and "sw" not in images[1]
    assert "paired_to_2n" in points[1] and "paired_to_2n" not in points[2]  # 2n = 4 was not evaluated
    assert points[2]["paired_to_M"] == 0.0 and points[1]["nfe"] == 1.0 and images[2]["nfe"] == 2.0
    # within a stage in the registry's order, the stages in the evaluation's: features, sampler, samples, paired
    assert list(points[1]) == ["fid", "sw", "nfe", "modes_hit", "mode_share", "paired_to_M", "paired_to_2n"]


def test_every_name_says_which_way_is_better():
    names = registry.all_names()
    assert len({n.name for n in names}) == len(names)
    assert all(n.lower_is_better in (True, False, None) for n in names)
    better = {n.name: n.lower_is_better for n in names}
    assert better["fid"] is True and better["precision"] is False and better["recall"] is False
    assert better["nfe"] is None


def test_the_table_columns_come_from_the_registry():
    from bench.train.run import format_table

    results = {1: {k: 0.123456 for k in LOGGED_BEFORE} | {"modes_hit": 7.0, "nfe": 1.0},
               2: {"fid": 2.5, "nfe": 2.0}}
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["steps", *TABLE_BEFORE]
    assert lines[0].split()[1:] == [c.name for c in registry.table_columns() if c.name in results[1]]
    assert lines[2].split() == ["1", *("7" if k == "modes_hit" else "1" if k == "nfe" else "0.1235" for k in TABLE_BEFORE)]
    assert lines[3].split() == ["2", "2.5", *["nan"] * 7, "2"]
    assert format_table({4: {"fid": 1.0, "nfe": 4.0}}).splitlines()[0].split() == ["steps", "fid", "nfe"]


def test_a_registered_metric_reaches_the_evaluator_the_table_and_the_report(monkeypatch):
    from bench.train.run import format_table

    monkeypatch.setattr(registry, "REGISTRY", list(registry.REGISTRY))
    registry.register(Metric("kept", "samples", lambda x: {"kept_rows": float(len(x.samples))},
                             (Name("kept_rows", lower_is_better=None, column="g", report=False),)))
    registry.register(Metric("far", "paired", lambda x: {"far_from_M": 1.0} if x.anchor_samples is not None else {},
                             (Name("far_from_M", lower_is_better=None),)))
    results = tiny_evaluation("smoke", "eval.num_samples=64", "eval.batch_size=64")
    assert all(m["kept_rows"] == 64.0 and m["far_from_M"] == 1.0 for m in results.values())
    assert list(results[1])[-2:] == ["paired_to_2n", "far_from_M"]  # after the other paired metrics
    assert format_table(results).splitlines()[0].split()[-2:] == ["nfe", "kept_rows"]  # registered last; far_from_M: no column
    assert "far_from_M" in registry.report_names() and "kept_rows" not in registry.report_names()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Metric("again", "samples", lambda x: {}, (Name("fid"),)))
    with pytest.raises(ValueError, match="stages"):
        registry.register(Metric("where", "somewhere", lambda x: {}, (Name("where"),)))


def test_a_metric_writing_a_name_it_does_not_declare_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", [Metric("sloppy", "samples", lambda x: {"other": 1.0}, (Name("sloppy"),))])
    with pytest.raises(RuntimeError, match="wrote other, which it does not declare"):
        registry.measure("samples", None)


def test_the_report_collects_what_is_registered_when_it_runs(monkeypatch):
    """A metric registered after bench.report was imported is collected; a name the registry does not
    report (report=False), or no longer holds, is not, though the run logged it."""
    from bench.report import collect
    from bench.store.tracking import Tracker

    run = Tracker("reg", tags={"method": "flow_matching"})
    run.log_params({"seed": 0, "eval.num_samples": 64})
    for n in (1, 2):
        run.log_metrics({"fid": 10.0 / n, "far_from_M": 0.5 / n, "kept_rows": 64.0}, step=n)
    run.end("FINISHED")
    before = collect("reg")
    assert set(before["metric"]) == {"fid"}
    monkeypatch.setattr(registry, "REGISTRY", list(registry.REGISTRY))
    registry.register(Metric("far", "paired", lambda x: {}, (Name("far_from_M", lower_is_better=None),)))
    registry.register(Metric("kept", "samples", lambda x: {}, (Name("kept_rows", lower_is_better=None, report=False),)))
    after = collect("reg")
    assert set(after["metric"]) == {"fid", "far_from_M"}
    far = after[after.metric == "far_from_M"].sort_values("steps")
    assert far["steps"].tolist() == [1, 2] and far["value"].tolist() == [0.5, 0.25]
    assert set(LOGGED_BEFORE) <= set(registry.report_names())  # the report's list before the registry (its order aside)


# -- what a dataset declares ---------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def dataset_names() -> set[str]:
    """Every name and spec prefix the data layer knows a dataset by (LOADERS' prefixes, the toys)."""
    from bench.data import LOADERS, TOYS

    return set(LOADERS) | set(TOYS) | {f"toy:{t}" for t in TOYS}


def named_datasets(source: str) -> list[tuple[int, str]]:
    """(line, name) of every comparison with a dataset's name (==, !=, in) and every startswith / endswith
    of a spec prefix (e.g. "toy:") in `source`."""
    names = dataset_names()

    def strings(node):
        elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found += [(node.lineno, s) for side in (node.left, *node.comparators) for s in strings(side) if s in names]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
            found += [(node.lineno, s) for a in node.args for s in strings(a) if s.partition(":")[0] in names]
    return found


def test_the_scan_finds_a_dataset_named_in_a_branch():
    assert named_datasets('x = "a" if data.name == "digits" else "b"') == [(1, "digits")]
    assert named_datasets('if spec.startswith("toy:"):\n    pass\nif kind in ("cifar10", "x"):\n    pass') == [(1, "toy:"), (3, "cifar10")]
    assert named_datasets('if space == "digits-classifier" or kind == "images":\n    pass') == []


def test_no_dataset_is_named_outside_the_data_layer():
    """Evaluation, classifiers, training and methods read what a dataset declares (kind, feature_space,
    classifier, ...), never which dataset it is: a new dataset is added in bench/data/ alone."""
    offenders = []
    for path in sorted([*(ROOT / "bench").rglob("*.py"), *(ROOT / "methods").rglob("*.py")]):
        if ROOT / "bench" / "data" in path.parents:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in named_datasets(path.read_text())]
    assert offenders == []


def test_datasets_declare_their_feature_space_and_classifier():
    from bench.config import DataConfig
    from bench.data import TensorData, load_dataset

    digits = load_dataset(DataConfig(spec="digits"))
    assert (digits.feature_space, digits.classifier) == ("digits-classifier", "digits-probe")
    unlabelled = load_dataset(DataConfig(spec="digits", labels=False))
    assert unlabelled.num_classes == 0 and (unlabelled.feature_space, unlabelled.classifier) == ("digits-classifier", "digits-probe")
    toy = load_dataset(DataConfig(spec="toy:checkerboard", num_train=16))
    assert (toy.feature_space, toy.classifier) == ("coords", None)
    images = TensorData("npz:/x.npz", "images", torch.zeros(2, 3, 8, 8), None, 0)
    assert (images.feature_space, images.classifier) == ("inception", "resnet18")
    assert TensorData("npz:/v.npz", "vectors", torch.zeros(2, 5), None, 0).feature_space == "raw"
