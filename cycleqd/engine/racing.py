"""Racing: score a child on growing prefixes of the search split, stop it once it cannot enter.

A child is scored on the first ``n`` requests of every task's search split for each ``n`` of
``stages``; after each stage every task's full-split score is bounded (a normal bound on the
requests still unscored, with the finite-population correction, clipped to what the unscored
requests could possibly add) and the child stops when, in every archive, every cell its
descriptor bounds reach holds an elite of a quality above the child's upper bound. A child that
may enter is scored on the full split, and only full scores are offered to the archives, so the
archives hold only fully scored elites. A stopped child's decision can differ from its full
one (it would have entered after all); ``bench/throughput.py`` reports how often.

A scorer takes part when it accepts the split ``"search:n"`` (the first ``n`` requests of its
search split), as :class:`~cycleqd.suite.skills.accuracy.SkillAccuracy` does, and returns one
result per request (:class:`~cycleqd.stats.Score`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cycleqd.config import RacingConfig
from cycleqd.engine.archive import Archives
from cycleqd.evaluation.protocol import SEARCH, Evaluation, Evaluator
from cycleqd.weights.genome import Genome

__all__ = ["Race", "Racer", "prefix_split", "score_children"]


def prefix_split(n: int, split: str = SEARCH) -> str:
    """The split of the first ``n`` requests of ``split``."""
    return f"{split}:{n}"


@dataclass
class Race:
    """One child's race.

    Attributes:
        may_enter: scored in full (its ``scores`` decide); false: stopped early.
        scores: ``[K]``: the full scores, or the last stage's when stopped (NaN: failed).
        error: why it failed, if it did.
        requests: requests scored over every stage and task.
        items: task → each request's result of the last evaluation.
    """

    may_enter: bool
    scores: np.ndarray
    error: str | None
    requests: int
    items: dict[str, tuple[float, ...]] = field(default_factory=dict)


class Racer:
    """Races children on an evaluator.

    Args:
        evaluator: scores genomes; its scorers must accept ``"search:n"`` splits.
        sizes: per task, the number of requests in its search split.
        stages: prefix sizes to try before the full split, increasing.
        z: the bound's width in standard errors (2.0: about 95% two-sided).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        sizes: Sequence[int],
        *,
        stages: Sequence[int] = (20, 40),
        z: float = 2.0,
    ) -> None:
        self.evaluator, self.sizes = evaluator, [int(n) for n in sizes]
        self.stages = sorted(int(n) for n in stages)
        self.z = z

    @property
    def full_requests(self) -> int:
        """Requests a full evaluation of one child scores."""
        return sum(self.sizes)

    def race(self, children: Sequence[Genome], archives: Archives) -> list[Race]:
        """Race ``children`` (batched per stage) against ``archives`` as they are."""
        out: list[Race | None] = [None] * len(children)
        spent = [0] * len(children)
        alive = list(range(len(children)))
        for n in self.stages:
            if not alive or n >= min(self.sizes):
                break
            result = self.evaluator.evaluate([children[i] for i in alive], prefix_split(n))
            still = []
            for row, i in enumerate(alive):
                items = result.items[row] if result.items else {}
                counts = [len(items.get(t, ())) for t in archives.tasks]
                spent[i] += sum(counts)
                error = result.errors[row] if result.errors else None
                if error is not None or counts != [min(n, size) for size in self.sizes]:
                    # a failure, or a scorer that did not score the prefix: score in full
                    still.append(i)
                    continue
                low, high = self.bounds(items, archives.tasks)
                if self.may_enter(archives, low, high):
                    still.append(i)
                else:
                    out[i] = Race(False, result.scores[row], None, spent[i], items)
            alive = still
        if alive:
            result = self.evaluator.evaluate([children[i] for i in alive], SEARCH)
            for row, i in enumerate(alive):
                items = result.items[row] if result.items else {}
                spent[i] += sum(len(v) for v in items.values())
                error = result.errors[row] if result.errors else None
                out[i] = Race(True, result.scores[row], error, spent[i], items)
        return [r for r in out if r is not None]

    def bounds(
        self, items: dict[str, tuple[float, ...]], tasks: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per task, bounds on the full-split score from the requests scored so far."""
        low, high = [], []
        for task, size in zip(tasks, self.sizes, strict=True):
            seen = items[task]
            n, total = len(seen), float(sum(seen))
            rest = max(size - n, 0)
            # a smoothed rate, so that all-correct or all-wrong prefixes still get a width
            rate = (total + 1.0) / (n + 2.0)
            sd = math.sqrt(rate * (1.0 - rate) * rest * (1.0 + rest / max(n, 1)))
            guess = total + rate * rest
            low.append(max(total, guess - self.z * sd) / size)
            high.append(min(total + rest, guess + self.z * sd) / size)
        return np.array(low), np.array(high)

    @staticmethod
    def may_enter(archives: Archives, low: np.ndarray, high: np.ndarray) -> bool:
        """Whether some archive has a cell in the box that is empty or has a weaker elite."""
        for k, grid in enumerate(archives.grids):
            others = archives.others(k)
            corners = grid.index_of(np.array([low[others], high[others]]))
            first, last = grid.int_to_grid_index(corners)
            data = archives.elites(k)
            held = dict(zip(data["index"].tolist(), data["objective"].tolist(), strict=True))
            ranges = [range(a, b + 1) for a, b in zip(first, last, strict=True)]
            cells = grid.grid_to_int_index(np.array(list(itertools.product(*ranges))))
            for cell in cells.tolist():
                if cell not in held or high[k] > held[cell]:
                    return True
        return False


def score_children(
    evaluator: Evaluator,
    children: Sequence[Genome],
    archives: Archives,
    racing: RacingConfig,
    sizes: Sequence[int] | None,
) -> tuple[Evaluation, list[bool], int]:
    """Score a generation's children, raced when ``racing`` is enabled.

    Returns:
        The evaluation (a stopped child's row: its last stage's scores), which children were
        stopped early (never offered to the archives), and the requests scored in all.
    """
    if not children:
        return Evaluation(np.zeros((0, len(archives.tasks)))), [], 0
    if not racing.enabled or not sizes:
        result = evaluator.evaluate(children, SEARCH)
        requests = sum(len(v) for items in result.items for v in items.values())
        return result, [False] * len(children), requests
    races = Racer(evaluator, sizes, stages=racing.stages, z=racing.z).race(children, archives)
    scores = np.array([r.scores for r in races]).reshape(len(children), len(archives.tasks))
    result = Evaluation(scores, [r.error for r in races], [r.items for r in races])
    return result, [not r.may_enter for r in races], sum(r.requests for r in races)
