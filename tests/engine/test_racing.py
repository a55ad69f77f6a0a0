"""Racing: children scored on prefixes stop only when they cannot enter; the rest are scored in
full, and only full scores reach the archives."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_quickstart_yaml

from cycleqd import Evolver, load_config
from cycleqd.config import RacingConfig
from cycleqd.engine.archive import Archives
from cycleqd.engine.racing import Racer, score_children
from cycleqd.engine.store import RunStore
from cycleqd.evaluation.protocol import SEARCH, Evaluation

TASKS = ["a", "b", "c"]
SIZE = 40


class Scripted:
    """An evaluator whose children are strings: each task's verdicts come from a fixed rate."""

    def __init__(self, rates: dict[str, list[float]]) -> None:
        self.rates, self.calls = rates, []

    def evaluate(self, genomes, split=SEARCH):
        self.calls.append((list(genomes), split))
        n = int(split.partition(":")[2] or SIZE)
        rows, items = [], []
        for g in genomes:
            # request i of task k is right when it falls under the child's rate (deterministic)
            verdicts = {
                t: tuple(float((i * 7919 % SIZE) < r * SIZE) for i in range(n))
                for t, r in zip(TASKS, self.rates[g], strict=True)
            }
            items.append(verdicts)
            rows.append([sum(v) / n for v in verdicts.values()])
        return Evaluation(np.array(rows), [None] * len(genomes), items)


def filled_archives(quality: float) -> Archives:
    """Archives whose every cell holds an elite of ``quality``."""
    archives = Archives(tasks=TASKS, bins=4, ranges=[(0.0, 1.0)] * 3)
    grid = np.linspace(0.05, 0.95, 4)
    elite = 0
    for x in grid:
        for y in grid:
            for k in range(3):
                scores = np.full(3, quality)
                scores[[j for j in range(3) if j != k]] = [x, y]
                archives.insert(elite, scores)
                elite += 1
    return archives


def test_the_bounds_hold_what_the_unscored_requests_could_add():
    racer = Racer(Scripted({}), [SIZE] * 3, stages=[10], z=2.0)
    low, high = racer.bounds({"a": (1.0,) * 10, "b": (0.0,) * 10, "c": (1.0, 0.0) * 5}, TASKS)
    assert high[0] == 1.0 and 0.25 <= low[0] < 1.0  # 10 right of 40: at least 0.25
    assert low[1] == 0.0 and 0.0 < high[1] <= 0.75
    assert low[2] < 0.5 < high[2]


def test_a_child_that_cannot_enter_stops_and_one_that_may_is_scored_in_full():
    archives = filled_archives(0.9)
    evaluator = Scripted({"weak": [0.2, 0.2, 0.2], "strong": [0.95, 0.5, 0.5]})
    racer = Racer(evaluator, [SIZE] * 3, stages=[10, 20], z=2.0)
    weak, strong = racer.race(["weak", "strong"], archives)
    assert not weak.may_enter and weak.requests == 3 * 10  # stopped at the first stage
    assert strong.may_enter
    full = evaluator.evaluate(["strong"]).scores[0]
    assert np.array_equal(strong.scores, full)  # what the archives get is the full score
    assert strong.requests == 3 * (10 + 20 + SIZE)
    assert [split for _, split in evaluator.calls[:3]] == ["search:10", "search:20", SEARCH]


def test_a_scorer_that_does_not_score_the_prefix_gets_the_child_scored_in_full():
    class Whole(Scripted):
        def evaluate(self, genomes, split=SEARCH):
            return super().evaluate(genomes, SEARCH)  # ignores the prefix: every request

    racer = Racer(Whole({"weak": [0.2, 0.2, 0.2]}), [SIZE] * 3, stages=[10])
    assert racer.race(["weak"], filled_archives(0.9))[0].may_enter


def test_an_empty_cell_keeps_any_child_in_the_race():
    archives = Archives(tasks=TASKS, bins=4, ranges=[(0.0, 1.0)] * 3)
    archives.insert(0, np.array([0.9, 0.9, 0.9]))
    racer = Racer(Scripted({"weak": [0.1, 0.1, 0.1]}), [SIZE] * 3, stages=[10])
    assert racer.race(["weak"], archives)[0].may_enter


def test_score_children_without_racing_is_one_full_evaluation():
    archives = filled_archives(0.9)
    evaluator = Scripted({"weak": [0.2, 0.2, 0.2]})
    result, stopped, requests = score_children(
        evaluator, ["weak"], archives, RacingConfig(), [SIZE] * 3
    )
    assert stopped == [False] and requests == 3 * SIZE
    assert [split for _, split in evaluator.calls] == [SEARCH]
    raced = score_children(
        Scripted({"weak": [0.2, 0.2, 0.2]}),
        ["weak"],
        archives,
        RacingConfig(enabled=True, stages=[10]),
        [SIZE] * 3,
    )
    assert raced[1] == [True] and raced[2] == 3 * 10


@pytest.mark.parametrize(
    ("racing", "schedule"), [(False, "generations"), (True, "generations"), (False, "steady")]
)
def test_a_run_counts_the_requests_it_scored(tmp_path, tinylm_micro, racing, schedule):
    path = tiny_quickstart_yaml(
        tmp_path / "q.yaml",
        tinylm_micro[0],
        problems=8,
        evaluation={"schedule": schedule},
        generations=4,
        batch_size=3,
        racing={"enabled": racing, "stages": [2]},
    )
    cfg = load_config(path)
    evolver = Evolver(cfg, RunStore.create(tmp_path / "run", cfg))
    evolver.evolve()
    evolver.close()
    metrics = evolver.store.read_log("metrics.jsonl")
    events = evolver.store.read_log("events.jsonl")
    full = 3 * 4  # a child's full search split: 4 requests a task
    children = [e for e in events if e["event"] in ("child", "stopped")]
    stopped = [e for e in events if e["event"] == "stopped"]
    prefix = 2 * 3 if racing else 0  # racing: every child's first 2 requests a task first
    expected = 3 * full + prefix * len(children) + full * (len(children) - len(stopped))
    assert len(children) == 12 and metrics[-1]["requests"] == expected
    assert all(not e["entered"] for e in stopped)
    if not racing:
        assert not stopped
