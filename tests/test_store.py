"""bench.store.tracking.RunStore, the one way to read the tracking store: a round trip through a
temporary SQLite store, and the layout rule that nothing outside bench/store/ talks to MLflow itself."""

from __future__ import annotations

import ast
import dataclasses
import re
import time
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.store.tracking import NotInStore, RunStore, Tracker, client, run_filter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs(tmp_path):
    """Three runs of experiment `a` created 20 ms apart (a FINISHED, b FAILED, c RUNNING and nested
    under a) and one of experiment `b`."""
    a = Tracker("a", run_name="a", tags={"method": "flow_matching", "note": "it's"})
    a.log_params({"seed": 0, "lr": 0.001})
    for step, value in [(4, 1.5), (1, 3.0), (2, 2.0)]:
        a.log_metrics({"fid": value}, step=step)
    weights = tmp_path / "final.pt"
    weights.write_bytes(b"weights of a")
    a.log_artifact(weights, "checkpoint")
    a.set_tag("config_hash", "h1")
    a.end("FINISHED")
    time.sleep(0.02)
    b = Tracker("a", tags={"method": "flow_matching", "config_hash": "h1"})
    b.log_params({"seed": 1})
    b.end("FAILED")
    time.sleep(0.02)
    c = Tracker("a", tags={"method": "shortcut"}, parent_run_id=a.run_id)
    c.log_params({"seed": 0})
    other = Tracker("b", tags={"method": "flow_matching"})
    other.end("FINISHED")
    return a.run_id, b.run_id, c.run_id, other.run_id


def ids(found) -> list[str]:
    return [r.run_id for r in found]


def test_find_by_experiment_tags_params_and_status_in_order(runs):
    a, b, c, other = runs
    store = RunStore()
    assert ids(store.find("a", newest_first=True)) == [c, b, a]
    assert ids(store.find("a", newest_first=True, limit=1)) == [c]
    assert ids(store.find("a", tags={"method": "flow_matching"}, newest_first=True)) == [b, a]
    assert set(ids(store.find("a", params={"seed": "0"}))) == {a, c}
    assert ids(store.find("a", tags={"method": "flow_matching"}, params={"seed": "0"})) == [a]
    assert ids(store.find("a", status="FINISHED")) == [a]
    assert ids(store.find("a", status="RUNNING")) == [c]
    assert ids(store.find("a", tags={"mlflow.parentRunId": a})) == [c]
    assert ids(store.find("a", tags={"note": "it's"})) == [a]  # a quote inside a value
    assert ids(store.find("b")) == [other]
    assert store.find("no such experiment") == []
    assert ids(store.find(experiment_id=store.experiment_id("a"), status="FAILED")) == [b]


def test_find_gives_what_the_filter_strings_callers_used_to_write_gave(runs):
    """The searches bench made by hand before RunStore, against the same store."""
    a, b, c, _ = runs
    raw, store = client(), RunStore()
    exp = raw.get_experiment_by_name("a").experiment_id
    newest = ["attributes.start_time DESC"]
    old_and_new = [
        (raw.search_runs([exp], "tags.config_hash = 'h1'", order_by=newest),
         store.find("a", tags={"config_hash": "h1"}, newest_first=True)),
        (raw.search_runs([exp], f"tags.mlflow.parentRunId = '{a}' and tags.`method` = 'shortcut'", order_by=newest, max_results=1),
         store.find(experiment_id=exp, tags={"mlflow.parentRunId": a, "method": "shortcut"}, newest_first=True, limit=1)),
        (raw.search_runs([exp], "tags.method = 'flow_matching' and params.seed = '0' and attributes.status = 'FINISHED'",
                         order_by=newest),
         store.find("a", tags={"method": "flow_matching"}, params={"seed": "0"}, status="FINISHED", newest_first=True)),
        (raw.search_runs([exp], "attributes.status = 'FINISHED'", max_results=50_000),
         store.find("a", status="FINISHED", limit=50_000)),
    ]
    for old, new in old_and_new:
        assert [r.info.run_id for r in old] == ids(new) and ids(new)
    assert ids(store.find("a", tags={"config_hash": "h1"}, newest_first=True)) == [b, a]


def test_a_run_record_history_and_artifact(runs, tmp_path):
    a, _, c, _ = runs
    store = RunStore()
    run = store.get(a)
    assert (run.run_id, run.status, run.experiment_id) == (a, "FINISHED", store.experiment_id("a"))
    assert run.params == {"seed": "0", "lr": "0.001"}
    assert run.tags["method"] == "flow_matching" and run.tags["mlflow.runName"] == "a"
    assert run.metrics == {"fid": 1.5}  # the latest value is the one at the largest step
    assert store.experiment_name(run.experiment_id) == "a"
    points = store.history(a, "fid")
    assert sorted((p.step, p.value) for p in points) == [(1, 3.0), (2, 2.0), (4, 1.5)]
    assert all(type(p.step) is int and type(p.value) is float for p in points)
    assert store.history(a, "kid") == []
    assert store.get(c).tags["mlflow.parentRunId"] == a and store.get(c).status == "RUNNING"
    with pytest.raises(NotInStore, match="is not in the tracking store"):
        store.get("0" * 32)

    here = store.fetch_artifact(run, "checkpoint/final.pt", tmp_path / "unused")
    assert here.read_bytes() == b"weights of a" and not (tmp_path / "unused").exists()  # read where it lies
    remote = dataclasses.replace(run, artifact_uri="s3://elsewhere")  # any non-file store: downloaded
    (tmp_path / "dl").mkdir()
    got = store.fetch_artifact(remote, "checkpoint/final.pt", tmp_path / "dl")
    assert got.read_bytes() == b"weights of a" and got.is_relative_to(tmp_path / "dl")
    for r in (run, remote):
        with pytest.raises(NotInStore, match="has no artifact checkpoint/missing.pt"):
            store.fetch_artifact(r, "checkpoint/missing.pt", tmp_path / "dl")


