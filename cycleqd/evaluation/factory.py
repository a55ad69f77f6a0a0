"""The one place that builds what scores genomes: the run's, ``compare``'s and each Ray worker's.

* :func:`build_scorers`: a task list's scorers, by the registry (every caller builds them here);
* :func:`local_evaluator`: an in-process evaluator of a config's tasks (the report's metrics,
  ``compare``, and each Ray worker, which is handed this function);
* :func:`run_evaluator`: the evaluator a run's ``evaluation`` section asks for, in this process or
  on Ray workers.
"""

from __future__ import annotations

from collections.abc import Iterable

from cycleqd.config import RunConfig, TaskConfig
from cycleqd.evaluation.local import LocalEvaluator
from cycleqd.evaluation.protocol import Evaluator
from cycleqd.models.sources import ModelSource, load_models
from cycleqd.scorers import SCORERS, Scorer
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import WeightSpace

__all__ = ["build_scorers", "local_evaluator", "run_evaluator"]


def build_scorers(tasks: Iterable[TaskConfig]) -> dict[str, Scorer]:
    """Task name → its scorer, built from the registry with the task's params, in task order."""
    return {t.name: SCORERS.build(t.scorer, **t.params) for t in tasks}


def local_evaluator(
    config: RunConfig,
    *,
    source: ModelSource | None = None,
    space: WeightSpace | None = None,
    tasks: Iterable[TaskConfig] | None = None,
    scorers: dict[str, Scorer] | None = None,
    materializer: Materializer | None = None,
    timeout_s: float | None = None,
) -> LocalEvaluator:
    """An in-process evaluator of ``tasks`` (default: the config's) on its models.

    ``source`` and ``space`` default to loading the config's models; ``scorers`` to building
    them; ``materializer`` shares another evaluator's weights and memory.
    """
    if source is None or space is None:
        source, space = load_models(config)
    if scorers is None:
        scorers = build_scorers(config.tasks if tasks is None else tasks)
    return LocalEvaluator(space, source, scorers, materializer=materializer, timeout_s=timeout_s)


def run_evaluator(config: RunConfig, source: ModelSource, space: WeightSpace) -> Evaluator:
    """The evaluator ``config.evaluation`` asks for: Ray workers, or this process."""
    e = config.evaluation
    if e.backend == "ray":
        from cycleqd.evaluation.ray_evaluator import RayEvaluator

        return RayEvaluator(
            config,
            build=local_evaluator,
            workers=e.workers,
            cpus_per_worker=e.cpus_per_worker,
            gpus_per_worker=e.gpus_per_worker,
            address=e.address,
            max_retries=e.max_retries,
            timeout_s=e.timeout_s,
        )
    return local_evaluator(config, source=source, space=space, timeout_s=e.timeout_s)
