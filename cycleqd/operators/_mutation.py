"""Mutation: perturbing a child genome along singular directions, or with noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from cycleqd.errors import CycleQDError
from cycleqd.kernels import truncated_svd
from cycleqd.registry import Registry
from cycleqd.weights.genome import Genome, LowRankTerm, NoiseTerm
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import DEFAULT_SVD_EXCLUDE, WeightSpace
from cycleqd.weights.terms import fold_lowrank

__all__ = [
    "MUTATIONS",
    "GaussianMutation",
    "MutationContext",
    "NoMutation",
    "SvdChild",
    "SvdExpert",
    "svd_child_error_bound",
]

#: Mutation operators by name; plug-ins extend it through the ``cycleqd.mutation`` group.
MUTATIONS: Registry = Registry(kind="mutation", entry_point_group="cycleqd.mutation")


@dataclass
class MutationContext:
    """What a mutation may use besides the genome.

    Attributes:
        space: the weight space (SVD factors of the experts' task vectors).
        materializer: turns the child into weights (``svd_child`` needs them).
        active_task: index of the task whose archive is active this generation.
        rng: the run's random generator.
    """

    space: WeightSpace
    materializer: Materializer
    active_task: int
    rng: np.random.Generator


def _check_rate(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise CycleQDError(f"{name} must be a finite number >= 0, got {value}")


@MUTATIONS.register("svd_expert")
class SvdExpert:
    """The reference code's SVD mutation: add ``U_k diag(r ⊙ S_k) V_kᵀ``, ``r ~ U[0, 1) · rate``.

    ``U_k S_k V_kᵀ`` is the SVD of the active task's expert task vector, per target matrix,
    computed once per run and cached (on disk with a cache directory). The drawn ``r`` are stored
    in the genome, so replay does not depend on a random generator.

    Args:
        rate: scale of ``r`` (reference: 0.1).
        rank: keep only the top ``rank`` singular directions (``None``: all).
        include: regex of the matrices to mutate (default: every 2-D tensor).
        exclude: regex of matrices left alone (default: embeddings and output heads; the
            reference code mutates those too, and ``None`` follows it: ``DEFAULT_SVD_EXCLUDE``).
    """

    def __init__(
        self,
        *,
        rate: float = 0.1,
        rank: int | None = None,
        include: str | None = None,
        exclude: str | None = DEFAULT_SVD_EXCLUDE,
    ) -> None:
        _check_rate("svd_expert rate", rate)
        if rank is not None and rank < 1:
            raise CycleQDError(f"svd_expert rank must be >= 1 (or null for full rank), got {rank}")
        self.rate, self.rank, self.include, self.exclude = rate, rank, include, exclude

    def __call__(self, genome: Genome, ctx: MutationContext) -> Genome:
        """``genome`` plus a spectral term along the active expert's singular directions."""
        space, k = ctx.space, ctx.active_task
        names = space.svd_targets(self.include, self.exclude)
        # a coordinate per kept singular direction: min(m, n), or the rank. The factors
        # themselves are needed only where the child is materialised (an evaluator), so the
        # process that makes children never computes an SVD (hours on a CPU for an 8B model)
        coords = {
            space.index(n): torch.from_numpy(
                ctx.rng.random(_kept(space.shapes[n], self.rank)) * self.rate
            ).float()
            for n in names
        }
        return genome.with_terms(
            spectral={(k, self.rank): coords},
            mutation={"op": "svd_expert", "expert": k, "rate": self.rate},
        )


def _kept(shape: tuple[int, ...], rank: int | None) -> int:
    """Singular directions an SVD of a ``shape`` matrix keeps at ``rank`` (``None``: all)."""
    full = min(shape)
    return full if rank is None else min(rank, full)


def svd_child_error_bound(tail: float, rank: int, oversample: int) -> float:
    """Bound on ``svd_child``'s relative reconstruction error.

    For the randomised range finder with ``p = oversample`` extra samples, Halko, Martinsson and
    Tropp (2011, Thm. 10.5) bound the expected Frobenius error by ``sqrt(1 + r / (p − 1))`` times
    the optimal rank-``r`` error ``tail = (Σ_{j>r} σ_j²)^{1/2} / ||τ||_F``; power iterations only
    tighten it. With ``rank >= min(m, n)`` the SVD is exact and the bound is rounding error.
    """
    return math.sqrt(1 + rank / max(oversample - 1, 1)) * tail + 1e-5


@MUTATIONS.register("svd_child")
class SvdChild:
    """The paper's SVD mutation: rescale the child's own spectrum, ``U S Vᵀ → U (S ⊙ w) Vᵀ``.

    The child's task vector of each target matrix is factored by a truncated randomised SVD
    (:func:`cycleqd.kernels.truncated_svd`, batched over same-shape matrices) of rank ``rank``;
    its top singular values are rescaled by ``w ~ U[1 − scale, 1 + scale)``; the change
    ``U diag(S ⊙ (w − 1)) Vᵀ`` is stored in the genome as a low-rank term. The spectrum beyond
    ``rank`` is kept as it is (not rescaled); the share of the task vector it holds — the
    relative reconstruction error of the truncated SVD — is recorded in the genome's provenance
    (``svd_child_error``) and obeys :func:`svd_child_error_bound`.
    The child is materialised into ``ctx.materializer``'s state dict to be factored. The new
    terms and those the child inherited are then folded into one term per matrix
    (:func:`cycleqd.weights.terms.fold_lowrank`, exact up to float32 rounding), so a genome's
    replay cost does not grow with its lineage.

    Args:
        rank: singular directions rescaled per matrix.
        scale: half-width of the rescaling factors' range.
        oversample: extra random samples of the randomised SVD.
        niter: its power iterations.
        include: regex of the matrices to mutate (default: every 2-D tensor).
        exclude: regex of matrices left alone (default: embeddings and output heads).
    """

    def __init__(
        self,
        *,
        rank: int = 16,
        scale: float = 0.1,
        oversample: int = 8,
        niter: int = 2,
        include: str | None = None,
        exclude: str | None = DEFAULT_SVD_EXCLUDE,
    ) -> None:
        _check_rate("svd_child scale", scale)
        if rank < 1 or oversample < 0 or niter < 0:
            raise CycleQDError("svd_child needs rank >= 1, oversample >= 0, niter >= 0")
        self.rank, self.scale, self.oversample, self.niter = rank, scale, oversample, niter
        self.include, self.exclude = include, exclude

    def factor(self, mats: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
        """Truncated SVD of a batch of same-shape matrices, and its reconstruction error.

        Args:
            mats: ``[n, m, c]`` task-vector matrices.
            seed: seeds the randomised SVD's sketch.

        Returns:
            ``U [n, m, r]``, ``S [n, r]``, ``V [n, c, r]`` (fp32) and the relative Frobenius
            error ``||τ − U S Vᵀ|| / ||τ||`` of each matrix, ``[n]``.
        """
        mats = mats.float()
        U, S, V = truncated_svd(
            mats, self.rank, oversample=self.oversample, niter=self.niter, seed=seed
        )
        residual = mats - torch.bmm(U * S[:, None, :], V.transpose(1, 2))
        norms = torch.linalg.norm(mats.flatten(1), dim=1)
        errors = torch.linalg.norm(residual.flatten(1), dim=1) / norms.clamp_min(1e-30)
        return U, S, V, torch.where(norms > 0, errors, torch.zeros_like(errors))

    def __call__(self, genome: Genome, ctx: MutationContext) -> Genome:
        """``genome`` plus low-rank terms rescaling its own top singular values.

        Matrices of one shape are factored together (one batched randomised SVD per bank).
        """
        space = ctx.space
        weights = ctx.materializer.materialize(genome)
        terms, errors = [], []
        seed = int(ctx.rng.integers(2**62))  # keys low-rank terms: collisions must not happen
        targets = set(space.svd_targets(self.include, self.exclude))
        for b, bank in enumerate(space.banks):
            names = [n for n in bank.names if n in targets]
            if not names:
                continue
            mats = torch.stack([weights[n].float() - space.base_tensor(n).float() for n in names])
            U, S, V, error = self.factor(mats, seed + b)
            errors.extend(error.tolist())
            for i, name in enumerate(names):
                t = space.index(name)
                w = torch.from_numpy(ctx.rng.uniform(1 - self.scale, 1 + self.scale, S.shape[1]))
                change = S[i] * (w.float().to(S.device) - 1)
                terms.append(
                    LowRankTerm(
                        f"{seed}:{t}",
                        t,
                        U[i].cpu().contiguous(),
                        change.cpu(),
                        V[i].cpu().contiguous(),
                    )
                )
        child = genome.with_terms(
            lowrank=terms,
            mutation={
                "op": "svd_child",
                "rank": self.rank,
                "scale": self.scale,
                "seed": seed,
                "svd_child_error": max(errors, default=0.0),
            },
        )
        return replace(child, lowrank=fold_lowrank(child.lowrank, str(seed)))


#: The first seed of the gaussian mutation's fixed noise basis.
NOISE_BASIS_SEED = 0x5EED_0000


@MUTATIONS.register("gaussian")
class GaussianMutation:
    """Gaussian noise ``N(0, std²)`` on every floating tensor (the ablation baseline).

    With ``basis = M > 0`` the noise of tensor ``t`` is ``Σ_i c_i z_i`` over M fixed
    standard-normal draws ``z_i`` (seeds ``NOISE_BASIS_SEED + i``, the same for every genome)
    with fresh coefficients ``c_i ~ N(0, std² / M)`` per tensor: each element is ``N(0, std²)``
    as before, and since terms of one seed add up, a genome holds at most M noise terms however
    many mutations its lineage had, so its replay costs at most M draws. Each mutation moves
    within the basis's M-dimensional subspace of each tensor. ``basis = 0``: a fresh seed per
    mutation (the default: isotropic; a lineage of n mutations replays n draws).

    Args:
        std: the noise's standard deviation, in weight units.
        basis: size of the fixed noise basis (0, the default: a fresh seed per mutation; 8
            keeps a lineage's replay to 8 draws).
    """

    def __init__(self, *, std: float = 0.01, basis: int = 0) -> None:
        _check_rate("gaussian std", std)
        if basis < 0:
            raise CycleQDError(f"gaussian basis must be >= 0, got {basis}")
        self.std, self.basis = std, basis

    def __call__(self, genome: Genome, ctx: MutationContext) -> Genome:
        """``genome`` plus seeded noise terms."""
        if self.basis == 0:
            seed = int(ctx.rng.integers(2**62))
            scale = torch.full((genome.num_tensors,), float(self.std))
            return genome.with_terms(
                noise=[NoiseTerm(seed, scale)],
                mutation={"op": "gaussian", "std": self.std, "seed": seed},
            )
        coefficients = ctx.rng.standard_normal((self.basis, genome.num_tensors))
        scales = torch.from_numpy(coefficients * (self.std / math.sqrt(self.basis))).float()
        return genome.with_terms(
            noise=[NoiseTerm(NOISE_BASIS_SEED + i, scales[i]) for i in range(self.basis)],
            mutation={"op": "gaussian", "std": self.std, "basis": self.basis},
        )


@MUTATIONS.register("none")
class NoMutation:
    """No mutation."""

    def __call__(self, genome: Genome, ctx: MutationContext) -> Genome:
        """``genome`` unchanged."""
        return genome
