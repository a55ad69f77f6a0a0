"""The bridge to mergekit's in-memory merge API (``mergekit.merge_methods.api``).

mergekit is imported only when one of its methods is used: the import costs seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cycleqd.errors import CycleQDError

__all__ = ["merge_plan", "mergekit_merge", "mergekit_method", "mergekit_method_names"]


@functools.cache
def mergekit_method_names() -> tuple[str, ...]:
    """Names of the merge methods mergekit registers (imports mergekit: seconds, once)."""
    from mergekit.merge_methods.registry import registered_methods

    return tuple(m.spec.name for m in registered_methods())


def mergekit_method(name: str) -> Any:
    from mergekit.merge_methods.registry import get

    return get(name)


def merge_plan(method: Any, n_parents: int) -> tuple[bool, list[str], int | None]:
    """How ``n_parents`` parents enter a mergekit method.

    Returns ``(with_base, ids, base_index)``: the base model goes in as mergekit's base input
    when the method accepts one beside the parents; a method that needs a base but takes only
    two inputs (slerp, nearswap, arcee_fusion) interpolates between the parents, the first
    acting as its base.

    Raises:
        CycleQDError: the method cannot merge ``n_parents`` parents.
    """
    contract = method.spec.contract
    policy = contract.base.value
    parents = [f"p{i}" for i in range(n_parents)]
    room = contract.max_inputs is None or contract.max_inputs >= n_parents + 1
    if policy in ("required", "optional") and room:
        with_base, ids, base_index = True, ["base", *parents], 0
    elif policy == "required":
        with_base, ids, base_index = False, parents, 0
    else:
        with_base, ids, base_index = False, parents, None
    try:
        contract.validate_ids(ids, None if base_index is None else ids[base_index])
    except ValueError as exc:
        raise CycleQDError(
            f"mergekit method {method.spec.name!r} cannot merge {n_parents} parents: {exc}"
        ) from exc
    return with_base, ids, base_index


def mergekit_merge(
    method_name: str,
    base: torch.Tensor,
    parents: Sequence[torch.Tensor],
    *,
    parameters: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    name: str | None = None,
) -> torch.Tensor:
    """Merge one tensor with mergekit's ``merge_tensors``, deterministically.

    Inputs are arranged by :func:`merge_plan`; ``weights`` become the
    per-parent ``weight`` parameter; the method's randomness (dare's drop masks) is drawn from a
    generator seeded with ``seed``, leaving the global RNG state untouched.

    Returns:
        The merged tensor in fp32.
    """
    from mergekit.merge_methods.api import merge_tensors

    method = mergekit_method(method_name)
    with_base, ids, base_index = merge_plan(method, len(parents))
    tensors = [base, *parents] if with_base else list(parents)
    params = dict(parameters or {})
    if weights is not None and "weight" in {p.name for p in method.spec.parameters}:
        params["weight"] = {f"p{i}": float(w) for i, w in enumerate(weights)}
    devices = [base.device] if base.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return merge_tensors(
            tensors,
            method,
            parameters=params,
            ids=ids,
            base_index=base_index,
            name=name,
            dtype=torch.float32,
            out_dtype=torch.float32,
        )
