"""The in-process evaluator: materialise each genome into a resident model, run every scorer.

:class:`LocalEvaluator` implements :class:`cycleqd.evaluation.protocol.Evaluator`; Ray workers
each hold one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from cycleqd.errors import CycleQDError
from cycleqd.evaluation.protocol import Evaluation, Outcome
from cycleqd.models.sources import ModelSource, load_into
from cycleqd.scorers import Scorer, ScoringContext, call_scorer
from cycleqd.stats import Score
from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import WeightSpace

__all__ = ["CandidateTimeout", "LocalEvaluator"]

#: Process-wide: a version names one set of weights in one model, never reused.
_WEIGHTS_VERSIONS = itertools.count(1)


class LocalEvaluator:
    """Evaluates in this process, one genome after another.

    Args:
        space: the weight space.
        source: builds the model architecture.
        scorers: task name → scorer, in task order.
        materializer: reuse an existing materialiser (and its memory); default: a new one.
        timeout_s: a candidate that takes longer fails with the reason (needs this process's
            main thread, where ``SIGALRM`` can interrupt a scorer); ``None``: no limit.
    """

    def __init__(
        self,
        space: WeightSpace,
        source: ModelSource,
        scorers: Mapping[str, Scorer],
        *,
        materializer: Materializer | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.tasks = list(scorers)
        self.scorers = dict(scorers)
        self.timeout_s = timeout_s
        self.materializer = materializer or Materializer(space)
        self.nodes: list[str] | None = None  # scored here
        self.model = load_into(source.make_model(), self.materializer.state_dict)
        self.model.to(space.device)
        # what every scorer here shares: the base's tokenizer and path, the weights' version
        self.context = ScoringContext.for_base(space.base_path)
        self._queue: list[tuple[int, Genome, str]] = []
        self._tickets = itertools.count()

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes``; a child that fails to materialise or score gets a NaN row."""
        scores = np.full((len(genomes), len(self.tasks)), np.nan)
        errors: list[str | None] = []
        items: list[dict[str, tuple[float, ...]]] = []
        for i, genome in enumerate(genomes):
            items.append({})
            try:
                with _time_limit(self.timeout_s):
                    self._score(genome, split, scores[i], items[i])
                errors.append(None)
            except Exception as exc:  # a candidate's failure must not end the run
                scores[i] = np.nan
                items[i] = {}
                errors.append(f"{type(exc).__name__}: {exc}")
        return Evaluation(scores, errors, items)

    def _score(
        self, genome: Genome, split: str, out: np.ndarray, items: dict[str, tuple[float, ...]]
    ) -> None:
        self.materializer.materialize(genome)
        # scorers that share work across tasks (one decoding batch for every skill) know by
        # this that the weights changed
        self.context.weights_version = next(_WEIGHTS_VERSIONS)
        for j, task in enumerate(self.tasks):
            scorer = self.scorers[task]
            result = call_scorer(scorer, self.model, split, self.context)
            value = float(result)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise CycleQDError(f"scorer of task {task!r} returned {value}, outside [0, 1]")
            out[j] = value
            if isinstance(result, Score):
                items[task] = result.items

    def submit(self, genome: Genome, split: str = "val") -> int:
        """Queue ``genome``; :meth:`collect` scores it (in-process work happens there)."""
        ticket = next(self._tickets)
        self._queue.append((ticket, genome, split))
        return ticket

    def collect(self) -> list[Outcome]:
        """Score the oldest queued candidate and return it (``[]`` when none is queued)."""
        if not self._queue:
            return []
        ticket, genome, split = self._queue.pop(0)
        result = self.evaluate([genome], split)
        return [Outcome(ticket, result.scores[0], result.errors[0], result.items[0])]

    @property
    def bytes_per_candidate(self) -> float | None:
        """``None``: candidates are scored here, nothing is sent."""
        return None

    def drain_retries(self) -> list[str]:
        """No retries in-process: a failure fails its candidate."""
        return []

    def close(self) -> None:
        """Nothing to release in-process."""


class CandidateTimeout(Exception):
    """A candidate ran past its time limit."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CandidateTimeout` in the block after ``seconds`` (main thread only)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CandidateTimeout(f"exceeded the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
