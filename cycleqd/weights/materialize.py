"""Turning genomes into weights: the engine's hot path.

A :class:`Materializer` owns one preallocated state dict (its tensors are views into per-bank
output buffers, so a model loaded with ``load_state_dict(..., assign=True)`` is updated in place)
and writes a child into it bank by bank with :func:`cycleqd.kernels.combine`: one fused pass per
bank, fp32 accumulation, no per-tensor temporaries. Mutation terms and merge-node deltas are
accumulated first into one reusable fp32 workspace (the size of the largest bank that needs it)
and fused into the same pass.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict

import torch

from cycleqd.errors import CycleQDError, NonFiniteError
from cycleqd.kernels import backend_for, combine, lowrank_add
from cycleqd.weights._mergekit import mergekit_merge
from cycleqd.weights.bank import Bank
from cycleqd.weights.genome import WEIGHTED_SUM, Genome
from cycleqd.weights.space import WeightSpace

__all__ = ["Materializer", "tensor_seed"]


def _provably_finite(bank: Bank, coef: torch.Tensor, extra: torch.Tensor | None) -> bool:
    """Whether ``|base| + Σ|c_k||τ_k| + |extra|`` stays well inside the output dtype's range.

    Base and task vectors are finite (checked at load), so then no element can be NaN/Inf and
    the output needs no scan; otherwise the caller scans it.
    """
    bound = bank.base_absmax + (coef.abs() * bank.tau_absmax.T).sum(dim=1)
    if extra is not None:
        bound = bound + extra.abs().amax(dim=1).cpu()
    return (
        bool(torch.isfinite(bound).all()) and float(bound.max()) < 0.5 * torch.finfo(bank.dtype).max
    )


def tensor_seed(seed: int, tensor: int) -> int:
    """The generator seed for one tensor's random draws under a genome-level ``seed``.

    Used for a noise term's noise and a merge's drop masks; stable across processes and platforms.
    """
    digest = hashlib.blake2b(f"{seed}:{tensor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class Materializer:
    """Writes genomes' weights into a preallocated state dict.

    Args:
        space: the weight space genomes refer to.
        backend: :func:`cycleqd.kernels.combine` backend (``None``: the best for the device).
        check_finite: reject children with NaN/Inf (:class:`cycleqd.errors.NonFiniteError`).
        cache_size: how many merge-node parents to keep materialised for replay.
    """

    def __init__(
        self,
        space: WeightSpace,
        *,
        backend: str | None = None,
        check_finite: bool = True,
        cache_size: int = 4,
    ) -> None:
        self.space = space
        self.backend = backend or backend_for(space.device.type)
        self.check_finite = check_finite
        self.cache_size = cache_size
        self._outputs = [torch.empty_like(bank.base) for bank in space.banks]
        self.state_dict = self._views(self._outputs)
        self._workspace: torch.Tensor | None = None
        self._cache: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._fingerprint = space.fingerprint()

    def _views(self, outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        views: dict[str, torch.Tensor] = {}
        for name in self.space.tensor_names:
            bank, row = self.space.locate(name)
            views[name] = outputs[bank][row].view(self.space.shapes[name])
        views.update(self.space.buffers)
        order = {n: i for i, n in enumerate(self.space.tensor_names)}
        return dict(sorted(views.items(), key=lambda kv: order.get(kv[0], -1)))

    def materialize(self, genome: Genome) -> dict[str, torch.Tensor]:
        """Write ``genome``'s weights into :attr:`state_dict` in place and return it.

        Raises:
            CycleQDError: the genome belongs to another weight space.
            NonFiniteError: a tensor of the child holds NaN/Inf (named); the child is rejected.
        """
        self._write(genome, self._outputs)
        return self.state_dict

    def weights(self, genome: Genome) -> dict[str, torch.Tensor]:
        """A fresh copy of ``genome``'s weights (for export); :attr:`state_dict` is untouched."""
        return {k: v.clone() for k, v in self._views(self._materialized(genome)).items()}

    # --- internals ----------------------------------------------------------------------------

    def _extra(self, bank: Bank) -> torch.Tensor:
        size = bank.base.numel()
        if self._workspace is None or self._workspace.numel() < size:
            largest = max(b.base.numel() for b in self.space.banks)
            self._workspace = torch.empty(largest, dtype=torch.float32, device=self.space.device)
        return self._workspace[:size].view(bank.base.shape).zero_()

    def _touches(self, genome: Genome, bank: Bank) -> bool:
        rows = set(bank.rows.tolist())
        return (
            any(t in rows for coords in genome.spectral.values() for t in coords)
            or any(bool(n.scale[bank.rows].any()) for n in genome.noise)
            or any(lr.tensor in rows for lr in genome.lowrank)
        )

    def _write(self, genome: Genome, outputs: list[torch.Tensor]) -> None:
        """Write ``genome`` into ``outputs``, replaying its merge-node ancestors first.

        Each ancestor of the lineage is materialised once, in order, and freed as soon as every
        genome that merges it is done; recently used ones stay in a small LRU cache across calls.
        """
        space = self.space
        if (genome.space, genome.num_tensors, genome.num_experts) != (
            self._fingerprint,
            len(space.tensor_names),
            space.num_experts,
        ):
            raise CycleQDError(
                f"genome {genome.id} was made for weight space {genome.space}, not for this one "
                f"({self._fingerprint}): load the base and experts it was evolved with"
            )
        if genome.merge is None:
            self._write_node(genome, outputs, None)
            return
        order = list(genome.lineage().values())
        pending = Counter(p.id for g in order if g.merge is not None for p in g.merge.parents)
        memo: dict[str, list[torch.Tensor]] = {}
        for node in order[:-1]:
            if node.id in self._cache:
                self._cache.move_to_end(node.id)
                memo[node.id] = self._cache[node.id]
                continue
            node_out = [torch.empty_like(bank.base) for bank in space.banks]
            self._write_node(node, node_out, self._parents(node, memo, pending))
            memo[node.id] = node_out
            if node.merge is not None:
                self._remember(node.id, node_out)
        self._write_node(genome, outputs, self._parents(genome, memo, pending))

    @staticmethod
    def _parents(
        genome: Genome, memo: dict[str, list[torch.Tensor]], pending: Counter
    ) -> list[list[torch.Tensor]] | None:
        if genome.merge is None:
            return None
        parents = [memo[p.id] for p in genome.merge.parents]
        for p in genome.merge.parents:
            pending[p.id] -= 1
            if pending[p.id] == 0:
                memo.pop(p.id, None)  # the list above still holds it for this genome
        return parents

    def _remember(self, genome_id: str, outputs: list[torch.Tensor]) -> None:
        self._cache[genome_id] = outputs
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _write_node(
        self, genome: Genome, outputs: list[torch.Tensor], parents: list[list[torch.Tensor]] | None
    ) -> None:
        space = self.space
        zeros = torch.zeros(1, space.num_experts)
        for b, bank in enumerate(space.banks):
            extra = None
            if parents is not None or self._touches(genome, bank):
                extra = self._extra(bank)
                if parents is not None:
                    self._merge_delta(genome, b, bank, parents, extra)
                self._add_terms(genome, bank, extra)
            if genome.coefficients is not None:
                coef = genome.coefficients[bank.rows]
            else:
                coef = zeros.expand(len(bank.names), -1)
            combine(
                bank.base, bank.taus, coef.to(space.device), outputs[b], extra, backend=self.backend
            )
            if (
                self.check_finite
                and not _provably_finite(bank, coef, extra)
                and not bool(torch.isfinite(outputs[b]).all())
            ):
                bad_rows = (~torch.isfinite(outputs[b])).any(dim=1).nonzero()
                name = bank.names[int(bad_rows[0])]
                raise NonFiniteError(
                    f"child genome {genome.id} materialised NaN/Inf in tensor {name!r}; the child "
                    "is rejected (its crossover weights or mutation scale are likely too large)"
                )

    def _materialized(self, genome: Genome) -> list[torch.Tensor]:
        """Fresh output banks holding ``genome``."""
        if genome.id in self._cache:
            self._cache.move_to_end(genome.id)
            return self._cache[genome.id]
        outputs = [torch.empty_like(bank.base) for bank in self.space.banks]
        self._write(genome, outputs)
        return outputs

    def _merge_delta(
        self,
        genome: Genome,
        b: int,
        bank: Bank,
        parents: list[list[torch.Tensor]],
        extra: torch.Tensor,
    ) -> None:
        node = genome.merge
        assert node is not None
        base = bank.base.float()
        if node.method == WEIGHTED_SUM:
            for i, parent in enumerate(parents):
                w = node.weights[i, bank.rows].to(extra.device)[:, None]
                extra.add_(w * (parent[b].float() - base))
            return
        for row, name in enumerate(bank.names):
            t = int(bank.rows[row])
            inputs = [base[row].view(bank.shape)] + [
                parent[b][row].float().view(bank.shape) for parent in parents
            ]
            merged = mergekit_merge(
                node.method,
                inputs[0],
                inputs[1:],
                parameters=node.parameters,
                weights=None if node.weights is None else node.weights[:, t].tolist(),
                seed=tensor_seed(node.seed, t),
                name=name,
            )
            extra[row].add_(merged.reshape(-1) - base[row])

    def _add_terms(self, genome: Genome, bank: Bank, extra: torch.Tensor) -> None:
        space = self.space
        position = {int(t): r for r, t in enumerate(bank.rows.tolist())}
        for (k, rank), coords in genome.spectral.items():
            rows = [(position[t], t) for t in sorted(coords) if t in position]
            if not rows:
                continue
            names = [space.tensor_names[t] for _, t in rows]
            factors = space.svd_factors(k, names, rank=rank)
            U = torch.stack([factors[n][0] for n in names])
            S = torch.stack([factors[n][1] for n in names])
            V = torch.stack([factors[n][2] for n in names])
            r = torch.stack([coords[t] for _, t in rows]).to(S.device)
            positions = [p for p, _ in rows]
            if positions == list(range(len(bank.names))):
                lowrank_add(U, r * S, V, extra)
            else:
                part = torch.zeros(len(rows), extra.shape[1], device=extra.device)
                lowrank_add(U, r * S, V, part)
                extra.index_add_(0, torch.tensor(positions, device=extra.device), part)
        for term in genome.noise:
            for row, t in enumerate(bank.rows.tolist()):
                scale = float(term.scale[t])
                if scale != 0.0:
                    gen = torch.Generator().manual_seed(tensor_seed(term.seed, t))
                    draw = torch.randn(bank.numel, generator=gen)
                    extra[row].add_(draw.to(extra.device), alpha=scale)
        for term in genome.lowrank:
            if term.tensor in position:
                row = position[term.tensor]
                u, s, v = (x.to(extra.device) for x in (term.u, term.s, term.v))
                extra[row].view(bank.shape).addmm_(u * s, v.T)
