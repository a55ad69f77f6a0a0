"""What a child costs in seconds, estimated from the device's bandwidth and peak FLOP/s.

Cost per child: materialisation streams ``K + 2`` copies of the weights; SVD mutation is one
GEMM per target matrix; decoding is bound by memory bandwidth (each step reads the weights and the
KV cache once per batch); prefill by compute at half the device's peak; SVD mutation's GEMMs
at the float32 peak. These are estimates for capacity planning, not measurements.
"""

from __future__ import annotations

import math
from typing import Any

from cycleqd.planning.architecture import Architecture, _rank
from cycleqd.planning.devices import Device
from cycleqd.planning.workload import Workload


def _child_seconds(
    arch: Architecture,
    k: int,
    b: int,
    spec: Device,
    mutation: Any,
    targets: list[tuple[int, int]],
    generating: list[Workload],
) -> dict[str, float]:
    """The estimated seconds of one child: materialise, mutation, each task's generation."""
    p = arch.parameters
    seconds = {"materialise": (k + 2) * p * b / spec.bandwidth}
    if mutation.name in ("svd_expert", "svd_child"):
        rank = mutation.params.get("rank") or (16 if mutation.name == "svd_child" else None)
        flops = sum(2 * m * n * _rank(m, n, rank) for m, n in targets)
        if mutation.name == "svd_child":
            flops *= 3  # sketch, power iteration and reconstruction
        seconds["mutation"] = flops / (spec.flops32 or spec.flops)  # float32 factors
    for w in generating:
        batches = math.ceil(w.problems / w.batch) * w.turns
        kv_read = w.batch * w.sequence * arch.layers * 2 * arch.kv_heads * arch.head_dim * b / 2
        decode = batches * w.new_tokens * (p * b + kv_read) / spec.bandwidth
        context = (w.prompt_tokens + w.sequence) / 2  # a turn's prompt, on average
        prefill = 2 * p * w.sequences * context / (0.5 * spec.flops)
        seconds[f"generate {w.task}"] = decode + prefill
    return seconds
