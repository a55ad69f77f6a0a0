"""The Ray evaluator: the same scores as in-process, and a killed worker costs no candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch
from conftest import digits_yaml

from cycleqd import Genome, load_config
from cycleqd.evaluator import LocalEvaluator
from cycleqd.models import load_models
from cycleqd.scorers import SCORERS


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_cache):
    from cycleqd.ray_evaluator import RayEvaluator

    path = tmp_path_factory.mktemp("ray") / "digits.yaml"
    cfg = load_config(digits_yaml(path, digits_cache))
    source, space = load_models(cfg)
    local = LocalEvaluator(
        space, source, {t.name: SCORERS.build(t.scorer, **t.params) for t in cfg.tasks}
    )
    remote = RayEvaluator(cfg, workers=2, cpus_per_worker=0.5)  # leaves room for the run below
    genomes = [Genome.base(space), Genome.expert(space, 2)]
    genomes += [Genome.linear(space, torch.tensor([0.3 * i, 0.2, 0.5])) for i in range(4)]
    yield local, remote, space, genomes
    remote.close()
    ray.shutdown()


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


def test_a_killed_worker_is_replaced_and_its_candidate_retried(setup):
    local, remote, _, genomes = setup
    ray.kill(remote.actors[0])  # dies before (or while) it takes the first candidate
    got = remote.evaluate(genomes, "val")
    np.testing.assert_array_equal(got.scores, local.evaluate(genomes, "val").scores)
    assert remote.retries and "worker died" in remote.retries[0]
    assert got.errors == [None] * len(genomes)


def test_an_evolution_on_ray_workers_equals_the_in_process_one(tmp_path, digits_cache):
    from cycleqd import Evolver
    from cycleqd.store import RunStore

    summaries = {}
    for backend in ("local", "ray"):
        path = digits_yaml(tmp_path / f"{backend}.yaml", digits_cache, generations=3)
        cfg = load_config(
            path,
            [f"evaluation.backend={backend}", "evaluation.workers=2"]
            + ["evaluation.cpus_per_worker=0.5"],
        )
        evolver = Evolver(cfg, RunStore.create(tmp_path / backend, cfg))
        summaries[backend] = evolver.run()
        metrics = evolver.store.read_log("metrics.jsonl")
        assert ("bytes_per_candidate" in metrics[-1]) == (backend == "ray")
        if backend == "ray":
            evolver.evaluator.close()
    assert summaries["ray"] == summaries["local"]
    checkpoints = {
        backend: json.loads((tmp_path / backend / "checkpoint.json").read_text())
        for backend in ("local", "ray")
    }
    for checkpoint in checkpoints.values():
        checkpoint.pop("log_sizes")  # the Ray run's metrics lines also log bytes per candidate
    assert checkpoints["ray"] == checkpoints["local"]  # the same archives, elite for elite


def test_workers_that_cannot_be_placed_are_explained(tmp_path, digits_cache, setup):
    from cycleqd import CycleQDError
    from cycleqd.ray_evaluator import RayEvaluator

    cfg = load_config(digits_yaml(tmp_path / "d.yaml", digits_cache))
    with pytest.raises(CycleQDError, match="did not start within 5 s.*lower evaluation.workers"):
        RayEvaluator(cfg, workers=1, cpus_per_worker=64, start_timeout=5)
