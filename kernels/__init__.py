"""The engine's hot path: fused child materialisation, with a plain-torch reference per kernel.

Public names:
    combine: ``out = base + Σ_k c_k τ_k (+ extra)`` over a bank of same-shape tensors, in place.
    combine_reference: the eager oracle of :func:`combine`.
    combine_compiled: the ``torch.compile``d CPU path of :func:`combine`.
    backend_for: which backend :func:`combine` uses on a device type.
"""

from cycleqd.kernels.materialize import backend_for, combine, combine_compiled, combine_reference

__all__ = ["backend_for", "combine", "combine_compiled", "combine_reference"]
