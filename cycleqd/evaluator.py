"""Evaluators: genomes in, every task's score out.

An evaluator holds the weight space and a resident model once; for each genome it materialises
the child into the model's weights in place and runs every task's scorer. :class:`LocalEvaluator`
does this in-process; a Ray-backed evaluator (one actor per worker slot) implements the same
interface.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cycleqd.errors import CycleQDError
from cycleqd.genome import Genome
from cycleqd.materialize import Materializer
from cycleqd.models import ModelSource, load_into
from cycleqd.scorers import Scorer
from cycleqd.weights import WeightSpace

__all__ = ["Evaluation", "Evaluator", "LocalEvaluator"]

#: Process-wide: a version names one set of weights in one model, never reused.
_WEIGHTS_VERSIONS = itertools.count(1)


@dataclass
class Evaluation:
    """Scores of a batch of genomes.

    Attributes:
        scores: ``[B, K]``; a failed candidate's row is NaN.
        errors: per candidate, why it failed (``None`` when it did not).
    """

    scores: np.ndarray
    errors: list[str | None] = field(default_factory=list)


class Evaluator(Protocol):
    """Scores genomes on every task."""

    tasks: list[str]

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes`` on every task's ``split``."""

    def close(self) -> None:
        """Release workers and memory."""


class LocalEvaluator:
    """Evaluates in this process, one genome after another.

    Args:
        space: the weight space.
        source: builds the model architecture.
        scorers: task name → scorer, in task order.
        materializer: reuse an existing materialiser (and its memory); default: a new one.
    """

    def __init__(
        self,
        space: WeightSpace,
        source: ModelSource,
        scorers: Mapping[str, Scorer],
        *,
        materializer: Materializer | None = None,
    ) -> None:
        self.tasks = list(scorers)
        self.scorers = dict(scorers)
        self.materializer = materializer or Materializer(space)
        self.model = load_into(source.make_model(), self.materializer.state_dict)
        self.model.to(space.device)

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes``; a child that fails to materialise or score gets a NaN row."""
        scores = np.full((len(genomes), len(self.tasks)), np.nan)
        errors: list[str | None] = []
        for i, genome in enumerate(genomes):
            try:
                self.materializer.materialize(genome)
                # scorers that share work across tasks (one decoding batch for every skill)
                # know by this that the weights changed
                self.model.cycleqd_weights_version = next(_WEIGHTS_VERSIONS)
                for j, task in enumerate(self.tasks):
                    value = float(self.scorers[task](self.model, split))
                    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                        raise CycleQDError(
                            f"scorer of task {task!r} returned {value}, outside [0, 1]"
                        )
                    scores[i, j] = value
                errors.append(None)
            except Exception as exc:  # a candidate's failure must not end the run
                scores[i] = np.nan
                errors.append(f"{type(exc).__name__}: {exc}")
        return Evaluation(scores, errors)

    def close(self) -> None:
        """Nothing to release in-process."""
