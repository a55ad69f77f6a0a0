"""Weights: the weight space, genomes, the materialiser and checkpoint loading.

Public names: WeightSpace, Bank, Genome, Materializer, load_state_dict.
Modules: space (the base and K task vectors in banks), genome (a child as a recipe),
materialize (a genome's weights written in place), checkpoints (Hugging Face folders and
safetensors files), _mergekit (the bridge to mergekit's merge methods), _io (atomic writes).
"""

from cycleqd.weights.checkpoints import load_state_dict
from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import Bank, WeightSpace

__all__ = ["Bank", "Genome", "Materializer", "WeightSpace", "load_state_dict"]
