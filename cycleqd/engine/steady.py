"""The steady-state schedule: asynchronous MAP-Elites over an evaluator's submit / collect.

Up to ``evaluation.in_flight`` children are out at once; when one comes back it is offered to the
archives and a new child is made from the current archives and dispatched; the active task
advances per child made, and every ``batch_size`` children back count as a generation. With
``evaluation.ordered`` children are offered in the order they were made, so a run does not
depend on when workers answer. What is out is part of the checkpoint: a resumed run sends it
again.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from cycleqd.evaluation.protocol import SEARCH, Outcome
from cycleqd.weights.genome import Genome

__all__ = ["SteadySchedule"]


class SteadySchedule:
    """The children made, back, and out for evaluation, of one evolver's run.

    ``evolver``: the :class:`cycleqd.engine.evolver.Evolver` whose loop this schedules (its config,
    evaluator, store, archives, generation and evaluation counts, and ``active_task``,
    ``make_child``, ``log_and_insert``, ``close_generation``).
    """

    def __init__(self, evolver: Any) -> None:
        self.evolver = evolver
        self.dispatched = 0  # children made
        self.completed = 0  # children back (or failed)
        self.in_flight: dict[int, dict[str, Any]] = {}  # child number → what is out
        self._period_start = 0.0

    def state(self) -> dict[str, Any]:
        """The schedule's part of the checkpoint."""
        return {
            "dispatched": self.dispatched,
            "completed": self.completed,
            "in_flight": [
                {
                    "child": n,
                    "active": out["active"],
                    "parents": out["parents"],
                    "genome": base64.b64encode(out["genome"].to_bytes()).decode(),
                }
                for n, out in sorted(self.in_flight.items())
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint's part (what was out goes out again in :meth:`run`)."""
        self.dispatched, self.completed = state["dispatched"], state["completed"]
        self.in_flight = {
            out["child"]: {
                "active": out["active"],
                "parents": out["parents"],
                "genome": Genome.from_bytes(base64.b64decode(out["genome"])),
            }
            for out in state["in_flight"]
        }

    def run(self) -> None:
        """Evolve to ``generations × batch_size`` children."""
        ev = self.evolver
        total = ev.cfg.evolution.generations * ev.cfg.evolution.batch_size
        limit = ev.cfg.evaluation.max_in_flight
        ordered = ev.cfg.evaluation.ordered
        tickets: dict[int, int] = {}  # evaluator ticket → child number
        back: dict[int, Outcome] = {}  # child number → its outcome, not yet offered
        for n, out in sorted(self.in_flight.items()):  # resumed: what was out goes out again
            tickets[ev.evaluator.submit(out["genome"], SEARCH)] = n
        self._period_start = time.perf_counter()
        while self.completed < total:
            # every child offered is followed by a refill: the points where children are made do
            # not depend on when workers answer, so the ordered schedule is deterministic
            while len(self.in_flight) < limit and self.dispatched < total:
                n, k = self.dispatched, ev.active_task(self.dispatched)
                child, parents, reason = ev.make_child(k)
                self.dispatched += 1
                self.in_flight[n] = {"active": k, "parents": parents, "genome": child}
                if child is None:
                    self._offer(n, None, reason)
                else:
                    tickets[ev.evaluator.submit(child, SEARCH)] = n
            if self.completed >= total:
                break
            oldest = min(self.in_flight)
            ready = [oldest] if oldest in back else [] if ordered else sorted(back)[:1]
            if ready:
                outcome = back.pop(ready[0])
                ev.requests += sum(len(v) for v in outcome.items.values())
                self._offer(ready[0], outcome.scores, outcome.error)
                continue
            for outcome in ev.evaluator.collect():
                back[tickets.pop(outcome.ticket)] = outcome

    def _offer(self, n: int, scores: np.ndarray | None, error: str | None) -> None:
        """Log child ``n``'s outcome, offer it to every archive; close a generation if due."""
        ev = self.evolver
        assert ev.archives is not None
        out = self.in_flight.pop(n)
        k, child = out["active"], out["genome"]
        record = {"event": "child", "generation": ev.generation, "child": n}
        record |= {"active": ev.tasks[k]}
        if child is None:  # it could not be made: never evaluated
            record |= {"event": "failed", "parents": out["parents"], "reason": error}
            ev.store.append("events.jsonl", record)
        else:
            ev.evaluations += 1
            record |= {"genome": child.id, "parents": out["parents"]}
            ev.log_and_insert(record, child, scores, error)
        self.completed += 1
        if self.completed % ev.cfg.evolution.batch_size == 0:
            ev.close_generation(k, self._period_start)
            self._period_start = time.perf_counter()
