"""Ray workers: the same scores as in-process, steady-state runs, and failures that cost nothing.

Ray is started by these tests on this machine: workers of half a CPU, so two fit on two cores
beside the driver.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import ray
import torch
import yaml
from conftest import digits_yaml, limit_to_children, ray_yaml, tiny_quickstart_yaml

from cycleqd import Evolver, Genome, load_config
from cycleqd.engine.store import RunStore
from cycleqd.evaluation.factory import local_evaluator
from cycleqd.models.sources import load_models


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_cache):
    from cycleqd.evaluation.ray_evaluator import RayEvaluator

    path = tmp_path_factory.mktemp("ray") / "digits.yaml"
    cfg = load_config(digits_yaml(path, digits_cache))
    source, space = load_models(cfg)
    local = local_evaluator(cfg, source=source, space=space)
    remote = RayEvaluator(cfg, build=local_evaluator, workers=2, cpus_per_worker=0.5)
    genomes = [Genome.base(space), Genome.expert(space, 2)]
    genomes += [Genome.linear(space, torch.tensor([0.3 * i, 0.2, 0.5])) for i in range(4)]
    yield local, remote, space, genomes
    remote.close()
    ray.shutdown()


def run(path, *sets, on_generation=None):
    cfg = load_config(path, list(sets))
    evolver = Evolver(cfg, RunStore.create(path.with_suffix(""), cfg), on_generation=on_generation)
    summary = evolver.run()
    return evolver, summary, evolver.store.read_log("events.jsonl")


def children_of(events):
    return [e for e in events if e["event"] in ("child", "failed")]


def assert_consistent(evolver, events):
    """Every child made came back once; every elite holds the scores its child was logged with."""
    cfg = evolver.cfg
    total = cfg.evolution.generations * cfg.evolution.batch_size
    assert sorted(e["child"] for e in children_of(events)) == list(range(total))
    assert evolver.evaluations == len(cfg.tasks) + total
    logged = {e["genome"]: e["scores"] for e in events if e.get("scores")}
    for k, task in enumerate(cfg.task_names):
        data = evolver.archives.elites(k)
        assert len(data["elite"]) > 0
        for elite, quality, measures in zip(
            data["elite"], data["objective"], data["measures"], strict=True
        ):
            scores = logged[evolver.table[elite]]
            others = [scores[t] for t in cfg.task_names if t != task]
            assert scores[task] == pytest.approx(quality)
            np.testing.assert_allclose(measures, others)


def test_ray_workers_score_exactly_as_in_process_and_receive_only_genomes(setup):
    local, remote, space, genomes = setup
    want = local.evaluate(genomes, "val")
    got = remote.evaluate(genomes, "val")
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.errors == [None] * len(genomes)
    # what travels is each genome's bytes (hundreds), not its weights
    assert remote.bytes_per_candidate == np.mean([len(g.to_bytes()) for g in genomes])
    weight_bytes = sum(
        t.numel() * t.element_size() for t in map(space.base_tensor, space.tensor_names)
    )
    assert remote.bytes_per_candidate < 0.02 * weight_bytes  # a 36 KB MLP: overhead shows


def test_one_collect_gathers_every_candidate_finished_by_then(setup):
    import time

    local, remote, _, genomes = setup
    tickets = [remote.submit(g, "val") for g in genomes[:2]]
    assert all(s.job is not None for s in remote.slots)  # one candidate on each worker
    while not all(s.call is None or ray.wait([s.call], timeout=0)[0] for s in remote.slots):
        time.sleep(0.05)  # both workers finished (their results wait on the driver)
    outcomes = remote.collect()
    assert sorted(o.ticket for o in outcomes) == sorted(tickets)  # both, in one collect
    want = local.evaluate(genomes[:2], "val").scores
    got = {o.ticket: o.scores for o in outcomes}
    np.testing.assert_array_equal([got[t] for t in tickets], want)
    assert remote.collect() == []


def test_a_killed_worker_is_replaced_and_its_candidate_retried(setup):
    local, remote, _, genomes = setup
    ray.kill(remote.actors[0])  # dies before (or while) it takes the first candidate
    got = remote.evaluate(genomes, "val")
    np.testing.assert_array_equal(got.scores, local.evaluate(genomes, "val").scores)
    assert remote.retries and "worker died" in remote.retries[0]
    assert got.errors == [None] * len(genomes)


def test_the_ordered_steady_schedule_scores_on_ray_as_in_process(tmp_path, digits_cache, setup):
    steady = ["evaluation.schedule=steady", "evaluation.in_flight=3", "evaluation.ordered=true"]
    path = ray_yaml(tmp_path / "ray.yaml", digits_cache)
    remote, summary, events = run(path, *steady)
    local_path = ray_yaml(tmp_path / "local.yaml", digits_cache)
    local, want, _ = run(local_path, *steady, "evaluation.backend=local")
    assert summary == want
    assert events[3]["event"] == "workers" and len(events[3]["nodes"]) == 2
    checkpoints = [
        json.loads((e.store.root / "checkpoint.json").read_text()) for e in (remote, local)
    ]
    for key in ("archives", "table", "rng", "evaluations", "dispatched", "in_flight"):
        assert checkpoints[0][key] == checkpoints[1][key], key
    assert "bytes_per_candidate" in remote.store.read_log("metrics.jsonl")[-1]
    assert remote.evaluator.slots == []  # the evolver stopped the workers it started


def test_a_quickstart_style_run_on_two_workers_is_consistent(tmp_path, tinylm_micro, setup):
    evaluation = {"backend": "ray", "workers": 2, "cpus_per_worker": 0.5}
    path = tiny_quickstart_yaml(
        tmp_path / "tiny.yaml",
        tinylm_micro[0],
        evaluation=evaluation,
        generations=4,
        batch_size=3,
        bins=5,
    )
    evolver, summary, events = run(path)  # steady, unordered: children come back in any order
    assert evolver.cfg.evaluation.steady and not evolver.cfg.evaluation.ordered
    assert_consistent(evolver, events)
    assert set(summary["methods"]["cycleqd_final"]) == {
        "code",
        "sql",
        "shell",
        "average",
        "retention",
    }


def test_a_worker_killed_mid_evaluation_costs_no_candidate(tmp_path, digits_cache, setup):
    tasks = yaml.safe_load(open("experiments/digits.yaml"))["tasks"]
    tasks[0] = {"name": "rotated", "scorer": "faulty_scorers:slow", "params": {"delay": 0.5}}
    tasks[0]["params"] |= {"domain": "rotated", "noise": 0.3}
    path = ray_yaml(tmp_path / "kill.yaml", digits_cache, tasks=tasks, short_report=True)
    killed = []

    def kill_a_busy_worker(report):
        if not killed:
            slot = next(s for s in evolver_ref[0].evaluator.slots if s.job is not None)
            os.kill(slot.pid, signal.SIGKILL)
            killed.append(slot.job.genome_id)

    evolver_ref = []
    cfg = load_config(path)
    evolver = Evolver(
        cfg, RunStore.create(tmp_path / "kill", cfg), on_generation=kill_a_busy_worker
    )
    evolver_ref.append(evolver)
    evolver.run()
    events = evolver.store.read_log("events.jsonl")
    retries = [e for e in events if e["event"] == "retry"]
    assert any(killed[0] in e["reason"] and "worker died" in e["reason"] for e in retries)
    assert [e for e in events if e["event"] == "failed"] == []
    assert_consistent(evolver, events)


def test_a_scorer_that_raises_or_hangs_fails_its_candidate_and_the_run_goes_on(
    tmp_path, digits_cache, setup
):
    tasks = yaml.safe_load(open("experiments/digits.yaml"))["tasks"]
    for task, mode in zip(tasks[1:], ("raise", "hang"), strict=True):
        marker = str(tmp_path / f"{mode}.claimed")
        task["params"] |= {"mode": mode, "marker": marker}
        task["scorer"] = "faulty_scorers:faulty"
    path = ray_yaml(
        tmp_path / "faults.yaml", digits_cache, tasks=tasks, timeout_s=3, short_report=True
    )
    cfg = load_config(path)
    evolver = Evolver(cfg, RunStore.create(path.with_suffix(""), cfg))
    # the 3-second limit is for the hang, which comes among the children (after 5 honest calls
    # on a worker)
    limit_to_children(evolver)
    summary = evolver.run()
    events = evolver.store.read_log("events.jsonl")
    reasons = [e["reason"] for e in events if e["event"] == "failed"]
    assert any("RuntimeError: the scorer exploded" in r for r in reasons), reasons
    assert any("exceeded the time limit of 3 s" in r for r in reasons), reasons
    assert_consistent(evolver, events)
    assert "cycleqd_final" in summary["methods"]
