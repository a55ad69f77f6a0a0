"""Plots of a run: archive heatmaps per task, coverage and QD-score curves (PNG)."""

from __future__ import annotations

from typing import Any

from cycleqd.engine.archive import Archives
from cycleqd.engine.store import RunStore

__all__ = ["heatmap", "write_plots"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def heatmap(archives: Archives, k: int, ax: Any = None) -> Any:
    """Draw archive ``k`` (quality as colour over its descriptors) on ``ax``; return the axes.

    Archives of more than two descriptors (K > 3) are drawn over their first two.
    """
    plt = _pyplot()
    from ribs.visualize import grid_archive_heatmap

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    grid = archives.grids[k]
    others = [archives.tasks[j] for j in archives.others(k)]
    if grid.measure_dim <= 2:
        grid_archive_heatmap(grid, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis")
    else:
        data = archives.elites(k)
        points = ax.scatter(
            data["measures"][:, 0],
            data["measures"][:, 1],
            c=data["objective"],
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
        )
        plt.colorbar(points, ax=ax)
    ax.set_title(f"archive {archives.tasks[k]!r}: quality = {archives.tasks[k]}")
    ax.set_xlabel(others[0])
    if len(others) > 1:
        ax.set_ylabel(others[1])
    return ax


def write_plots(store: RunStore, archives: Archives) -> None:
    """Write ``plots/archive_<task>.png`` and ``plots/curves.png`` into the run folder."""
    plt = _pyplot()
    out = store.root / "plots"
    out.mkdir(exist_ok=True)
    for k, task in enumerate(archives.tasks):
        fig, ax = plt.subplots(figsize=(5, 4))
        heatmap(archives, k, ax)
        fig.tight_layout()
        fig.savefig(out / f"archive_{task}.png", dpi=100)
        plt.close(fig)
    metrics = store.read_log("metrics.jsonl")
    fig, (cov, qd) = plt.subplots(1, 2, figsize=(10, 4))
    for task in archives.tasks:
        gens = [m["generation"] for m in metrics]
        cov.plot(gens, [m["archives"][task]["coverage"] for m in metrics], label=task)
        qd.plot(gens, [m["archives"][task]["qd_score"] for m in metrics], label=task)
    cov.set(xlabel="generation", ylabel="coverage", title="archive coverage")
    qd.set(xlabel="generation", ylabel="QD score", title="QD score (sum of qualities)")
    cov.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
