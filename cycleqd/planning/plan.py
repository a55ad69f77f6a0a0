"""``cycleqd plan``: what a worker of a run holds in memory and what a child costs, in advance.

:func:`make_plan` composes the steps: the model's shape (:mod:`~cycleqd.planning.architecture`),
the device and a worker's budget (:mod:`~cycleqd.planning.devices`), each task's generation
(:mod:`~cycleqd.planning.workload`), a worker's memory (:mod:`~cycleqd.planning.memory`) and a
child's seconds (:mod:`~cycleqd.planning.cost`).

The driver holds the base and the task vectors too, and a resident model when it scores the
final report; the plan says how much, since on a GPU node it needs a device of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.planning.architecture import _DTYPE_BYTES, Architecture, _svd_targets, architecture
from cycleqd.planning.cost import _child_seconds
from cycleqd.planning.devices import DEVICES, Device, GiB, _budget
from cycleqd.planning.memory import _generation_memory, _weights_memory
from cycleqd.planning.workload import Workload, workload

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """A worker's memory and a child's cost.

    Attributes:
        device: the device planned for.
        budget: bytes one worker may use.
        memory: item → bytes.
        seconds: item → estimated seconds per child.
        architecture: the model's shapes.
        workloads: per task.
        notes: assumptions and advice.
        run_hours: the whole run's estimated duration on the configured workers.
        dtype_bytes: bytes per stored weight.
        blockers: reasons the run cannot work besides the total (a vLLM share too small).
        transient: peaks held only while a worker materialises a child (factoring the task
            vectors at the first, replaying spectral terms at every one), never while it
            generates.
        first_child: bytes at the larger of those peaks, before overhead.
        steady: bytes while generating, before overhead.
        driver: bytes the driver process holds on the models' device.
    """

    device: Device
    budget: float
    memory: dict[str, float]
    seconds: dict[str, float]
    architecture: Architecture
    workloads: list[Workload]
    notes: list[str]
    run_hours: float
    dtype_bytes: int = 4
    blockers: list[str] = field(default_factory=list)
    transient: dict[str, float] = field(default_factory=dict)
    first_child: float = 0.0
    steady: float = 0.0
    driver: float = 0.0

    @property
    def total(self) -> float:
        """Bytes one worker needs at its peak (generating, or factoring at the first child)."""
        return max(self.steady, self.first_child) + self.memory.get("overhead", 0.0)

    @property
    def fits(self) -> bool:
        """Whether a worker fits its budget (and nothing else blocks it)."""
        return self.total <= self.budget and not self.blockers

    @property
    def per_child(self) -> float:
        """Estimated seconds per child."""
        return sum(self.seconds.values())

    def advice(self) -> list[str]:
        """What to change when it does not fit, largest item first."""
        hints = {
            "svd cache": "lower evolution.mutation.params.rank (or use mutation svd_child)",
            "task vectors": "store weights in bfloat16 (models.dtype: bfloat16)",
            "base": "store weights in bfloat16 (models.dtype: bfloat16)",
            "resident model": "store weights in bfloat16 (models.dtype: bfloat16)",
            "kv cache": "lower the tasks' backend_params.batch_size or max_new_tokens",
            "activations": "lower the tasks' backend_params.batch_size",
            "vllm engine": "lower backend_params.gpu_memory_utilization",
            "materialiser workspace": "a device with more memory (it spans the largest bank)",
            "svd at the first child": "fill the SVD cache (cache_dir) on a larger device first",
            "spectral terms of a child": "lower evolution.mutation.params.rank",
        }
        if self.dtype_bytes <= 2:  # already 16-bit: the weights cannot shrink further here
            for name in ("base", "task vectors", "resident model"):
                hints[name] = "fewer tasks, or a device with more memory"
        ranked = sorted({**self.memory, **self.transient}.items(), key=lambda kv: -kv[1])
        return [
            f"{name} ({size / GiB:.1f} GiB): {hints[name]}"
            for name, size in ranked
            if name in hints
        ][:3]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (``cycleqd plan --json``)."""
        return {
            "device": asdict(self.device),
            "budget_bytes": self.budget,
            "memory_bytes": self.memory,
            "total_bytes": self.total,
            "transient_bytes": self.transient,
            "first_child_bytes": self.first_child,
            "generation_bytes": self.steady,
            "driver_bytes": self.driver,
            "fits": self.fits,
            "blockers": self.blockers,
            "seconds_per_child": self.seconds,
            "run_hours": self.run_hours,
            "architecture": {
                k: v
                for k, v in asdict(self.architecture).items()
                if k not in ("matrices", "shapes")
            },
            "workloads": [asdict(w) | {"sequence": w.sequence} for w in self.workloads],
            "notes": self.notes,
        }


