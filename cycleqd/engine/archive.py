"""CycleQD's K archives: one pyribs grid per task.

Archive ``k`` takes task ``k``'s metric as its quality and the other tasks' metrics, in task
order, as its behaviour descriptors. Elites are referenced by an integer index into the run's
genome table (a pyribs extra field, ``elite``); the archives hold no weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ribs.archives import GridArchive

from cycleqd.errors import CycleQDError

__all__ = ["Archives", "derive_ranges"]


def derive_ranges(
    expert_scores: np.ndarray,
    *,
    low: float = 0.85,
    high: float = 1.15,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> list[tuple[float, float]]:
    """Descriptor range of each task from the experts' scores (the paper's rule).

    From ``low`` × the weakest expert's score to ``high`` × the strongest one's on that task,
    clipped to the metric's ``bounds``. A range that collapses (every expert scores the same) is
    widened by 0.05 each way, within the bounds.

    Args:
        expert_scores: ``[n_experts, K]`` scores of every expert on every task.
        low: factor of the weakest expert's score giving the range's low end.
        high: factor of the strongest expert's score giving the range's high end.
        bounds: the metric's own range, which the descriptor range stays within.

    Returns:
        One ``(low, high)`` per task.
    """
    scores = np.asarray(expert_scores, dtype=np.float64)
    ranges = []
    for j in range(scores.shape[1]):
        lo = max(bounds[0], low * float(scores[:, j].min()))
        hi = min(bounds[1], high * float(scores[:, j].max()))
        if hi - lo < 1e-6:
            lo, hi = max(bounds[0], lo - 0.05), min(bounds[1], hi + 0.05)
        ranges.append((lo, hi))
    return ranges


class Archives:
    """K grid archives over K tasks.

    Args:
        tasks: task names, in order.
        bins: bins per behaviour descriptor.
        ranges: per task, the ``(low, high)`` range of its metric as a descriptor.

    Raises:
        CycleQDError: fewer than two tasks, or ranges that do not match the tasks.
    """

    def __init__(
        self, *, tasks: Sequence[str], bins: int, ranges: Sequence[tuple[float, float]]
    ) -> None:
        if len(tasks) < 2:
            raise CycleQDError("CycleQD needs at least 2 tasks")
        if len(ranges) != len(tasks):
            raise CycleQDError(f"{len(ranges)} descriptor ranges for {len(tasks)} tasks")
        self.tasks = list(tasks)
        self.bins = bins
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.grids = [
            GridArchive(
                solution_dim=0,
                dims=[bins] * (len(tasks) - 1),
                ranges=[self.ranges[j] for j in self.others(k)],
                extra_fields={"elite": ((), np.int64)},
            )
            for k in range(len(tasks))
        ]

    @property
    def num_tasks(self) -> int:
        """K."""
        return len(self.tasks)

    def others(self, k: int) -> list[int]:
        """Indices of archive ``k``'s descriptor tasks."""
        return [j for j in range(self.num_tasks) if j != k]

    def insert(self, elite: int, scores: np.ndarray) -> list[int]:
        """Offer one candidate (its ``[K]`` scores) to every archive.

        Returns:
            The archives it entered: an empty cell, or a better quality than the cell's elite.
        """
        scores = np.asarray(scores, dtype=np.float64)
        entered = []
        for k, grid in enumerate(self.grids):
            status = grid.add(
                np.zeros((1, 0)),
                objective=scores[k : k + 1],
                measures=scores[self.others(k)][None, :],
                elite=np.array([elite]),
            )["status"]
            if int(status[0]) > 0:
                entered.append(k)
        return entered

    def elites(self, k: int) -> dict[str, np.ndarray]:
        """Archive ``k``'s elites.

        Keys: ``objective [N]``, ``measures [N, K-1]``, ``elite [N]``, ``index [N]`` (cell), in
        cell order.
        """
        data = self.grids[k].data(["objective", "measures", "elite", "index"])
        # pyribs lists elites in storage order, which depends on the insertion history; cell
        # order does not, so selection draws the same parents after a resume
        order = np.argsort(data["index"], kind="stable")
        return {key: value[order] for key, value in data.items()}

    def best(self, k: int) -> tuple[int, float]:
        """``(elite index, quality)`` of archive ``k``'s best elite."""
        data = self.elites(k)
        if len(data["objective"]) == 0:
            raise CycleQDError(f"archive {self.tasks[k]!r} is empty")
        i = int(np.argmax(data["objective"]))
        return int(data["elite"][i]), float(data["objective"][i])

    def stats(self) -> dict[str, dict[str, float]]:
        """Per task: coverage, QD score (sum of qualities) and best quality."""
        out = {}
        for k, (task, grid) in enumerate(zip(self.tasks, self.grids, strict=True)):
            s = grid.stats
            out[task] = {
                "coverage": float(s.coverage),
                # an exact sum of the elites' qualities: pyribs keeps a running sum whose last
                # digit depends on the order elites came in, and a resumed run rebuilds the
                # archive in one batch
                "qd_score": math.fsum(self.elites(k)["objective"].tolist()),
                "best": float(s.obj_max) if s.num_elites else 0.0,
                "elites": int(s.num_elites),
            }
        return out

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot from which :meth:`from_state` rebuilds identical archives."""
        grids = []
        for k in range(self.num_tasks):
            data = self.elites(k)
            grids.append(
                {key: data[key].tolist() for key in ("index", "objective", "measures", "elite")}
            )
        return {"tasks": self.tasks, "bins": self.bins, "ranges": self.ranges, "grids": grids}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Archives:
        """Rebuild archives written by :meth:`state`."""
        archives = cls(
            tasks=state["tasks"], bins=state["bins"], ranges=[tuple(r) for r in state["ranges"]]
        )
        for grid, data in zip(archives.grids, state["grids"], strict=True):
            if data["elite"]:
                grid.add(
                    np.zeros((len(data["elite"]), 0)),
                    objective=np.array(data["objective"]),
                    measures=np.array(data["measures"]),
                    elite=np.array(data["elite"]),
                )
        return archives
