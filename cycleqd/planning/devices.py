"""The devices a plan is made for, and the memory budget of one worker on them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DEVICES", "GiB", "MiB", "Device"]

GiB = 1024**3


@dataclass(frozen=True)
class Device:
    """A device's capacity.

    Attributes:
        name: what it is.
        memory: bytes (as ``nvidia-smi`` reports the device's total).
        bandwidth: memory bandwidth, bytes per second.
        flops: dense bf16 FLOP/s (tensor cores; on the CPU, fp32).
        flops32: dense fp32 FLOP/s without tensor cores (the SVD factors' GEMMs).
    """

    name: str
    memory: float
    bandwidth: float
    flops: float
    flops32: float = 0.0


MiB = 1024**2
DEVICES = {
    "h200": Device("NVIDIA H200 (141 GB)", 143771 * MiB, 4.8e12, 989e12, 67e12),
    "h100": Device("NVIDIA H100 SXM (80 GB)", 81559 * MiB, 3.35e12, 989e12, 67e12),
    "a100-80gb": Device("NVIDIA A100 (80 GB)", 81920 * MiB, 2.0e12, 312e12, 19.5e12),
    "a100-40gb": Device("NVIDIA A100 (40 GB)", 40960 * MiB, 1.55e12, 312e12, 19.5e12),
    "l40s": Device("NVIDIA L40S (48 GB)", 46068 * MiB, 0.864e12, 362e12, 91.6e12),
    "cpu": Device("CPU (host memory)", 0.0, 20e9, 0.5e12, 0.5e12),
}


def _budget(
    config: Any, device: str, memory_gb: float | None, workers: int, notes: list[str]
) -> tuple[Device, float, bool]:
    """The device a worker plans for, its memory budget in bytes, and whether it is the CPU."""
    on_cpu = not str(config.models.device).startswith("cuda")
    spec = DEVICES["cpu" if on_cpu else device]
    evaluation = config.evaluation
    if memory_gb is not None:
        return spec, memory_gb * 1e9, on_cpu
    if on_cpu:
        notes.append(f"models.device is {config.models.device}: planned for host memory")
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return spec, pages / workers, on_cpu
    share = evaluation.gpus_per_worker if evaluation.backend == "ray" else 1.0
    if share == 0:
        share = 1.0
        notes.append("evaluation.gpus_per_worker is 0: planned for one device per worker")
    if share > 1:
        notes.append(
            f"gpus_per_worker={share:g}: a worker keeps its weights on one device; the "
            "plan counts one device"
        )
    budget = spec.memory * min(share, 1.0)
    return Device(spec.name, budget, spec.bandwidth, spec.flops, spec.flops32), budget, on_cpu
