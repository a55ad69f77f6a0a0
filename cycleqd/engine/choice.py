"""Choosing a model on val by ``final.objective``, and the static merges' grids.

One piece for the run's final choice, the baselines' sweeps in the report, and every method of
``cycleqd compare``: the same objective, the same expert scores it divides by, the same grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cycleqd.evaluation.protocol import Evaluator
from cycleqd.stats import objective_value
from cycleqd.weights.genome import Genome
from cycleqd.weights.space import WeightSpace

__all__ = ["Chooser", "best_task_arithmetic", "best_ties", "task_arithmetic_grid", "ties_grid"]


class Chooser:
    """Scores candidates on a split and ranks them by an objective (larger keys are better).

    Args:
        evaluator: scores genomes on the run's tasks (``evaluator.tasks``, in order).
        space: the weight space the experts come from.
        objective: a name of :data:`cycleqd.stats.OBJECTIVES`.

    ``evaluations`` counts the candidates scored; ``expert_evaluations`` the experts' val scores
    (once: what ``retention`` divides by).
    """

    def __init__(self, evaluator: Evaluator, space: WeightSpace, objective: str) -> None:
        self.evaluator, self.space = evaluator, space
        self.tasks, self.objective = list(evaluator.tasks), objective
        self.evaluations = 0
        self.expert_evaluations = 0
        self._experts: dict[str, float] | None = None

    def expert_val_scores(self) -> dict[str, float]:
        """Each expert's val score on its own task, scored once."""
        if self._experts is None:
            experts = [Genome.expert(self.space, k) for k in range(len(self.tasks))]
            scores = self.evaluator.evaluate(experts, "val").scores
            self.expert_evaluations += len(experts)
            self._experts = {t: float(scores[k, k]) for k, t in enumerate(self.tasks)}
        return self._experts

    def judge(
        self, genomes: list[Genome], split: str = "val"
    ) -> list[tuple[tuple[float, ...], list[float]]]:
        """Each genome's objective key and its scores on ``split``."""
        experts = self.expert_val_scores()
        result = self.evaluator.evaluate(genomes, split)
        self.evaluations += len(genomes)
        out = []
        for row in result.scores:
            scores = dict(zip(self.tasks, row.tolist(), strict=True))
            out.append((objective_value(self.objective, scores, experts), row.tolist()))
        return out

    def best(self, candidates: dict[Any, Genome]) -> tuple[Any, tuple[float, ...]]:
        """The key of the candidate with the best objective on val (the first on ties)."""
        judged = self.judge(list(candidates.values()))
        i = max(range(len(judged)), key=lambda j: (judged[j][0], -j))
        return list(candidates)[i], judged[i][0]


def task_arithmetic_grid(space: WeightSpace, lambdas: Sequence[float]) -> dict[float, Genome]:
    """``θ_base + λ Σ_k τ_k`` for each λ."""
    K = space.num_experts
    return {lam: Genome.linear(space, torch.full((K,), float(lam))) for lam in lambdas}


def ties_grid(
    space: WeightSpace, densities: Sequence[float], method: str = "ties", seed: int = 0
) -> dict[float, Genome]:
    """One merge of the experts by mergekit's ``method`` per density, each expert weighted 1.

    ``method``: ``ties`` or ``dare_ties`` (whose random drops ``seed`` seeds).
    """
    experts = [Genome.expert(space, k) for k in range(space.num_experts)]
    return {
        d: Genome.merged(
            method,
            experts,
            parameters={"density": d},
            weights=torch.ones(len(experts), experts[0].num_tensors),
            seed=seed,
            op=f"{method}_baseline",
        )
        for d in densities
    }


def best_task_arithmetic(
    space: WeightSpace, chooser: Chooser, lambdas: Sequence[float]
) -> tuple[float, Genome]:
    """Task arithmetic at the λ of ``lambdas`` that ``chooser`` ranks best on val."""
    grid = task_arithmetic_grid(space, lambdas)
    lam, _ = chooser.best(grid)
    return lam, grid[lam]


def best_ties(
    space: WeightSpace,
    chooser: Chooser,
    densities: Sequence[float],
    method: str = "ties",
    seed: int = 0,
) -> tuple[float, Genome]:
    """TIES (or ``method``) at the density of ``densities`` that ``chooser`` ranks best on val."""
    grid = ties_grid(space, densities, method, seed)
    density, _ = chooser.best(grid)
    return density, grid[density]
