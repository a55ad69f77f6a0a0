"""What a worker of a run holds in memory, from the models' shapes and the tasks' workloads.

Memory per worker:

* base: ``P`` parameters in the storage dtype;
* task vectors: ``K × P``;
* resident model: ``P`` (the child the evaluator materialises and scores);
* SVD cache (``svd_expert`` mutation): per expert and target matrix ``m × n`` at rank ``r``,
  ``U [m, r]``, ``S [r]``, ``V [n, r]`` in float32;
* generation: the KV cache ``batch × sequence × layers × 2 × kv_heads × head_dim`` and the
  prefill's activations ``batch × sequence × (4 hidden + 2 intermediate)`` plus the last
  position's float32 logits, for the most demanding task; with the vLLM backend, the engine's
  share of the device (``gpu_memory_utilization``) instead;
* the materialiser's float32 workspace, the size of the largest bank of same-shape tensors
  (any mutation that adds terms);
* while a worker materialises an ``svd_expert`` child, transiently: at its first child the SVD of
  a chunk of same-shape target matrices (:data:`cycleqd.weights.space.SVD_CHUNK` of them,
  gathered, in float32, and their ``U`` and ``V``); at every child the stacked factors of a
  bank's spectral terms. The worker's peak is the larger of that moment and generation;
* overhead: 2 GiB (CUDA context, allocator) plus 5 % of the peak.
"""

from __future__ import annotations

import math
from typing import Any

from cycleqd.planning.architecture import Architecture, _rank
from cycleqd.planning.devices import Device
from cycleqd.planning.workload import Workload
from cycleqd.weights.space import SVD_CHUNK


def _weights_memory(
    arch: Architecture, k: int, b: int, mutation: Any, targets: list[tuple[int, int]]
) -> tuple[dict[str, float], dict[str, float]]:
    """A worker's weights, and the transients of materialising a child.

    The weights: base, task vectors, resident model, SVD cache, materialiser workspace.
    """
    p = arch.parameters
    memory: dict[str, float] = {"base": p * b, "task vectors": k * p * b, "resident model": p * b}
    rank = mutation.params.get("rank")
    if mutation.name == "svd_expert":
        floats = sum((m + n) * _rank(m, n, rank) + _rank(m, n, rank) for m, n in targets)
        memory["svd cache"] = k * floats * 4
    # banks: every floating tensor of one shape, stacked (cycleqd.weights.space)
    banks: dict[tuple[int, ...], int] = {}
    for shape in arch.shapes.values():
        banks[shape] = banks.get(shape, 0) + 1
    if mutation.name in ("svd_expert", "svd_child", "gaussian") and banks:
        # a float32 accumulator the size of the largest bank (cycleqd.weights.materialize)
        memory["materialiser workspace"] = max(math.prod(s) * n for s, n in banks.items()) * 4
    transient: dict[str, float] = {}
    if mutation.name == "svd_expert" and targets:
        # each worker factors the task vectors at its first child, SVD_CHUNK matrices of a bank
        # at a time: the gathered rows (storage dtype and float32), the thin SVD's U and V
        counts: dict[tuple[int, int], int] = {}
        for shape in targets:
            counts[shape] = counts.get(shape, 0) + 1
        transient["svd at the first child"] = max(
            min(n, SVD_CHUNK) * (m * c * (b + 4) + (m + c + 1) * min(m, c) * 4)
            for (m, c), n in counts.items()
        )
        # replaying a child's spectral terms stacks a bank's U and V and scales a copy of U
        transient["spectral terms of a child"] = max(
            n * (2 * m + c) * _rank(m, c, rank) * 4 for (m, c), n in counts.items()
        )
    return memory, transient


def _generation_memory(
    arch: Architecture,
    generating: list[Workload],
    b: int,
    spec: Device,
    budget: float,
    on_cpu: bool,
    notes: list[str],
    blockers: list[str],
) -> dict[str, float]:
    """The KV cache, activations and vLLM engines of the tasks' generation.

    A vLLM task's batch becomes what its engine's share holds.
    """
    memory: dict[str, float] = {}
    per_token = arch.layers * 2 * arch.kv_heads * arch.head_dim * b  # KV bytes per token
    hf = [w for w in generating if w.backend != "vllm"]
    if hf and arch.layers:
        tokens = max(w.batch * min(w.sequence, arch.context or w.sequence) for w in hf)
        memory["kv cache"] = tokens * per_token
        # the prefill of the longest context, one layer at a time, and the last position's logits
        logits = max(w.batch for w in hf) * arch.vocab * 4
        memory["activations"] = tokens * (4 * arch.hidden + 2 * arch.intermediate) * b + logits
    for w in generating:
        if w.backend == "vllm" and per_token and not on_cpu:
            # the engine's KV cache is its share of the device less its copy of the weights:
            # sequences beyond it wait (vLLM preempts), so the batch is what fits
            room = w.gpu_memory_utilization * spec.memory - arch.parameters * b
            w.batch = max(0, min(w.batch, int(room // (w.sequence * per_token))))
            if w.batch == 0:
                blockers.append(
                    f"{w.task}: the vLLM engine's share ({w.gpu_memory_utilization:g} of the "
                    "device) cannot hold the weights and one sequence: raise "
                    "backend_params.gpu_memory_utilization"
                )
                w.batch = 1
    engines = {w.engine: w.gpu_memory_utilization for w in generating if w.backend == "vllm"}
    if engines:
        # tasks with the same backend_params share one engine per worker; others add their own
        memory["vllm engine"] = sum(engines.values()) * (spec.memory if not on_cpu else budget)
        if len(engines) > 1:
            notes.append(
                f"{len(engines)} vLLM engines per worker: give every task the same "
                "backend_params to share one"
            )
    return memory
