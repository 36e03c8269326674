"""Imports in bench/ and methods/ point one way, down the layers (files, data, classifiers, models,
methods, store, evaluation, train, speed, sweep, report; cli, config and errors at the top): no cycle,
counting imports inside functions, no import up the order, no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods")


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports anywhere in its file."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:  # `from bench import checkpoint` names a module, `from x import f` a name
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_in_bench_and_methods():
    graph = import_graph(ROOT)
    assert "bench.train.run" in graph and "methods.base" in graph  # the walk found the packages
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "bench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from bench.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from bench import c\n")
    (pkg / "c.py").write_text("import bench.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, ("bench",))
    assert "bench.a" in graph["bench.d"]  # a relative import resolves to the module
    assert cycles(graph) == [["bench.a", "bench.b", "bench.c"]]


# bench's packages from the bottom up: each imports only packages before it (and the top-level modules
# errors.py and config.py, which every layer reads; config reads the method and model registries to validate
# keys). cli.py is above all of them.
LAYERS = ("files", "data", "classifiers", "models", "methods", "store", "evaluation", "train", "speed", "sweep",
          "report")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, targets in graph.items():
        a = package_of(m)
        for t in targets:
            b = package_of(t)
            if a and b and a != b and LAYERS.index(b) > LAYERS.index(a):
                bad.append(f"{m} -> {t} ({a} imports {b}, a layer above it)")
    return sorted(bad)


def test_packages_import_one_way_down_the_layers():
    graph = import_graph(ROOT)
    packages = {p.name for p in (ROOT / "bench").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"methods"}, "a package of bench/ is missing from LAYERS (or LAYERS names one that is gone)"
    assert layer_violations(graph) == []


def test_the_layer_check_sees_an_upward_import():
    graph = {"bench.data.x": {"bench.train.run"}, "bench.train.run": {"bench.data.x"}, "bench.config": {"methods"}}
    assert layer_violations(graph) == ["bench.data.x -> bench.train.run (data imports train, a layer above it)"]


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
