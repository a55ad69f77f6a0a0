"""The loop's checkpoint state: what ``checkpoint.json`` holds, saved and restored.

After every generation the evolver writes its generation and evaluation counts, the random
generator's state, the genome table (elite index → genome id), the experts' search scores, the
archives and, under the steady schedule, the children still out. A resumed run restores all of
it, so that it ends exactly as an uninterrupted one (``archives/README.md`` documents the format).
"""

from __future__ import annotations

from typing import Any

from cycleqd.config import ConfigError
from cycleqd.engine.archive import Archives

__all__ = ["loop_state", "restore_loop"]


def loop_state(evolver: Any, finished: bool = False) -> dict[str, Any]:
    """The checkpoint of an :class:`~cycleqd.engine.evolver.Evolver`'s loop.

    ``finished``: the report is written too.
    """
    assert evolver.archives is not None
    state = {
        "generation": evolver.generation,
        "evaluations": evolver.evaluations,
        "requests": evolver.requests,
        "search_sizes": evolver.search_sizes,
        "rng": evolver.rng.bit_generator.state,
        "table": evolver.table,
        "expert_scores": evolver.expert_scores,
        "archives": evolver.archives.state(),
        "finished": finished,
    }
    return state | (evolver.schedule.state() if evolver.schedule else {})


def restore_loop(evolver: Any, state: dict[str, Any]) -> None:
    """Put ``evolver``'s loop back where ``state`` (a checkpoint) left it; logs rewound to match.

    Raises:
        ConfigError: the run was made with the other evaluation schedule.
    """
    evolver.store.rewind_logs(state["log_sizes"])
    evolver.generation = state["generation"]
    evolver.evaluations = state["evaluations"]
    evolver.requests = state.get("requests", 0)  # older checkpoints did not count requests
    evolver.search_sizes = state.get("search_sizes", [])
    evolver.rng.bit_generator.state = state["rng"]
    evolver.table = list(state["table"])
    evolver.expert_scores = state["expert_scores"]
    evolver.archives = Archives.from_state(state["archives"])
    if evolver.steady != ("in_flight" in state):
        schedules = ("generations", "steady")
        raise ConfigError(
            f"{evolver.store.root} was run with evaluation.schedule "
            f"{schedules['in_flight' in state]}; resume it with that schedule"
        )
    if evolver.schedule:
        evolver.schedule.restore(state)
