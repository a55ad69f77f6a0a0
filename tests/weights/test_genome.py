from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import save_safetensors_space

from cycleqd import CycleQDError, Genome, Materializer, ModelLoadError, NonFiniteError, WeightSpace
from cycleqd.operators import CROSSOVERS, MUTATIONS, MutationContext


def _lineage(space: WeightSpace, seed: int = 0) -> Genome:
    """Three generations: task arithmetic, both SVD mutations, Gaussian noise and a dare merge."""
    mat = Materializer(space)
    rng = np.random.default_rng(seed)
    ctx = MutationContext(space, mat, active_task=1, rng=rng)
    ta = CROSSOVERS.build("gaussian_task_arithmetic", granularity="layer")
    a = MUTATIONS.build("svd_expert")(
        ta([Genome.expert(space, 0), Genome.expert(space, 1)], rng, space), ctx
    )
    b = MUTATIONS.build("gaussian", std=0.02)(ta([Genome.expert(space, 2), a], rng, space), ctx)
    c = CROSSOVERS.build("dare_ties", parameters={"density": 0.7})([a, b], rng, space)
    return MUTATIONS.build("svd_child", rank=2)(ta([c, b], rng, space), ctx)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_genome_round_trips_through_its_file(space, tmp_path):
    genome = _lineage(space)
    assert genome.merge is not None and genome.has_terms
    size = genome.save(tmp_path / "g.genome")
    assert not list(tmp_path.glob("*.tmp"))
    loaded = Genome.load(tmp_path / "g.genome")
    assert loaded.id == genome.id and size == (tmp_path / "g.genome").stat().st_size
    assert loaded.meta == json.loads(json.dumps(dict(genome.meta)))
    a = _digest(Materializer(space).materialize(genome))
    assert a == _digest(Materializer(space).materialize(loaded))
    linear = Genome.linear(space, torch.tensor([0.2, 0.3, 0.5]))
    assert linear.save(tmp_path / "lin.genome") < space.checkpoint_bytes


def test_genome_id_is_content_not_provenance(space):
    a = Genome.linear(space, torch.tensor([0.5, 0.5, 0.0]), origin="x")
    b = Genome.linear(space, torch.tensor([0.5, 0.5, 0.0]), origin="y")
    c = Genome.linear(space, torch.tensor([0.5, 0.5, 1e-7]))
    assert a.id == b.id != c.id


