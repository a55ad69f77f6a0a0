"""The engine's hot path: fused child materialisation, with a plain-torch reference per kernel.

Public names:
    combine: ``out = base + Σ_k c_k τ_k (+ extra)`` over a bank of same-shape tensors, in place.
    combine_reference: the eager oracle of :func:`combine`.
    combine_compiled: the ``torch.compile``d CPU path of :func:`combine`.
    combine_triton: the Triton (GPU) kernel of :func:`combine`.
    backend_for: which backend :func:`combine` uses on a device type.
    lowrank_add, lowrank_add_reference: ``out += U diag(c) Vᵀ`` over a batch of matrices.
    truncated_svd, truncated_svd_reference: batched randomised truncated SVD.
    triton_available: whether Triton can be imported.
"""

from cycleqd.kernels.gpu import combine_triton, triton_available
from cycleqd.kernels.lowrank import (
    lowrank_add,
    lowrank_add_reference,
    truncated_svd,
    truncated_svd_reference,
)
from cycleqd.kernels.materialize import backend_for, combine, combine_compiled, combine_reference

__all__ = [
    "backend_for",
    "combine",
    "combine_compiled",
    "combine_reference",
    "combine_triton",
    "lowrank_add",
    "lowrank_add_reference",
    "triton_available",
    "truncated_svd",
    "truncated_svd_reference",
]
