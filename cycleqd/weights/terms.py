"""Mutation terms: the exactly reproducible deltas a genome adds to its linear form or merge node.

* spectral (``svd_expert``): ``U_k diag(r ⊙ S_k) V_kᵀ`` along the cached SVD of ``τ_k[t]``,
  stored as the coordinates ``r`` per :data:`SpectralKey` and tensor;
* noise (``gaussian``): a :class:`NoiseTerm`, ``scale[t] · N(0, 1)`` drawn from a seed;
* low-rank (``svd_child``): a :class:`LowRankTerm`, a stored ``u diag(s) vᵀ`` delta.

Every term is linear, so a genome's terms scale per tensor (:func:`scale_terms`) and sum with
another genome's (:func:`sum_terms`) without growing. :func:`encode_terms` and
:func:`decode_terms` turn them into a genome file's JSON header entries and tensors and back
(the file itself: :mod:`cycleqd.weights.genome`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

__all__ = [
    "LowRankTerm",
    "NoiseTerm",
    "SpectralKey",
    "decode_terms",
    "encode_terms",
    "fold_lowrank",
    "scale_terms",
    "sum_terms",
]

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


class _HasTerms(Protocol):
    """What holds the three kinds of term: a :class:`cycleqd.Genome`."""

    @property
    def spectral(self) -> Mapping[SpectralKey, Mapping[int, torch.Tensor]]: ...

    @property
    def noise(self) -> tuple[NoiseTerm, ...]: ...

    @property
    def lowrank(self) -> tuple[LowRankTerm, ...]: ...


def scale_terms(g: _HasTerms, w: torch.Tensor) -> dict[str, Any]:
    """``g``'s terms scaled per tensor by ``w`` (``[T]``), as ``spectral``/``noise``/``lowrank``.

    Terms of tensors whose weight is 0 are dropped (noise scales keep their zeros).
    """
    spectral = {
        key: {t: r * w[t] for t, r in coords.items() if w[t] != 0}
        for key, coords in g.spectral.items()
    }
    noise = tuple(NoiseTerm(n.seed, n.scale * w) for n in g.noise)
    lowrank = tuple(replace(lr, s=lr.s * w[lr.tensor]) for lr in g.lowrank if w[lr.tensor] != 0)
    return {"spectral": spectral, "noise": noise, "lowrank": lowrank}


def sum_terms(first: _HasTerms, others: Sequence[_HasTerms]) -> dict[str, Any]:
    """The terms of ``first`` plus those of ``others``, as ``spectral``/``noise``/``lowrank``.

    Terms of one kind and key add up (spectral coordinates per tensor, noise scales per seed,
    low-rank ``s`` per key) and come out in a canonical order, so equal sums hash equally.
    """
    spectral = {key: dict(coords) for key, coords in first.spectral.items()}
    noise = {n.seed: n.scale for n in first.noise}
    lowrank = {lr.key: lr for lr in first.lowrank}
    for other in others:
        for key, coords in other.spectral.items():
            into = spectral.setdefault(key, {})
            for t, r in coords.items():
                into[t] = into[t] + r if t in into else r.clone()
        for n in other.noise:
            noise[n.seed] = noise[n.seed] + n.scale if n.seed in noise else n.scale
        for lr in other.lowrank:
            lowrank[lr.key] = replace(lr, s=lowrank[lr.key].s + lr.s) if lr.key in lowrank else lr
    return {
        "spectral": {
            key: dict(sorted(spectral[key].items()))
            for key in sorted(spectral, key=_spectral_order)
            if spectral[key]
        },
        "noise": tuple(NoiseTerm(s, scale) for s, scale in sorted(noise.items())),
        "lowrank": tuple(lowrank[k] for k in sorted(lowrank)),
    }


def fold_lowrank(terms: Sequence[LowRankTerm], key: str) -> tuple[LowRankTerm, ...]:
    """``terms`` summed into one term per tensor, keyed ``{key}:{tensor}``.

    The sum ``Σ u_i diag(s_i) v_iᵀ`` of a tensor's terms is refactored exactly (up to float32
    rounding): QR of the stacked ``u`` and ``v``, then the SVD of the small core; directions whose
    singular value is zero to working precision are dropped. A lineage's terms therefore never
    outnumber its tensors and their rank never exceeds a matrix's smaller side, so replaying a
    genome costs the same however deep its lineage.
    """
    by_tensor: dict[int, list[LowRankTerm]] = {}
    for term in terms:
        by_tensor.setdefault(term.tensor, []).append(term)
    out = []
    for t in sorted(by_tensor):
        group = by_tensor[t]
        u = torch.cat([x.u.double() for x in group], dim=1)
        v = torch.cat([x.v.double() for x in group], dim=1)
        s = torch.cat([x.s.double() for x in group])
        qu, ru = torch.linalg.qr(u)
        qv, rv = torch.linalg.qr(v)
        a, sigma, bt = torch.linalg.svd((ru * s) @ rv.T)
        # zero to working precision against the terms' own size (terms that cancel leave none)
        size = sum(float((x.s.abs() * x.u.norm(dim=0) * x.v.norm(dim=0)).sum()) for x in group)
        keep = int((sigma > size * 1e-7).sum())
        if keep == 0:
            continue
        out.append(
            LowRankTerm(
                f"{key}:{t}",
                t,
                (qu @ a[:, :keep]).float().contiguous(),
                sigma[:keep].float(),
                (qv @ bt[:keep].T).float().contiguous(),
            )
        )
    return tuple(out)


def encode_terms(g: _HasTerms, put: Callable[[torch.Tensor], str]) -> dict[str, Any]:
    """``g``'s terms as JSON header entries; ``put`` stores a tensor and returns its key.

    Tensors are put in a fixed order (spectral, noise, low-rank), which the file and the id of a
    genome depend on.
    """
    return {
        "spectral": [
            {"expert": k, "rank": rank, "tensor": t, "r": put(r)}
            for (k, rank), coords in sorted(
                g.spectral.items(), key=lambda kv: _spectral_order(kv[0])
            )
            for t, r in sorted(coords.items())
        ],
        "noise": [{"seed": n.seed, "scale": put(n.scale)} for n in g.noise],
        "lowrank": [
            {"key": lr.key, "tensor": lr.tensor, "u": put(lr.u), "s": put(lr.s), "v": put(lr.v)}
            for lr in g.lowrank
        ],
    }


def decode_terms(h: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`encode_terms`: ``spectral``/``noise``/``lowrank`` from header ``h``."""
    spectral: dict[SpectralKey, dict[int, torch.Tensor]] = {}
    for s in h["spectral"]:
        spectral.setdefault((s["expert"], s["rank"]), {})[s["tensor"]] = tensors[s["r"]]
    return {
        "spectral": spectral,
        "noise": tuple(NoiseTerm(n["seed"], tensors[n["scale"]]) for n in h["noise"]),
        "lowrank": tuple(
            LowRankTerm(
                lr["key"], lr["tensor"], tensors[lr["u"]], tensors[lr["s"]], tensors[lr["v"]]
            )
            for lr in h["lowrank"]
        ),
    }