def make_plan(config: Any, *, device: str = "h200", memory_gb: float | None = None) -> Plan:
    """The plan of a :class:`cycleqd.config.RunConfig` on ``device``.

    Args:
        config: the run config.
        device: a key of :data:`DEVICES` (ignored for ``models.device: cpu``, which plans for
            the host's memory shared by the workers).
        memory_gb: a worker's memory budget in GB, instead of the device's.

    Raises:
        CycleQDError: an unknown device, or models whose shapes cannot be read.
    """
    if device not in DEVICES:
        raise CycleQDError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if config.models.source != "paths":
        raise CycleQDError(
            f"cycleqd plan reads models given by path or id (models.base / models.experts); "
            f"source {config.models.source!r} builds its own small models, which need no plan"
        )
    notes: list[str] = []
    blockers: list[str] = []
    arch = architecture(config.models.base)
    evaluation = config.evaluation
    workers = evaluation.workers if evaluation.backend == "ray" else 1
    spec, budget, on_cpu = _budget(config, device, memory_gb, workers, notes)
    k = len(config.tasks)
    b = _DTYPE_BYTES[config.models.dtype] if config.models.dtype else arch.dtype_bytes
    mutation = config.evolution.mutation
    targets = _svd_targets(arch, mutation)
    memory, transient = _weights_memory(arch, k, b, mutation, targets)
    loads = [workload(t) for t in config.tasks]
    for w in loads:
        notes += [f"{w.task}: assumed {a}" for a in w.assumed]
    generating = [w for w in loads if w.sequences and w.new_tokens]
    memory |= _generation_memory(arch, generating, b, spec, budget, on_cpu, notes, blockers)
    steady = sum(memory.values())
    generation = memory.get("kv cache", 0.0) + memory.get("activations", 0.0)
    first_child = steady - generation + max(transient.values(), default=0.0)
    memory["overhead"] = 2 * GiB + 0.05 * max(steady, first_child)
    # the driver makes children and scores the final report: base and task vectors, and the
    # resident model with its workspace, SVD factors and their transients for the report
    driver = memory["base"] + memory["task vectors"] + memory["resident model"]
    driver += memory.get("materialiser workspace", 0.0) + memory.get("svd cache", 0.0)
    driver += max(transient.values(), default=0.0)
    if not on_cpu and evaluation.backend == "ray":
        notes.append(
            f"the driver holds up to {driver / GiB:.1f} GiB on {config.models.device} (base, "
            "task vectors, and a resident model with its SVD factors to score the final "
            "report): give it a device no worker uses"
        )
    seconds = _child_seconds(arch, k, b, spec, mutation, targets, generating)
    children = config.evolution.generations * config.evolution.batch_size
    run_hours = children * sum(seconds.values()) / workers / 3600
    if spec.memory == 0:
        spec = Device(spec.name, budget, spec.bandwidth, spec.flops, spec.flops32)
    return Plan(
        spec,
        budget,
        memory,
        seconds,
        arch,
        loads,
        notes,
        run_hours,
        dtype_bytes=b,
        blockers=blockers,
        transient=transient,
        first_child=first_child,
        steady=steady,
        driver=driver,
    )
