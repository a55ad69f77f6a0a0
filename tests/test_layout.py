"""The package's import graph, read from the source: no circles, and the engine stands alone.

The embedded suite (the tiny models, their skills, the digits demo, language retention) is an
example built on the engine: nothing in the engine, the weights, evaluation, the sandbox or the
scorers imports it (the registries name its scorers and sources as strings, imported on use).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cycleqd"
SUITE = {"cycleqd.skills", "cycleqd.tinylm", "cycleqd.digits", "cycleqd.language"}
#: What may build on the suite: the command line, the comparison study and the package's face.
ABOVE_SUITE = {"cycleqd", "cycleqd.cli", "cycleqd.__main__", "cycleqd.compare"}


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
    assert "cycleqd.tinylm" in import_graph()["cycleqd.cli"]  # a lazy import inside a function


def test_no_module_of_the_package_imports_itself_back():
    assert circles(import_graph()) == []


def test_the_engine_does_not_import_the_embedded_suite():
    graph = import_graph()
    below = {m for m in graph if m not in SUITE | ABOVE_SUITE}
    offenders = {m: sorted(graph[m] & SUITE) for m in below if graph[m] & SUITE}
    assert offenders == {}
