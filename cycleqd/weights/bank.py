"""Banks: every floating tensor of one shape and dtype, stacked.

A :class:`cycleqd.weights.space.WeightSpace` holds its base and task vectors in banks, so that
materialising a child is one fused pass per bank (:mod:`cycleqd.weights.materialize`) rather than
one small call per tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["Bank"]


@dataclass
class Bank:
    """Every floating tensor of one shape and dtype, stacked.

    Attributes:
        shape: the shape of each tensor.
        dtype: the storage dtype.
        names: tensor names, in row order.
        rows: each row's index into :attr:`cycleqd.WeightSpace.tensor_names`.
        base: ``[n, numel]`` base weights.
        taus: ``[K, n, numel]`` task vectors.
        base_absmax: ``[n]`` fp32 largest ``|base|`` per row.
        tau_absmax: ``[K, n]`` fp32 largest ``|τ_k|`` per row (bounds a child's magnitude, so
            that most children need no NaN/Inf scan).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    names: list[str]
    rows: torch.Tensor
    base: torch.Tensor
    taus: torch.Tensor = field(repr=False)
    base_absmax: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    tau_absmax: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))

    @property
    def numel(self) -> int:
        """Elements per tensor."""
        return math.prod(self.shape)
