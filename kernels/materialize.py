"""Fused child materialisation: ``out = base + Σ_k c[:, k] · τ_k (+ extra)`` over a bank of tensors.

A *bank* stacks every tensor of one shape and dtype as the rows of a 2-D matrix, so one call covers
all same-shape tensors of a model. Coefficients are per row (per tensor): ``coef`` has shape
``[n, K]``. Accumulation is fp32 whatever the storage dtype; the result is rounded once, into
``out`` in place.

Two implementations share one signature:

* :func:`combine_reference` — plain eager torch, row by row; the test oracle, runs everywhere.
* :func:`combine_compiled` — the same arithmetic traced by ``torch.compile`` into one fused
  loop (one read of each input, one write, no temporaries); the CPU hot path.
* :func:`cycleqd.kernels.combine_triton` — a hand-written Triton kernel; the GPU hot path.

:func:`combine` picks the best one that works on the tensors' device.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

__all__ = ["combine", "combine_compiled", "combine_reference", "backend_for"]

_log = logging.getLogger(__name__)


def _check(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None,
) -> None:
    if base.dim() != 2 or out.shape != base.shape:
        raise ValueError(
            f"base and out must be equal [n, numel] banks, got {tuple(base.shape)} "
            f"and {tuple(out.shape)}"
        )
    if taus.dim() != 3 or taus.shape[1:] != base.shape:
        raise ValueError(
            f"taus must be [K, n, numel] = [K, {base.shape[0]}, {base.shape[1]}], "
            f"got {tuple(taus.shape)}"
        )
    if coef.shape != (base.shape[0], taus.shape[0]):
        raise ValueError(
            f"coef must be [n, K] = [{base.shape[0]}, {taus.shape[0]}], got {tuple(coef.shape)}"
        )
    if extra is not None and extra.shape != base.shape:
        raise ValueError(
            f"extra must match the bank shape {tuple(base.shape)}, got {tuple(extra.shape)}"
        )


def combine_reference(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-torch oracle of :func:`combine`.

    Args:
        base: ``[n, numel]`` base weights.
        taus: ``[K, n, numel]`` task vectors.
        coef: ``[n, K]`` fp32 coefficients.
        out: ``[n, numel]`` destination, written in place (may alias nothing else).
        extra: optional ``[n, numel]`` fp32 addend (mutation terms, merge deltas).

    Returns:
        ``out``.
    """
    _check(base, taus, coef, out, extra)
    coef = coef.to(device=base.device, dtype=torch.float32)
    for i in range(base.shape[0]):
        acc = base[i].float()
        for k in range(taus.shape[0]):
            acc = acc + coef[i, k] * taus[k, i].float()
        if extra is not None:
            acc = acc + extra[i]
        out[i].copy_(acc)
    return out


def _fused(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None,
) -> None:
    acc = base.float()
    for k in range(taus.shape[0]):
        acc = acc + coef[:, k : k + 1] * taus[k].float()
    if extra is not None:
        acc = acc + extra
    out.copy_(acc.to(out.dtype))


@functools.cache
def _compiled():
    import torch._dynamo

    # Compiled per bank shape (static shapes: a dynamic-shape kernel traced at a small size
    # runs at about half the bandwidth measured here), dtype, K and with/without ``extra``: a
    # model needs a dozen variants, more than dynamo's default limit of 8 per function.
    config = torch._dynamo.config
    for name, floor in (
        ("recompile_limit", 256),
        ("cache_size_limit", 256),
        ("accumulated_recompile_limit", 1024),
        ("accumulated_cache_size_limit", 1024),
    ):
        if hasattr(config, name):  # renamed across torch releases
            setattr(config, name, max(getattr(config, name), floor))
    return torch.compile(_fused, dynamic=False, fullgraph=True)


def combine_compiled(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.compile``d :func:`combine_reference`: one fused pass, no temporaries.

    One kernel per bank shape (compiled on first use, cached on disk by inductor across processes).
    """
    _check(base, taus, coef, out, extra)
    _compiled()(base, taus, coef.to(device=base.device, dtype=torch.float32), out, extra)
    return out


def _triton(*args: torch.Tensor | None) -> torch.Tensor:
    from cycleqd.kernels.gpu import combine_triton

    return combine_triton(*args)


_BACKENDS = {"reference": combine_reference, "compiled": combine_compiled, "triton": _triton}


def _agrees(name: str, device_type: str) -> bool:
    """Whether backend ``name`` runs on ``device_type`` and matches the reference on a probe."""
    try:
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(3, 37, generator=gen).to(device_type)
        taus = torch.randn(2, 3, 37, generator=gen).to(device_type)
        coef = torch.randn(3, 2, generator=gen).to(device_type)
        got, want = torch.empty_like(base), torch.empty_like(base)
        _BACKENDS[name](base, taus, coef, got, None)
        combine_reference(base, taus, coef, want)
        if torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            return True
        _log.warning("the %s combine disagrees with the reference on %s", name, device_type)
    except Exception as exc:  # no C++ compiler, no Triton, an unsupported device, ...
        _log.warning("the %s combine is unavailable on %s (%s)", name, device_type, exc)
    return False


@functools.cache
def backend_for(device_type: str) -> str:
    """Name of the fastest :func:`combine` backend that works on ``device_type``.

    GPUs: the Triton kernel, else the compiled one; CPUs: the compiled one; the reference where
    neither works. Each candidate is probed once per device type against the reference.
    ``CYCLEQD_KERNEL=reference|compiled|triton`` forces a backend.
    """
    forced = os.environ.get("CYCLEQD_KERNEL", "auto")
    if forced not in ("auto", *_BACKENDS):
        raise ValueError(f"CYCLEQD_KERNEL={forced!r}: use one of auto, {', '.join(_BACKENDS)}")
    if forced != "auto":
        return forced
    candidates = ["triton", "compiled"] if device_type == "cuda" else ["compiled"]
    for name in candidates:
        if _agrees(name, device_type):
            return name
    _log.warning("using the slower reference combine on %s", device_type)
    return "reference"


def combine(
    base: torch.Tensor,
    taus: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    extra: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``out = base + Σ_k coef[:, k] · taus[k] (+ extra)``, fp32 accumulate, in place.

    Args:
        base: ``[n, numel]`` base weights (any float dtype).
        taus: ``[K, n, numel]`` task vectors (any float dtype).
        coef: ``[n, K]`` coefficients.
        out: ``[n, numel]`` destination, rounded once to its dtype.
        extra: optional fp32 ``[n, numel]`` addend.
        backend: ``"reference"``, ``"compiled"`` or ``"triton"``; default: :func:`backend_for`
            the device.

    Returns:
        ``out``.
    """
    name = backend or backend_for(base.device.type)
    return _BACKENDS[name](base, taus, coef, out, extra)
