"""The package's layout, read from the source: rooms, arrows that run one way, small modules.

The embedded suite (the tiny models, their skills, the digits demo, language retention) is an
example built on the engine: nothing in the engine, the weights, evaluation, the sandbox or the
scorers imports it (the registries name its scorers and sources as strings, imported on use).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cycleqd"
SUITE = "cycleqd.suite"
#: What may build on the suite: the command line, the comparison study and the package's face.
ABOVE_SUITE = {"cycleqd", "cycleqd.cli", "cycleqd.__main__"}
ABOVE_SUITE_PACKAGES = ("cycleqd.compare",)
#: What ``cycleqd/`` itself holds beside its subpackages.
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "config.py", "errors.py", "registry.py"}
MAX_LINES = 450


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its source (lazy imports too)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {resolve(n) for n in names if n.startswith("cycleqd")} - {None, module}
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_circles_and_lazy_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert "cycleqd.suite.tinylm" in import_graph()["cycleqd.cli"]  # a lazy import in a function


def test_no_module_of_the_package_imports_itself_back():
    assert circles(import_graph()) == []


def test_the_engine_does_not_import_the_embedded_suite():
    graph = import_graph()
    above = {m for m in graph if m in ABOVE_SUITE or in_package(m, SUITE)}
    above |= {m for m in graph for p in ABOVE_SUITE_PACKAGES if in_package(m, p)}
    below = set(graph) - above
    assert {"cycleqd.engine.evolver", "cycleqd.scorers.code", "cycleqd.sandbox.box"} <= below
    offenders = {
        m: sorted(n for n in graph[m] if in_package(n, SUITE))
        for m in below
        if any(in_package(n, SUITE) for n in graph[m])
    }
    assert offenders == {}


def test_the_package_top_holds_only_its_face_config_cli_errors_and_registry():
    files = {p.name for p in PACKAGE.glob("*.py")}
    assert files == TOP_LEVEL
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"engine", "weights", "operators", "evaluation", "sandbox", "scorers", "suite"} <= rooms


def test_no_module_is_longer_than_the_limit():
    lengths = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    lengths |= {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / "kernels").glob("*.py")
    }
    assert {p: n for p, n in lengths.items() if n > MAX_LINES} == {}


def test_the_loop_is_short_and_never_probes_its_evaluator():
    assert len((PACKAGE / "engine" / "evolver.py").read_text().splitlines()) < 300
    for path in (PACKAGE / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "getattr",
                "hasattr",
            ):
                assert "evaluator" not in ast.unparse(node.args[0]), (path.name, ast.unparse(node))


def test_the_tests_mirror_the_package():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders = {
        p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))
    }
    assert rooms | {"kernels"} <= folders
    assert not list((ROOT / "tests").glob("test_*.py")) or {
        p.name for p in (ROOT / "tests").glob("test_*.py")
    } <= {
        "test_cli.py",
        "test_layout.py",
        "test_notebook.py",
        "test_bench_scripts.py",
        "test_config.py",
    }
