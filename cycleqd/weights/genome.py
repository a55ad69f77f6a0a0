"""Genomes: children described by how to rebuild them, not by their weights.

A child's task vector ``δ = θ − θ_base`` is

* a **linear form** over the expert task vectors, ``Σ_k c[t, k] τ_k[t]`` with one coefficient per
  tensor ``t`` and expert ``k`` — what task-arithmetic crossover of linear parents yields; or a
  **merge node** — a non-linear operator (mergekit's ties, dare, slerp, …) applied to parent
  genomes, replayed through the materialiser's cache of parent weights;
* plus **mutation terms**, each exactly reproducible:

  - spectral (``svd_expert``): ``U_k diag(r ⊙ S_k) V_kᵀ`` along the cached SVD of ``τ_k[t]``,
    stored as the coordinates ``r``;
  - noise (``gaussian``): ``scale[t] · N(0, 1)`` drawn from a seed;
  - low-rank (``svd_child``): a stored ``u diag(s) vᵀ`` delta.

Every one of these is linear in the genome, so a weighted sum of linear genomes folds into one
linear genome: lineages never grow a chain of operations. A genome of K = 3 experts over a 0.5 B
model is kilobytes (coefficients) to megabytes (spectral coordinates), against a 1 GB checkpoint.

Genomes serialise to safetensors bytes (tensors) with a JSON header (structure, seeds,
provenance) — no pickle. :attr:`Genome.id` is a hash of the content, provenance excluded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cycleqd.errors import CycleQDError
from cycleqd.weights._io import atomic_write_bytes

__all__ = ["Genome", "LowRankTerm", "MergeNode", "NoiseTerm", "SpectralKey", "WEIGHTED_SUM"]

FORMAT = "cycleqd.genome/1"
#: The merge-node method that a weighted sum of non-linear parents records.
WEIGHTED_SUM = "weighted_sum"

#: ``(expert index, svd rank or None for full rank)``: which cached factors spectral terms use.
SpectralKey = tuple[int, int | None]


def _spectral_order(key: SpectralKey) -> tuple[int, int]:
    """Canonical order of spectral terms: replay sums them in this order, in any process."""
    return key[0], -1 if key[1] is None else key[1]


@dataclass(frozen=True, eq=False)
class NoiseTerm:
    """``scale[t] · N(0, 1)`` added to tensor ``t``, the noise drawn from ``seed`` and ``t``."""

    seed: int
    scale: torch.Tensor  # [T] fp32; 0 leaves a tensor untouched


@dataclass(frozen=True, eq=False)
class LowRankTerm:
    """``u diag(s) vᵀ`` added to 2-D tensor ``tensor``.

    ``key`` identifies the term's origin, so that copies reaching a child through both parents
    merge.
    """

    key: str
    tensor: int
    u: torch.Tensor  # [m, r]
    s: torch.Tensor  # [r]
    v: torch.Tensor  # [n, r]


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
        spectral = {
            key: {t: r * w[t] for t, r in coords.items() if w[t] != 0}
            for key, coords in self.spectral.items()
        }
        noise = tuple(NoiseTerm(n.seed, n.scale * w) for n in self.noise)
        lowrank = tuple(
            replace(lr, s=lr.s * w[lr.tensor]) for lr in self.lowrank if w[lr.tensor] != 0
        )
        return replace(self, spectral=spectral, noise=noise, lowrank=lowrank)

    def _add_terms(self, others: Sequence[Genome]) -> Genome:
        spectral = {key: dict(coords) for key, coords in self.spectral.items()}
        noise = {n.seed: n.scale for n in self.noise}
        lowrank = {lr.key: lr for lr in self.lowrank}
        for other in others:
            for key, coords in other.spectral.items():
                into = spectral.setdefault(key, {})
                for t, r in coords.items():
                    into[t] = into[t] + r if t in into else r.clone()
            for n in other.noise:
                noise[n.seed] = noise[n.seed] + n.scale if n.seed in noise else n.scale
            for lr in other.lowrank:
                lowrank[lr.key] = (
                    replace(lr, s=lowrank[lr.key].s + lr.s) if lr.key in lowrank else lr
                )
        return replace(
            self,
            spectral={
                key: dict(sorted(spectral[key].items()))
                for key in sorted(spectral, key=_spectral_order)
                if spectral[key]
            },
            noise=tuple(NoiseTerm(s, scale) for s, scale in sorted(noise.items())),
            lowrank=tuple(lowrank[k] for k in sorted(lowrank)),
        )

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
        header["spectral"] = [
            {"expert": k, "rank": rank, "tensor": t, "r": put(r)}
            for (k, rank), coords in sorted(
                self.spectral.items(), key=lambda kv: _spectral_order(kv[0])
            )
            for t, r in sorted(coords.items())
        ]
        header["noise"] = [{"seed": n.seed, "scale": put(n.scale)} for n in self.noise]
        header["lowrank"] = [
            {"key": lr.key, "tensor": lr.tensor, "u": put(lr.u), "s": put(lr.s), "v": put(lr.v)}
            for lr in self.lowrank
        ]
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
        header = {"root": self.id, "nodes": nodes}
        metadata = {
            "format": FORMAT,
            "space": self.space,
            "genome": json.dumps(header, sort_keys=True),
        }
        return st_save(tensors, metadata=metadata)

    @cached_property
    def id(self) -> str:
        """Content hash (provenance excluded): equal ids replay to identical weights.

        A Merkle hash: the genome's own fields (sorted JSON header, then each tensor's shape and
        bytes) and its merge parents' ids, so it does not depend on how the lineage is stored.
        """
        tensors: dict[str, torch.Tensor] = {}
        header = self._node(tensors, with_meta=False)
        h = hashlib.sha256(f"{FORMAT}|{self.space}|".encode())
        h.update(json.dumps(header, sort_keys=True).encode())
        for key in sorted(tensors, key=lambda k: int(k[1:])):
            h.update(f"|{key}{tuple(tensors[key].shape)}|".encode())
            h.update(tensors[key].numpy().tobytes())
        return h.hexdigest()[:20]

    @classmethod
    def from_bytes(cls, data: bytes) -> Genome:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CycleQDError: the bytes are not a cycleqd genome (or are truncated or corrupt).
        """
        try:
            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}")
            header = json.loads(metadata["genome"])
            nodes, built = header["nodes"], {}
            stack = [header["root"]]
            while stack:  # parents before children, iteratively
                gid = stack[-1]
                missing = [
                    p for p in nodes[gid].get("merge", {}).get("parents", []) if p not in built
                ]
                if missing:
                    stack.extend(missing)
                    continue
                stack.pop()
                if gid not in built:
                    built[gid] = cls._decode(nodes[gid], tensors, metadata["space"], built)
                    if built[gid].id != gid:
                        raise ValueError(f"node {gid} does not hash to its id (corrupt file)")
            return built[header["root"]]
        except Exception as exc:  # SafetensorError, truncated JSON, a missing key: all corrupt
            raise CycleQDError(
                f"not a cycleqd genome file ({type(exc).__name__}: {exc}); genomes are written "
                "by Genome.save / the run store"
            ) from exc

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
        spectral: dict[SpectralKey, dict[int, torch.Tensor]] = {}
        for s in h["spectral"]:
            spectral.setdefault((s["expert"], s["rank"]), {})[s["tensor"]] = tensors[s["r"]]
        return cls(
            space=space,
            num_tensors=h["T"],
            num_experts=h["K"],
            coefficients=tensors[h["coefficients"]] if "coefficients" in h else None,
            merge=merge,
            spectral=spectral,
            noise=tuple(NoiseTerm(n["seed"], tensors[n["scale"]]) for n in h["noise"]),
            lowrank=tuple(
                LowRankTerm(
                    lr["key"], lr["tensor"], tensors[lr["u"]], tensors[lr["s"]], tensors[lr["v"]]
                )
                for lr in h["lowrank"]
            ),
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
