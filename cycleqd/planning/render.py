"""The plan on the console (``cycleqd plan`` without ``--json``): its tables, notes and errors."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cycleqd.planning.devices import GiB
from cycleqd.planning.plan import Plan

__all__ = ["print_plan"]


def print_plan(result: Plan, cfg: Any, console: Console, errors: Console) -> None:
    """Print ``result``, the plan of config ``cfg``: tables to ``console``, errors to ``errors``.

    The memory per worker, the cost per child, each task's workload, the run's duration and the
    plan's notes; then what blocks the run and, when a worker does not fit, its largest items.
    """
    arch = result.architecture
    workers = cfg.evaluation.workers if cfg.evaluation.backend == "ray" else 1
    console.print(
        f"[bold]{cfg.name}[/]: {len(cfg.tasks)} tasks, {arch.parameters / 1e9:.3g} B "
        f"parameters ({arch.source}); one worker on {result.device.name}"
    )
    memory = Table(title="Memory per worker", title_justify="left")
    memory.add_column("item")
    memory.add_column("GiB", justify="right")
    for name, size in result.memory.items():
        memory.add_row(name, f"{size / GiB:.2f}")
    for name, size in result.transient.items():
        memory.add_row(f"{name} (transient)", f"{size / GiB:.2f}")
    verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
    when = "materialising" if result.first_child > result.steady else "generating"
    memory.add_row(
        f"[bold]peak[/], {when} (budget {result.budget / GiB:.1f})",
        f"[bold]{result.total / GiB:.2f}[/] {verdict}",
    )
    console.print(memory)
    cost = Table(title="Cost per child (estimate)", title_justify="left")
    cost.add_column("step")
    cost.add_column("seconds", justify="right")
    for name, secs in result.seconds.items():
        cost.add_row(name, f"{secs:.2f}")
    cost.add_row("[bold]total[/]", f"[bold]{result.per_child:.2f}[/]")
    console.print(cost)
    for w in result.workloads:
        if w.sequences:
            console.print(
                f"  {w.task}: {w.problems} problems × {w.turns} turn(s), batch {w.batch}, "
                f"context up to {w.sequence} tokens, backend {w.backend}"
            )
    evo = cfg.evolution
    children = evo.generations * evo.batch_size
    console.print(
        f"Run: {evo.generations} generations × {evo.batch_size} "
        f"{'child' if evo.batch_size == 1 else 'children'} = {children:,} children "
        f"on {workers} worker(s) ≈ {result.run_hours:.1f} h"
    )
    for note in result.notes:
        console.print(f"  note: {note}")
    for blocker in result.blockers:
        errors.print(f"[bold red]error:[/] {blocker}", highlight=False)
    if result.total > result.budget:
        errors.print(
            f"[bold red]error:[/] a worker needs {result.total / GiB:.1f} GiB but has "
            f"{result.budget / GiB:.1f} GiB; largest items:"
        )
        for hint in result.advice():
            errors.print(f"  - {hint}", highlight=False)
