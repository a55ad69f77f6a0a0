"""Evaluation on Ray: one actor per worker slot; genomes go out, scores come back.

Each actor builds the run's weight space once (base, task vectors, SVD cache: from the paths the
config names) and keeps a resident model; a candidate travels as its genome's bytes (kilobytes),
never as weights. Candidates are dispatched one at a time to whichever actor is idle, and results
come back in the order of the batch, so a run scores exactly as it would in-process.

A worker that dies (killed, out of memory, node lost) is replaced and its candidate retried, up
to ``max_retries`` times; then the candidate is recorded as failed with the reason.

This is the generation-batched first step of the Ray backend: the steady-state (asynchronous)
driver, per-candidate time limits and ``--ray-address`` on the command line are still to come.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cycleqd.errors import CycleQDError
from cycleqd.evaluator import Evaluation
from cycleqd.genome import Genome

__all__ = ["RayEvaluator"]


class _Worker:
    """The actor: the weight space and a resident model, built once from the run config."""

    def __init__(self, config_json: str) -> None:
        from cycleqd.config import RunConfig
        from cycleqd.evaluator import LocalEvaluator
        from cycleqd.models import load_models
        from cycleqd.scorers import SCORERS

        config = RunConfig.model_validate_json(config_json)
        source, space = load_models(config)
        scorers = {t.name: SCORERS.build(t.scorer, **t.params) for t in config.tasks}
        self.local = LocalEvaluator(space, source, scorers)

    def ready(self) -> bool:
        return True

    def evaluate(self, genome: bytes, split: str) -> tuple[list[float], str | None]:
        result = self.local.evaluate([Genome.from_bytes(genome)], split)
        return result.scores[0].tolist(), result.errors[0]


class RayEvaluator:
    """Scores genomes on Ray actors (the :class:`cycleqd.evaluator.Evaluator` interface).

    Args:
        config: the run's :class:`cycleqd.config.RunConfig` (each actor rebuilds the weight
            space and the scorers from it).
        workers: actors, one per worker slot.
        cpus_per_worker: CPUs Ray reserves per actor.
        gpus_per_worker: GPUs per actor (fractions share a GPU).
        address: a Ray cluster to attach to (``"auto"``, ``"ray://host:port"``); ``None`` starts
            a local runtime, quietly.
        max_retries: times a candidate is retried on a replacement worker after its worker died.
        start_timeout: seconds to wait for the workers to start (building the experts included).

    Attributes:
        bytes_sent: genome bytes sent to workers so far.
        candidates_sent: candidates dispatched so far (retries included).
        retries: one message per candidate retried after a worker died.
    """

    def __init__(
        self,
        config: Any,
        *,
        workers: int = 2,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        max_retries: int = 2,
        start_timeout: float = 300.0,
    ) -> None:
        import ray

        if workers < 1:
            raise CycleQDError(f"a Ray evaluator needs at least 1 worker, got {workers}")
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                configure_logging=True,
            )
        self.tasks = config.task_names
        self._config_json = config.model_dump_json()
        self._actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self.max_retries = max_retries
        self.actors = [self._spawn() for _ in range(workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=start_timeout)
        except ray.exceptions.GetTimeoutError:
            for actor in self.actors:
                ray.kill(actor)
            raise CycleQDError(
                f"{workers} Ray worker(s) of {cpus_per_worker} CPU(s) and {gpus_per_worker} "
                f"GPU(s) did not start within {start_timeout:.0f} s; the cluster has "
                f"{ray.available_resources()} free: lower evaluation.workers or "
                "evaluation.cpus_per_worker"
            ) from None
        self.bytes_sent = 0
        self.candidates_sent = 0
        self.retries: list[str] = []

    def _spawn(self) -> Any:
        return self._actor_class.remote(self._config_json)

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes`` in order; a failed candidate's row is NaN, its reason recorded."""
        import ray
        from ray.exceptions import RayActorError

        payloads = [g.to_bytes() for g in genomes]
        rows: list[list[float] | None] = [None] * len(genomes)
        errors: list[str | None] = [None] * len(genomes)
        attempts = [0] * len(genomes)
        queue = list(range(len(genomes)))
        idle = list(range(len(self.actors)))
        pending: dict[Any, tuple[int, int]] = {}
        while queue or pending:
            while queue and idle:
                i, a = queue.pop(0), idle.pop(0)
                pending[self.actors[a].evaluate.remote(payloads[i], split)] = (i, a)
                self.bytes_sent += len(payloads[i])
                self.candidates_sent += 1
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, a = pending.pop(ref)
            try:
                rows[i], errors[i] = ray.get(ref)
            except RayActorError as exc:
                attempts[i] += 1
                self.actors[a] = self._spawn()  # replace the dead worker
                reason = f"worker died ({type(exc).__name__})"
                if attempts[i] > self.max_retries:
                    rows[i] = [math.nan] * len(self.tasks)
                    errors[i] = f"{reason} {attempts[i]} times; gave up"
                else:
                    self.retries.append(f"candidate {genomes[i].id}: {reason}; retried")
                    queue.append(i)
            idle.append(a)
        return Evaluation(np.array(rows, dtype=np.float64), errors)

    def drain_retries(self) -> list[str]:
        """The retry messages since the last call (the evolver logs them as events)."""
        out, self.retries = self.retries, []
        return out

    @property
    def bytes_per_candidate(self) -> float:
        """Mean genome bytes sent per dispatched candidate."""
        return self.bytes_sent / max(self.candidates_sent, 1)

    def close(self) -> None:
        """Stop the actors (a runtime this evaluator started stays up for reuse)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
