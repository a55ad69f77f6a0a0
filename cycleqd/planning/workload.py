"""What scoring one child on one task generates: the scorer's shape, bounded by the task's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.scorers import SCORERS, TaskShape

__all__ = ["Workload", "workload"]


@dataclass
class Workload:
    """What scoring one child on one task generates.

    Attributes:
        task: the task's name.
        problems: val problems (each one conversation).
        turns: model replies per problem (multi-turn tasks), at most.
        prompt_tokens: tokens of a problem's first prompt.
        new_tokens: tokens of a reply, at most.
        batch: conversations decoded together.
        backend: the generation backend.
        gpu_memory_utilization: the vLLM engine's share of the device.
        engine: the backend's parameters (tasks with equal ones share an engine).
        assumed: which of these figures are defaults rather than read from the config or data.
    """

    task: str
    problems: int
    turns: int
    prompt_tokens: int
    new_tokens: int
    batch: int
    backend: str = "transformers"
    gpu_memory_utilization: float = 0.0
    engine: str = ""
    assumed: list[str] = field(default_factory=list)

    @property
    def sequence(self) -> int:
        """The longest context: the prompt and every turn's reply and observation (as long)."""
        return self.prompt_tokens + self.turns * 2 * self.new_tokens - self.new_tokens

    @property
    def sequences(self) -> int:
        """Replies generated per child."""
        return self.problems * self.turns


def _shape(task: Any) -> TaskShape:
    """The scorer's own account of a child's cost (its ``plan_shape`` hook), or a default."""
    try:
        factory = SCORERS.get(task.scorer)
    except CycleQDError:
        factory = None
    hook = getattr(factory, "plan_shape", None)  # optional: see cycleqd.scorers
    if hook is None:
        return TaskShape(
            problems=100,
            assumed=[
                f"scorer {task.scorer!r} has no plan_shape hook: 100 problems of 512 + 256 tokens"
            ],
        )
    return hook(dict(task.params))


def workload(task: Any) -> Workload:
    """The generation one child costs on ``task`` (a :class:`cycleqd.config.TaskConfig`).

    The scorer says its shape (:class:`cycleqd.scorers.TaskShape`); the task's generation
    parameters (``limit``, ``max_new_tokens``, ``backend``, ``backend_params``) bound it.
    """
    params: Mapping[str, Any] = task.params
    shape = _shape(task)
    problems, new = shape.problems, shape.new_tokens
    if params.get("limit"):
        problems = min(problems, int(params["limit"])) if problems else int(params["limit"])
    new = int(params.get("max_new_tokens", new) or new)
    backend = params.get("backend", "transformers")
    backend_params = params.get("backend_params", {}) or {}
    batch = int(backend_params.get("batch_size", params.get("batch_size", 16)))
    if shape.one_batch:
        batch = problems
    if backend == "vllm":  # continuous batching: every conversation at once, up to max_num_seqs
        batch = int(backend_params.get("max_num_seqs", 256))
    prompt = shape.prompt_tokens
    return Workload(
        task=task.name,
        problems=problems,
        turns=shape.turns,
        prompt_tokens=int(backend_params.get("max_prompt_tokens", prompt) or prompt),
        new_tokens=new,
        batch=max(1, min(batch, problems or 1)),
        backend=str(backend),
        gpu_memory_utilization=float(backend_params.get("gpu_memory_utilization", 0.35)),
        engine=repr(sorted(backend_params.items())),
        assumed=list(shape.assumed),
    )