def test_mark_sets_tags_and_ends_the_run(runs):
    _, _, c, _ = runs
    store = RunStore()
    store.mark(c, tags={"sweep.attempts": "2", "sweep.node": "n1"})
    assert store.get(c).status == "RUNNING"
    store.mark(c, status="KILLED")
    run = client().get_run(c)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert run.data.tags["sweep.attempts"] == "2" and run.data.tags["sweep.node"] == "n1"


def test_experiments_and_the_trackers_own_reader(runs):
    store = RunStore()
    assert {"a", "b"} <= set(store.experiments())
    t = Tracker("a")
    assert t.runs.uri == t.uri and t.runs.get(t.run_id).status == "RUNNING"


def test_reading_never_creates_a_store(isolated_store):
    with pytest.raises(BenchError, match="No tracking store at"):
        RunStore.existing()
    assert not (isolated_store / "mlflow.db").exists()


def test_the_filter_string():
    assert run_filter() == ""
    assert (run_filter({"mlflow.parentRunId": "p", "sweep.trial": "t1"}, {"seed": "0"}, "FINISHED") ==
            "tags.`mlflow.parentRunId` = 'p' and tags.`sweep.trial` = 't1' and params.`seed` = '0' and attributes.status = 'FINISHED'")
    assert run_filter({"note": "it's"}) == 'tags.`note` = "it\'s"'
    with pytest.raises(BenchError, match="backtick"):  # a one-line error, not a traceback
        run_filter({"bad`key": "x"})
    with pytest.raises(BenchError, match="both kinds of quotes"):
        run_filter(params={"note": "it's \"x\""})


# -- layout: only bench/store/ talks to MLflow ------------------------------------------------------------
def mlflow_client_methods() -> set[str]:
    from mlflow import MlflowClient

    return {n for n in dir(MlflowClient) if not n.startswith("_")}


def violations(source: str, names: set[str]) -> list[str]:
    """Imports of mlflow, of the store's MLflow client (bench.store.tracking.client), any `.client`
    (Tracker.client is MLflow's), and calls named like an MlflowClient method on anything but our
    Tracker (a name ending in `tracker`: its log_artifact, set_tag, ... write its own run)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            found.append(f"{node.lineno}: import mlflow")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench.store") and \
                any(a.name == "client" for a in node.names):
            found.append(f"{node.lineno}: imports MLflow's client from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr == "client":
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
            receiver = ast.unparse(node.func.value)
            if not receiver.split(".")[-1].endswith("tracker"):
                found.append(f"{node.lineno}: {receiver}.{node.func.attr}(...)")
    return found


def python_sources() -> dict[str, str]:
    """Every Python file of bench/ (but bench/store/), methods/ and scripts/, and the Python heredocs of scripts/*.sh."""
    out = {}
    for pattern in ("bench/**/*.py", "methods/**/*.py", "scripts/**/*.py"):
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith("bench/store/"):
                out[rel] = path.read_text()
    for path in sorted(ROOT.glob("scripts/**/*.sh")):
        for i, body in enumerate(heredocs(path.read_text())):
            out[f"{path.relative_to(ROOT).as_posix()} (heredoc {i + 1})"] = body
    return out


def heredocs(text: str) -> list[str]:
    """The bodies of the Python heredocs of a shell script (`python - <<'EOF' ... EOF`, `$PYTHON <<X ... X`)."""
    return [m.group(2) for m in re.finditer(r"(?:python|PYTHON)\S*\s[^\n]*<<-?\s*'?(\w+)'?\n(.*?)\n\1\n", text, re.S)]


def test_the_scan_finds_what_it_must():
    names = mlflow_client_methods()
    bad = ("import mlflow\nfrom mlflow.tracking import MlflowClient\nfrom bench.store.tracking import client\n"
           "c.search_runs([e], 'x')\ntracker.client.get_metric_history(r, 'k')\nstore_client.get_run(r)\n")
    assert {int(v.split(":")[0]) for v in violations(bad, names)} == {1, 2, 3, 4, 5, 6}  # every line
    good = "tracker.log_artifact(p, 'plots')\np.tracker.set_tag('k', 'v')\nstore.find('e', tags={'a': 'b'})\n"
    assert violations(good, names) == []
    sources = python_sources()
    assert "bench/report/__init__.py" in sources and "bench/store/tracking.py" not in sources
    assert "scripts/teacher_of.py" in sources  # the digits scripts' teacher lookup reads the store
    script = 'echo hi\n$PYTHON - "$1" <<\'EOF\'\nimport mlflow\nEOF\npython -c 1\npython3 <<PY\nx = 1\nPY\n'
    assert heredocs(script) == ["import mlflow", "x = 1"]
    assert violations(heredocs(script)[0], names)  # a heredoc is scanned like a file


def test_nothing_outside_the_store_talks_to_mlflow():
    names = mlflow_client_methods()
    found = {f: v for f, src in python_sources().items() if (v := violations(src, names))}
    assert found == {}, "use bench.store.tracking.RunStore (or the Tracker) instead: " + repr(found)
