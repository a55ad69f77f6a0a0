"""Genomes: children described by how to rebuild them, not by their weights.

A child's task vector ``δ = θ − θ_base`` is

* a **linear form** over the expert task vectors, ``Σ_k c[t, k] τ_k[t]`` with one coefficient per
  tensor ``t`` and expert ``k`` — what task-arithmetic crossover of linear parents yields; or a
  **merge node** — a non-linear operator (mergekit's ties, dare, slerp, …) applied to parent
  genomes, replayed through the materialiser's cache of parent weights;
* plus **mutation terms**, each exactly reproducible (:mod:`cycleqd.weights.terms`):

  - spectral (``svd_expert``): ``U_k diag(r ⊙ S_k) V_kᵀ`` along the cached SVD of ``τ_k[t]``,
    stored as the coordinates ``r``;
  - noise (``gaussian``): ``scale[t] · N(0, 1)`` drawn from a seed;
  - low-rank (``svd_child``): a stored ``u diag(s) vᵀ`` delta.

Every one of these is linear in the genome, so a weighted sum of linear genomes folds into one
linear genome: lineages never grow a chain of operations. A genome of K = 3 experts over a 0.5 B
model is kilobytes (coefficients) to megabytes (spectral coordinates), against a 1 GB checkpoint.

Genomes serialise to safetensors bytes (tensors) with a JSON header (structure, seeds,
provenance) — no pickle (:mod:`cycleqd.weights._codec`). :attr:`Genome.id` is a hash of the
content, provenance excluded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from cycleqd.errors import CycleQDError
from cycleqd.weights._codec import (
    FORMAT,  # noqa: F401 (importable from here, as before)
    content_id,
    pack,
    unpack,
)
from cycleqd.weights._io import atomic_write_bytes
from cycleqd.weights.terms import (
    LowRankTerm,
    NoiseTerm,
    SpectralKey,
    decode_terms,
    encode_terms,
    scale_terms,
    sum_terms,
)

__all__ = ["Genome", "LowRankTerm", "MergeNode", "NoiseTerm", "SpectralKey", "WEIGHTED_SUM"]

#: The merge-node method that a weighted sum of non-linear parents records.
WEIGHTED_SUM = "weighted_sum"


@dataclass(frozen=True, eq=False)
class MergeNode:
    """A non-linear merge of parent genomes.

    Attributes:
        method: a mergekit merge-method name, or :data:`WEIGHTED_SUM`.
        parameters: JSON-able method parameters shared by every tensor.
        seed: seeds the method's randomness (dare's drop masks) per tensor.
        parents: the merged genomes.
        weights: ``[P, T]`` per-parent, per-tensor weights (mergekit's ``weight``), or ``None``.
    """

    method: str
    parameters: Mapping[str, Any]
    seed: int
    parents: tuple[Genome, ...]
    weights: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class Genome:
    """A child model as a recipe over a weight space's base and expert task vectors.

    Build genomes with :meth:`expert`, :meth:`base`, :meth:`linear`, :meth:`weighted_sum`,
    :meth:`merged` and :meth:`with_terms`; turn one into weights with
    :class:`cycleqd.Materializer`.

    Attributes:
        space: fingerprint of the weight space it belongs to.
        num_tensors: T, the floating tensors of the model.
        num_experts: K.
        coefficients: ``[T, K]`` fp32 linear form, or ``None`` for a merge node.
        merge: the merge node, or ``None`` for a linear form.
        spectral: ``(k, rank)`` → tensor index → ``r`` (relative singular-value coordinates).
        noise: seeded Gaussian terms.
        lowrank: stored low-rank deltas.
        meta: provenance (operators, seeds, parents' ids); not part of :attr:`id`.
    """

    space: str
    num_tensors: int
    num_experts: int
    coefficients: torch.Tensor | None = None
    merge: MergeNode | None = None
    spectral: Mapping[SpectralKey, Mapping[int, torch.Tensor]] = field(default_factory=dict)
    noise: tuple[NoiseTerm, ...] = ()
    lowrank: tuple[LowRankTerm, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.coefficients is None) == (self.merge is None):
            raise CycleQDError("a genome is either a linear form or a merge node, not both/neither")
        if self.coefficients is not None and tuple(self.coefficients.shape) != (
            self.num_tensors,
            self.num_experts,
        ):
            raise CycleQDError(
                f"coefficients must be [T, K] = [{self.num_tensors}, "
                f"{self.num_experts}], got {tuple(self.coefficients.shape)}"
            )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def linear(cls, space: Any, coefficients: torch.Tensor, **meta: Any) -> Genome:
        """``θ_base + Σ_k c[:, k] τ_k`` over ``space`` (a :class:`cycleqd.WeightSpace`).

        ``coefficients`` is ``[T, K]``, ``[K]`` (one per expert, every tensor alike).
        """
        T, K = len(space.tensor_names), space.num_experts
        coefficients = torch.as_tensor(coefficients, dtype=torch.float32).cpu()
        if coefficients.dim() == 1:
            coefficients = coefficients.expand(T, K)
        return cls(
            space=space.fingerprint(),
            num_tensors=T,
            num_experts=K,
            coefficients=coefficients.contiguous().clone(),
            meta=meta,
        )

    @classmethod
    def expert(cls, space: Any, k: int) -> Genome:
        """Expert ``k`` itself."""
        coefficients = torch.zeros(space.num_experts)
        coefficients[k] = 1.0
        return cls.linear(space, coefficients, origin=f"expert:{space.expert_names[k]}")

    @classmethod
    def base(cls, space: Any) -> Genome:
        """The base model."""
        return cls.linear(space, torch.zeros(space.num_experts), origin="base")

    @property
    def is_linear(self) -> bool:
        """Whether the genome is a linear form (no merge node at its root)."""
        return self.merge is None

    def _check_compatible(self, other: Genome) -> None:
        if (other.space, other.num_tensors, other.num_experts) != (
            self.space,
            self.num_tensors,
            self.num_experts,
        ):
            raise CycleQDError("genomes from different weight spaces cannot be combined")

    @classmethod
    def weighted_sum(cls, parents: Sequence[Genome], weights: torch.Tensor, **meta: Any) -> Genome:
        """``Σ_i w_i[t] · δ_i[t]``: crossover by task arithmetic.

        Args:
            parents: P genomes of one space.
            weights: ``[P, T]`` per-parent, per-tensor weights (``[P]``: per parent).
            **meta: provenance stored with the child.

        Linear parents fold into one linear genome; otherwise the child is a
        :data:`WEIGHTED_SUM` merge node over them.
        """
        first = parents[0]
        for other in parents[1:]:
            first._check_compatible(other)
        weights = torch.as_tensor(weights, dtype=torch.float32).cpu()
        if weights.dim() == 1:
            weights = weights[:, None].expand(len(parents), first.num_tensors)
        weights = weights.contiguous()
        if not all(p.is_linear for p in parents):
            return cls.merged(WEIGHTED_SUM, parents, weights=weights, **meta)
        coefficients = sum(
            w[:, None] * p.coefficients for w, p in zip(weights, parents, strict=True)
        )
        folded = cls(
            space=first.space,
            num_tensors=first.num_tensors,
            num_experts=first.num_experts,
            coefficients=coefficients,
            meta=meta,
        )
        terms = [p._scaled_terms(w) for w, p in zip(weights, parents, strict=True)]
        return folded._add_terms(terms)

    @classmethod
    def merged(
        cls,
        method: str,
        parents: Sequence[Genome],
        *,
        parameters: Mapping | None = None,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        **meta: Any,
    ) -> Genome:
        """A merge node: ``method`` applied to ``parents`` (replayed through a cache)."""
        first = parents[0]
        node = MergeNode(
            method=method,
            parameters=dict(parameters or {}),
            seed=int(seed),
            parents=tuple(parents),
            weights=weights,
        )
        return cls(
            space=first.space,
            num_tensors=first.num_tensors,
            num_experts=first.num_experts,
            merge=node,
            meta=meta,
        )

    def _scaled_terms(self, w: torch.Tensor) -> Genome:
        """This genome's mutation terms (no linear part), scaled per tensor by ``w``."""
        return replace(self, **scale_terms(self, w))

    def _add_terms(self, others: Sequence[Genome]) -> Genome:
        return replace(self, **sum_terms(self, others))

    def with_terms(
        self,
        *,
        spectral: Mapping[SpectralKey, Mapping[int, torch.Tensor]] | None = None,
        noise: Sequence[NoiseTerm] = (),
        lowrank: Sequence[LowRankTerm] = (),
        **meta: Any,
    ) -> Genome:
        """This genome plus mutation terms; ``meta`` is merged into the provenance."""
        extra = Genome(
            space=self.space,
            num_tensors=self.num_tensors,
            num_experts=self.num_experts,
            coefficients=torch.zeros(self.num_tensors, self.num_experts),
            spectral=spectral or {},
            noise=tuple(noise),
            lowrank=tuple(lowrank),
        )
        return replace(self._add_terms([extra]), meta={**self.meta, **meta})

    @property
    def has_terms(self) -> bool:
        """Whether any mutation term is present."""
        return bool(self.spectral or self.noise or self.lowrank)

    # --- serialisation ------------------------------------------------------------------------

    def _node(self, tensors: dict[str, torch.Tensor], with_meta: bool) -> dict[str, Any]:
        """This genome's own fields as a JSON header; merge parents appear by id only."""

        def put(t: torch.Tensor) -> str:
            key = f"t{len(tensors)}"
            tensors[key] = t.detach().to("cpu", torch.float32).contiguous().clone()
            return key

        header: dict[str, Any] = {"T": self.num_tensors, "K": self.num_experts}
        if self.coefficients is not None:
            header["coefficients"] = put(self.coefficients)
        if self.merge is not None:
            m = self.merge
            header["merge"] = {
                "method": m.method,
                "parameters": dict(m.parameters),
                "seed": m.seed,
                "weights": None if m.weights is None else put(m.weights),
                "parents": [p.id for p in m.parents],
            }
        header.update(encode_terms(self, put))
        if with_meta and self.meta:
            header["meta"] = dict(self.meta)
        return header

    def lineage(self) -> dict[str, Genome]:
        """This genome and every merge-node ancestor, each once, by id, parents before children.

        Iterative (lineages can be thousands of generations deep); computing each id after its
        parents' keeps the Merkle hashing flat too.
        """
        found: dict[str, Genome] = {}
        seen: set[int] = set()
        stack: list[tuple[Genome, bool]] = [(self, False)]
        while stack:
            genome, expanded = stack.pop()
            if expanded:
                found.setdefault(genome.id, genome)
                continue
            if id(genome) in seen:
                continue
            seen.add(id(genome))
            stack.append((genome, True))
            for parent in genome.merge.parents if genome.merge is not None else ():
                stack.append((parent, False))
        return found

    def to_bytes(self) -> bytes:
        """Safetensors bytes: tensors plus a JSON header in the metadata; no pickle.

        Merge-node ancestors are stored once each (a DAG keyed by id), however many paths of the
        lineage reach them.
        """
        tensors: dict[str, torch.Tensor] = {}
        nodes = {gid: g._node(tensors, with_meta=True) for gid, g in self.lineage().items()}
        return pack(self.space, self.id, nodes, tensors)

    @cached_property
    def id(self) -> str:
        """Content hash (provenance excluded): equal ids replay to identical weights.

        A Merkle hash: the genome's own fields (sorted JSON header, then each tensor's shape and
        bytes) and its merge parents' ids, so it does not depend on how the lineage is stored.
        """
        tensors: dict[str, torch.Tensor] = {}
        header = self._node(tensors, with_meta=False)
        return content_id(self.space, header, tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> Genome:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CycleQDError: the bytes are not a cycleqd genome (or are truncated or corrupt).
        """
        return unpack(data, cls._decode)

    @classmethod
    def _decode(
        cls,
        h: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        space: str,
        built: Mapping[str, Genome],
    ) -> Genome:
        merge = None
        if "merge" in h:
            m = h["merge"]
            merge = MergeNode(
                method=m["method"],
                parameters=m["parameters"],
                seed=m["seed"],
                parents=tuple(built[p] for p in m["parents"]),
                weights=None if m["weights"] is None else tensors[m["weights"]],
            )
        return cls(
            space=space,
            num_tensors=h["T"],
            num_experts=h["K"],
            coefficients=tensors[h["coefficients"]] if "coefficients" in h else None,
            merge=merge,
            **decode_terms(h, tensors),
            meta=h.get("meta", {}),
        )

    def save(self, path: str | Path) -> int:
        """Write the genome atomically (temp file, then rename); returns its size in bytes."""
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Genome:
        """Read a genome written by :meth:`save`.

        Raises:
            CycleQDError: the file is missing or not a genome.
        """
        path = Path(path)
        if not path.is_file():
            raise CycleQDError(f"genome file {path} does not exist")
        return cls.from_bytes(path.read_bytes())
