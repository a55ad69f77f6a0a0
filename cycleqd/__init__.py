"""cycleqd: evolve language-model experts into one model that holds all their skills.

An implementation of CycleQD (Kuroki et al., "Agent Skill Acquisition for Large Language Models
via CycleQD", ICLR 2025).

Public names:
    WeightSpace: a base model and K expert task vectors, held once per process.
    Genome: a child as a recipe (coefficients, mutation terms, merge nodes), not weights.
    Materializer: writes a genome's weights into a preallocated state dict, in place.
    load_state_dict: reads a Hugging Face model directory or a safetensors file.
    Registry: the name → factory registries that operators and scorers live in.
    CycleQDError, ModelLoadError, UnknownNameError, NonFiniteError: errors for bad input.

Operators live in :mod:`cycleqd.operators`.
"""

from cycleqd._registry import Registry
from cycleqd.checkpoints import load_state_dict
from cycleqd.errors import CycleQDError, ModelLoadError, NonFiniteError, UnknownNameError
from cycleqd.genome import Genome
from cycleqd.materialize import Materializer
from cycleqd.weights import WeightSpace

__all__ = [
    "CycleQDError",
    "Genome",
    "Materializer",
    "ModelLoadError",
    "NonFiniteError",
    "Registry",
    "UnknownNameError",
    "WeightSpace",
    "load_state_dict",
]
__version__ = "0.1.0"
