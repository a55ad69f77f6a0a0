"""cycleqd: evolve language-model experts into one model that holds all their skills.

An implementation of CycleQD (Kuroki et al., "Agent Skill Acquisition for Large Language Models
via CycleQD", ICLR 2025).

Public names (imported on first use, so that the command line starts fast):
    WeightSpace: a base model and K expert task vectors, held once per process.
    Genome: a child as a recipe (coefficients, mutation terms, merge nodes), not weights.
    Materializer: writes a genome's weights into a preallocated state dict, in place.
    load_state_dict: reads a Hugging Face model directory or a safetensors file.
    load_config, RunConfig: the validated YAML run config.
    Evolver: the cyclic MAP-Elites loop; Archives: its K grid archives.
    load_run, Run: a finished or running run folder, for notebooks.
    Registry: the name → factory registries that operators, scorers and sources live in.
    CycleQDError, ModelLoadError, UnknownNameError, NonFiniteError, ConfigError: bad input.

Operators live in :mod:`cycleqd.operators`, scorers in :mod:`cycleqd.scorers`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Archives": "cycleqd.engine.archive",
    "ConfigError": "cycleqd.config",
    "CycleQDError": "cycleqd.errors",
    "Evolver": "cycleqd.engine.evolver",
    "Genome": "cycleqd.weights.genome",
    "Materializer": "cycleqd.weights.materialize",
    "ModelLoadError": "cycleqd.errors",
    "NonFiniteError": "cycleqd.errors",
    "Registry": "cycleqd.registry",
    "Run": "cycleqd.engine.run",
    "RunConfig": "cycleqd.config",
    "UnknownNameError": "cycleqd.errors",
    "WeightSpace": "cycleqd.weights.space",
    "load_config": "cycleqd.config",
    "load_run": "cycleqd.engine.run",
    "load_state_dict": "cycleqd.weights.checkpoints",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cycleqd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
