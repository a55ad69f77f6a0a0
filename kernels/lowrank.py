"""Batched low-rank kernels of SVD mutation, each with a per-matrix plain-torch reference.

* :func:`lowrank_add` — ``out[i] += U_i diag(c_i) V_iᵀ`` for every same-shape matrix at once: one
  batched GEMM over cached singular factors (``svd_expert`` mutation).
* :func:`truncated_svd` — a batched randomised truncated SVD (Halko, Martinsson & Tropp 2011,
  Alg. 4.4 with power iterations) of every same-shape matrix at once (``svd_child`` mutation).

The batched versions are what the engine runs, on CPU and GPU alike (the GEMMs and QRs go to the
device's BLAS); the references loop over matrices and serve as test oracles.
"""

from __future__ import annotations

import torch

__all__ = ["lowrank_add", "lowrank_add_reference", "truncated_svd", "truncated_svd_reference"]


def _check_lowrank(
    U: torch.Tensor, coords: torch.Tensor, V: torch.Tensor, out: torch.Tensor
) -> None:
    n, m, r = U.shape
    if coords.shape != (n, r) or V.dim() != 3 or V.shape[0] != n or V.shape[2] != r:
        raise ValueError(
            f"need U [n, m, r], coords [n, r], V [n, c, r]; got "
            f"{tuple(U.shape)}, {tuple(coords.shape)}, {tuple(V.shape)}"
        )
    if out.shape != (n, m * V.shape[1]):
        raise ValueError(
            f"out must be [n, m * c] = [{n}, {m * V.shape[1]}], got {tuple(out.shape)}"
        )


def lowrank_add_reference(
    U: torch.Tensor, coords: torch.Tensor, V: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Oracle of :func:`lowrank_add`: one matrix at a time, fp32."""
    _check_lowrank(U, coords, V, out)
    for i in range(U.shape[0]):
        product = U[i].float() @ torch.diag(coords[i].float()) @ V[i].float().T
        out[i] += product.reshape(-1).to(out.dtype)
    return out


def lowrank_add(
    U: torch.Tensor, coords: torch.Tensor, V: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``out[i] += (U_i diag(coords_i) V_iᵀ).flatten()`` for all ``i`` in one batched GEMM.

    Args:
        U: ``[n, m, r]`` left factors.
        coords: ``[n, r]`` coordinates along the singular directions.
        V: ``[n, c, r]`` right factors.
        out: ``[n, m * c]`` fp32 accumulator, updated in place.

    Factors in fp32 accumulate in fp32; bf16/fp16 factors (the large-model cache) multiply on the
    tensor cores and the product is added to ``out`` in fp32.
    """
    _check_lowrank(U, coords, V, out)
    n, m, _ = U.shape
    scaled = U * coords.to(U.dtype)[:, None, :]
    target = out.view(n, m, V.shape[1])
    if U.dtype == out.dtype:
        target.baddbmm_(scaled, V.transpose(1, 2))
    else:
        target.add_(torch.bmm(scaled, V.transpose(1, 2)))
    return out


def truncated_svd_reference(
    mats: torch.Tensor, rank: int, *, oversample: int = 8, niter: int = 2, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Oracle of :func:`truncated_svd`: ``torch.svd_lowrank`` one matrix at a time."""
    us, ss, vs = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mat in mats.float():
            r = min(rank, *mat.shape)
            U, S, V = torch.svd_lowrank(mat, q=min(r + oversample, *mat.shape), niter=niter)
            us.append(U[:, :r])
            ss.append(S[:r])
            vs.append(V[:, :r])
    return torch.stack(us), torch.stack(ss), torch.stack(vs)


def truncated_svd(
    mats: torch.Tensor, rank: int, *, oversample: int = 8, niter: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD ``(U [n, m, r], S [n, r], V [n, c, r])`` of every matrix of ``mats``.

    Randomised: a Gaussian sketch of ``rank + oversample`` columns (drawn on the CPU from
    ``seed``, so the result does not depend on the device's generator), ``niter`` power
    iterations with re-orthonormalisation, then an exact SVD of the small projected matrices —
    every step batched over the ``n`` matrices. When ``rank + oversample`` reaches the smaller
    dimension the SVD is exact.
    """
    n, m, c = mats.shape
    A = mats.float()
    r = min(rank, m, c)
    q = min(r + oversample, m, c)
    if q >= min(m, c):
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        return U[:, :, :r], S[:, :r], Vh[:, :r, :].transpose(1, 2)
    gen = torch.Generator().manual_seed(seed)
    sketch = torch.randn(n, c, q, generator=gen).to(A.device)
    Q = torch.linalg.qr(torch.bmm(A, sketch)).Q
    At = A.transpose(1, 2)
    for _ in range(niter):
        Q = torch.linalg.qr(torch.bmm(At, Q)).Q
        Q = torch.linalg.qr(torch.bmm(A, Q)).Q
    Ub, S, Vh = torch.linalg.svd(torch.bmm(Q.transpose(1, 2), A), full_matrices=False)
    return torch.bmm(Q, Ub)[:, :, :r], S[:, :r], Vh[:, :r, :].transpose(1, 2)
