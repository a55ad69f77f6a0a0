"""A run's report (:mod:`cycleqd.engine.final`) as a rich table (``cycleqd evolve``, ``show``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["summary_table"]


def summary_table(summary: dict[str, Any]) -> Table:
    """The report as a table: each score with its 95% interval over requests where known."""
    tasks = summary["tasks"]
    intervals = summary.get("intervals", {})
    bounds = intervals.get("methods", {})
    differences = intervals.get("differences", {})
    reference = intervals.get("reference")
    title = f"{summary['split']} split"
    if bounds:
        title += " (95% intervals over requests)"
    table = Table(title=title)
    table.add_column("method")
    report = summary.get("report", [])
    columns = [*tasks, "average"] + (
        ["retention"] if any("retention" in row for row in summary["methods"].values()) else []
    )
    for column in columns:
        table.add_column(column, justify="right")
    for metric in report:
        table.add_column(f"{metric} (not evolved)", justify="right")
    if differences:
        table.add_column(f"{reference} − method: average", justify="right")
    for name, scores in summary["methods"].items():
        values = [scores[t] for t in tasks]
        scores = {"average": sum(values) / len(values)} | scores
        cells = []
        for column in columns:
            cell = f"{scores.get(column, float('nan')):.3f}"
            span = bounds.get(name, {}).get(column)
            cells.append(cell + (f" [{span[0]:.3f}, {span[1]:.3f}]" if span else ""))
        cells += [f"{scores[m]:.3f}" for m in report]
        if differences:
            d = differences.get(name, {}).get("average")
            cells.append(f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if d else "")
        table.add_row(name, *cells)
    return table