def test_genome_materialises_to_identical_bytes_in_another_process(tmp_path):
    base_path, expert_paths = save_safetensors_space(tmp_path / "models")
    cache = tmp_path / "svd-cache"
    space = WeightSpace.from_paths(
        base=base_path, experts=expert_paths, dtype="bfloat16", cache_dir=cache
    )
    genome = _lineage(space, seed=3)
    genome.save(tmp_path / "child.genome")
    here = _digest(Materializer(space).materialize(genome))
    script = textwrap.dedent(f"""
        import hashlib, torch
        from cycleqd import Genome, Materializer, WeightSpace
        space = WeightSpace.from_paths(base={str(base_path)!r},
                                       experts={ {k: str(v) for k, v in expert_paths.items()}!r},
                                       dtype="bfloat16", cache_dir={str(cache)!r})
        state = Materializer(space).materialize(Genome.load({str(tmp_path / "child.genome")!r}))
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
        print(h.hexdigest())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == here


def test_non_finite_child_is_rejected_and_named(space):
    genome = Genome.linear(space, torch.tensor([float("inf"), 0.0, 0.0]))
    with pytest.raises(
        NonFiniteError,
        match=r"materialised NaN/Inf in tensor 'model\..*"
        r"the child is rejected",
    ):
        Materializer(space).materialize(genome)
    nan = Genome.linear(space, torch.tensor([float("nan"), 0.0, 0.0]))
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        Materializer(space).materialize(nan)


def test_genome_of_another_space_is_refused(space, state_dicts):
    base, experts = state_dicts
    del experts["shell"]
    other = WeightSpace(base=base, experts=experts)
    with pytest.raises(CycleQDError, match="was made for weight space"):
        Materializer(other).materialize(Genome.expert(space, 0))
    with pytest.raises(CycleQDError, match="different weight spaces"):
        Genome.weighted_sum([Genome.expert(space, 0), Genome.expert(other, 0)], [0.5, 0.5])


def test_bad_genome_files_are_explained(tmp_path):
    (tmp_path / "x.genome").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    with pytest.raises(CycleQDError, match="not a cycleqd genome file"):
        Genome.load(tmp_path / "x.genome")
    with pytest.raises(CycleQDError, match="does not exist"):
        Genome.load(tmp_path / "missing.genome")


def test_materialiser_state_dict_is_updated_in_place(space):
    mat = Materializer(space)
    views = {k: v.data_ptr() for k, v in mat.state_dict.items()}
    first = {k: v.clone() for k, v in mat.materialize(Genome.expert(space, 0)).items()}
    second = mat.materialize(Genome.expert(space, 1))
    assert {k: v.data_ptr() for k, v in second.items()} == views
    assert not torch.equal(first["lm_head.weight"], second["lm_head.weight"])


def test_overflow_of_the_storage_dtype_is_caught(state_dicts):
    base, experts = state_dicts
    half = WeightSpace(base=base, experts=experts, dtype="float16")
    mat = Materializer(half)
    mat.materialize(Genome.linear(half, torch.tensor([100.0, 0.0, 0.0])))  # large but finite
    with pytest.raises(NonFiniteError, match="NaN/Inf in tensor"):
        mat.materialize(Genome.linear(half, torch.tensor([1e6, 0.0, 0.0])))


def test_non_finite_expert_is_refused_at_load(state_dicts):
    base, experts = state_dicts
    experts["sql"]["model.layers.0.mlp.down_proj.weight"][2, 3] = float("nan")
    with pytest.raises(
        ModelLoadError,
        match=r"expert 'sql' minus the base: tensor "
        r"'model.layers.0.mlp.down_proj.weight' holds NaN/Inf",
    ):
        WeightSpace(base=base, experts=experts)


def test_merge_lineages_stay_linear_in_size_and_replay_cost(space, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ties = CROSSOVERS.build("ties", parameters={"density": 0.7})
    pool = [Genome.expert(space, k) for k in range(3)]
    for _ in range(30):
        a, b = rng.choice(len(pool), size=2, replace=False)
        pool.append(ties([pool[a], pool[b]], rng, space))
        pool = pool[-6:]
    child = pool[-1]
    lineage = child.lineage()
    size = child.save(tmp_path / "deep.genome")
    assert size < 40_000 * len(lineage)  # each ancestor stored once
    writes = []
    mat = Materializer(space, cache_size=0)
    original = mat._write_node
    monkeypatch.setattr(mat, "_write_node", lambda g, *a: (writes.append(g.id), original(g, *a)))
    mat.materialize(child)
    assert len(writes) == len(set(writes)) == len(lineage)
    loaded = Genome.load(tmp_path / "deep.genome")
    assert loaded.id == child.id
    again = Materializer(space).materialize(loaded)
    fresh = Materializer(space).materialize(child)
    assert all(torch.equal(again[n], fresh[n]) for n in fresh)


def test_merge_ids_do_not_depend_on_shared_objects(space, tmp_path):
    rng = np.random.default_rng(1)
    ties = CROSSOVERS.build("ties", parameters={"density": 0.5})
    e0, e1, e2 = (Genome.expert(space, k) for k in range(3))
    left, right = ties([e0, e1], rng, space), ties([e0, e2], rng, space)
    child = ties([left, right], rng, space)
    left.save(tmp_path / "l.genome")
    right.save(tmp_path / "r.genome")
    rebuilt = Genome.merged(
        child.merge.method,
        [Genome.load(tmp_path / "l.genome"), Genome.load(tmp_path / "r.genome")],
        parameters=child.merge.parameters,
        seed=child.merge.seed,
        weights=child.merge.weights,
    )
    assert rebuilt.id == child.id


def test_corrupt_genome_files_are_explained(space, tmp_path):
    data = _lineage(space).to_bytes()
    for name, blob in {"truncated": data[: len(data) // 2], "junk": b"\xff" * 64}.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CycleQDError, match="not a cycleqd genome file"):
            Genome.load(tmp_path / name)


def test_fingerprint_sees_changed_expert_values(state_dicts):
    base, experts = state_dicts
    first = WeightSpace(base=base, experts=experts).fingerprint()
    experts["sql"]["model.layers.1.mlp.up_proj.weight"] += 0.5
    assert WeightSpace(base=base, experts=experts).fingerprint() != first


def test_svd_rank_must_be_positive(space):
    with pytest.raises(CycleQDError, match="rank must be >= 1"):
        MUTATIONS.build("svd_expert", rank=0)
    with pytest.raises(CycleQDError, match="rank must be >= 1"):
        space.svd_factors(0, space.svd_targets(), rank=0)
