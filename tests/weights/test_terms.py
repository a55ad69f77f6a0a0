"""Mutation terms, the genome file format pinned, and the names the split kept in place."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from cycleqd import CycleQDError
from cycleqd.weights.genome import Genome, LowRankTerm, NoiseTerm
from cycleqd.weights.terms import decode_terms, encode_terms, scale_terms, sum_terms


def _t(*shape: int) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) / 7


def _pinned() -> Genome:
    """A literal lineage: terms of every kind, a merge node with weights, a weighted sum."""
    a = Genome(
        space="pinned", num_tensors=3, num_experts=2, coefficients=_t(3, 2), meta={"origin": "a"}
    )
    a = a.with_terms(
        spectral={(1, None): {2: _t(4)}, (0, 2): {0: _t(2)}},
        noise=[NoiseTerm(5, _t(3))],
        lowrank=[LowRankTerm("k", 1, _t(4, 2), _t(2), _t(3, 2))],
        op="mutate",
    )
    b = Genome(space="pinned", num_tensors=3, num_experts=2, coefficients=-_t(3, 2))
    c = Genome.merged("ties", [a, b], parameters={"density": 0.5}, seed=3, weights=_t(2, 3))
    return Genome.weighted_sum([c, a], torch.tensor([0.5, 2.0]), op="cross")


def _file_digest(data: bytes) -> str:
    """The file's metadata and tensor bytes (safetensors writes its metadata in no fixed order)."""
    n = int.from_bytes(data[:8], "little")
    h = hashlib.sha256(
        json.dumps(json.loads(data[8 : 8 + n])["__metadata__"], sort_keys=True).encode()
    )
    h.update(data[8 + n :])
    return h.hexdigest()


def test_the_genome_file_format_and_ids_do_not_drift():
    # values written by the code before genome.py was split; a change here breaks every run store
    genome = _pinned()
    data = genome.to_bytes()
    assert genome.id == "524fcb4d781049caaec9"
    assert len(data) == 2004
    assert _file_digest(data) == "c65d1775ee66e448e0a1f9e3470435bc5d3edfbbe0943a155147108338370355"
    n = int.from_bytes(data[:8], "little")
    assert json.loads(data[8 : 8 + n])["__metadata__"]["format"] == "cycleqd.genome/1"
    assert Genome.from_bytes(data).id == genome.id


def test_moved_names_stay_importable_from_their_old_modules():
    import cycleqd.weights as weights
    from cycleqd.weights import _codec, bank, genome, space, terms

    for name in ("NoiseTerm", "LowRankTerm", "SpectralKey"):
        assert getattr(genome, name) is getattr(terms, name) and name in genome.__all__
    assert genome.FORMAT == _codec.FORMAT == "cycleqd.genome/1"
    assert {"MergeNode", "WEIGHTED_SUM", "Genome"} <= set(genome.__all__)
    assert space.Bank is bank.Bank is weights.Bank and "Bank" in space.__all__


def test_terms_sum_by_key_in_canonical_order():
    one = Genome(space="s", num_tensors=3, num_experts=1, coefficients=torch.zeros(3, 1))
    one = one.with_terms(
        spectral={(1, 4): {2: _t(2)}, (1, None): {0: _t(2)}},
        noise=[NoiseTerm(9, _t(3))],
        lowrank=[LowRankTerm("z", 1, _t(2, 1), _t(1), _t(2, 1))],
    )
    summed = sum_terms(one, [one])
    assert list(summed["spectral"]) == [(1, None), (1, 4)]
    assert torch.equal(summed["spectral"][(1, 4)][2], 2 * _t(2))
    assert [n.seed for n in summed["noise"]] == [9]
    assert torch.equal(summed["noise"][0].scale, 2 * _t(3))
    assert torch.equal(summed["lowrank"][0].s, 2 * _t(1))
    scaled = scale_terms(one, torch.tensor([0.0, 0.0, 3.0]))
    assert scaled["lowrank"] == () and list(scaled["spectral"][(1, None)]) == []
    assert torch.equal(scaled["spectral"][(1, 4)][2], 3 * _t(2))


def test_terms_round_trip_through_header_entries():
    g = _pinned().merge.parents[1]
    tensors: dict[str, torch.Tensor] = {}

    def put(x: torch.Tensor) -> str:
        tensors[f"t{len(tensors)}"] = x
        return f"t{len(tensors) - 1}"

    header = json.loads(json.dumps(encode_terms(g, put)))
    back = decode_terms(header, tensors)
    assert {k: list(v) for k, v in back["spectral"].items()} == {
        k: list(v) for k, v in g.spectral.items()
    }
    assert [(n.seed, n.scale.tolist()) for n in back["noise"]] == [
        (n.seed, n.scale.tolist()) for n in g.noise
    ]
    assert [lr.key for lr in back["lowrank"]] == ["k"]


def test_a_node_that_does_not_hash_to_its_id_is_refused():
    data = _pinned().to_bytes()
    n = int.from_bytes(data[:8], "little")
    tampered = data[: 8 + n] + bytes([data[8 + n] ^ 1]) + data[8 + n + 1 :]
    with pytest.raises(CycleQDError, match="does not hash to its id"):
        Genome.from_bytes(tampered)
