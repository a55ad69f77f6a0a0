"""The Evaluator protocol: genomes in, every task's score out.

An evaluator holds the weight space and a resident model once; for each genome it materialises
the child into the model's weights in place and runs every task's scorer.
:class:`cycleqd.evaluation.local.LocalEvaluator` does this in-process;
:class:`cycleqd.evaluation.ray_evaluator.RayEvaluator` (one Ray actor per worker slot)
implements the same interface. :mod:`cycleqd.evaluation.factory` builds the one a config asks for.

Two ways in: :meth:`Evaluator.evaluate` scores a batch and returns it in order (the generational
loop, the report); :meth:`Evaluator.submit` queues one candidate and :meth:`Evaluator.collect`
returns candidates as they finish (the steady-state loop keeps every worker busy with them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer

__all__ = ["SEARCH", "Evaluation", "Evaluator", "Outcome"]


@dataclass
class Evaluation:
    """Scores of a batch of genomes.

    Attributes:
        scores: ``[B, K]``; a failed candidate's row is NaN.
        errors: per candidate, why it failed (``None`` when it did not).
        items: per candidate, task → each request's result, for the tasks whose scorer
            returned a :class:`cycleqd.stats.Score` (intervals are computed from them).
    """

    scores: np.ndarray
    errors: list[str | None] = field(default_factory=list)
    items: list[dict[str, tuple[float, ...]]] = field(default_factory=list)


@dataclass
class Outcome:
    """One submitted candidate, finished.

    Attributes:
        ticket: what :meth:`Evaluator.submit` returned for it.
        scores: ``[K]``; NaN when it failed.
        error: why it failed (``None`` when it did not).
        items: task → each request's result (see :class:`Evaluation`).
    """

    ticket: int
    scores: np.ndarray
    error: str | None
    items: dict[str, tuple[float, ...]] = field(default_factory=dict)


#: The split children are scored on while evolving (a scorer without one of its own gets val).
SEARCH = "search"


class Evaluator(Protocol):
    """Scores genomes on every task: what the evolver, ``compare`` and the CLI use of one.

    ``materializer``: the materialiser holding the weights in this process, which the loop
    shares (mutations read it); ``None`` for an evaluator whose weights live elsewhere (Ray).
    ``nodes``: where the workers run, logged at each start or resume (``None``: this process).
    ``bytes_per_candidate``: mean bytes sent per candidate, logged per generation (``None``:
    nothing is sent).
    """

    tasks: list[str]
    materializer: Materializer | None
    nodes: list[str] | None

    @property
    def bytes_per_candidate(self) -> float | None:
        """Mean bytes sent per candidate; ``None`` when candidates are not sent anywhere."""

    def drain_retries(self) -> list[str]:
        """The messages of the retries since the last call (logged as events); may be empty."""

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes`` on every task's ``split``."""

    def submit(self, genome: Genome, split: str = "val") -> int:
        """Queue one candidate; returns its ticket."""

    def collect(self) -> list[Outcome]:
        """Wait until at least one submitted candidate finishes; return every finished one.

        Returns an empty list only when nothing is submitted.
        """

    def close(self) -> None:
        """Release workers and memory."""
