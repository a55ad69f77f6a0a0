"""Triton kernel of the fused child materialisation, for GPUs.

``out = base + Σ_k coef[:, k] · τ_k (+ extra)`` over a bank ``[n, numel]``: one program per
``BLOCK`` elements of one row, one read of every input and one write, fp32 accumulation, the
output rounded once to its dtype. The grid is one-dimensional (row-major over rows and blocks), so
banks of any size fit the launch limits. Its oracle is :func:`cycleqd.kernels.combine_reference`.

On a machine without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the tests check it on CPU.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

__all__ = ["BLOCK", "combine_triton", "triton_available"]

#: Elements per program: large blocks keep enough bytes in flight per SM to stream at HBM rate.
BLOCK = 4096


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernel() -> Any:
    # defined on first use: triton reads TRITON_INTERPRET when a kernel is decorated
    import triton
    import triton.language as tl

    @triton.jit
    def combine_kernel(
        base_ptr,
        taus_ptr,
        coef_ptr,
        extra_ptr,
        out_ptr,
        n_rows,
        numel,
        blocks_per_row,
        K: tl.constexpr,
        HAS_EXTRA: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        row = pid // blocks_per_row
        offs = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        start = row * numel
        acc = tl.load(base_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        for k in tl.static_range(K):
            c = tl.load(coef_ptr + row * K + k)
            tau = tl.load(taus_ptr + (k * n_rows + row) * numel + offs, mask=mask, other=0.0)
            acc += c * tau.to(tl.float32)
        if HAS_EXTRA:
            acc += tl.load(extra_ptr + start + offs, mask=mask, other=0.0)
        tl.store(out_ptr + start + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    return combine_kernel


def combine_triton(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None = None,
    *,
    block: int = BLOCK,
) -> torch.Tensor:
    """The Triton kernel of :func:`cycleqd.kernels.combine` (same arguments)."""
    from cycleqd.kernels.materialize import _check

    _check(base, taus, coef, out, extra)
    for name, t in (("base", base), ("taus", taus), ("out", out), ("extra", extra)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"combine_triton needs contiguous tensors; {name} is not")
    n, numel = base.shape
    K = taus.shape[0]
    coef = coef.to(device=base.device, dtype=torch.float32).contiguous()
    blocks = -(-numel // block)
    _kernel()[(n * blocks,)](
        base,
        taus,
        coef,
        extra if extra is not None else base,
        out,
        n,
        numel,
        blocks,
        K=K,
        HAS_EXTRA=extra is not None,
        BLOCK=block,
        num_warps=8,
    )
    return out
