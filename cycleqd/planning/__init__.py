"""Planning: what a run costs before it runs (``cycleqd plan``).

Modules:
    architecture: a model's shape, read from its config or safetensors headers (no weights).
    devices: the devices planned for, and one worker's memory budget on them.
    workload: what scoring one child on one task generates.
    memory: what a worker holds in memory (weights, SVD cache, generation, transients).
    cost: the estimated seconds of one child.
    plan: the plan itself (``Plan``) and ``make_plan``, which composes the steps.
    render: the plan's tables on the console.
"""

from cycleqd.planning.architecture import Architecture, architecture
from cycleqd.planning.devices import DEVICES, Device, GiB
from cycleqd.planning.plan import Plan, make_plan
from cycleqd.planning.workload import Workload, workload

__all__ = [
    "DEVICES",
    "Architecture",
    "Device",
    "GiB",
    "Plan",
    "Workload",
    "architecture",
    "make_plan",
    "workload",
]
