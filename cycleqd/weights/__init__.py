"""Weights: the weight space, genomes, the materialiser and checkpoint loading.

Public names: WeightSpace, Bank, Genome, Materializer, load_state_dict.
Modules: space (the base and K task vectors in banks), bank (the stacked same-shape tensors),
genome (a child as a recipe: linear form or merge node, plus terms), terms (mutation terms: noise,
low-rank, spectral keys; their sums and header entries), materialize (a genome's weights written
in place), checkpoints (Hugging Face folders and safetensors files), _codec (the genome file
format and content hash), _mergekit (the bridge to mergekit's merge methods), _io (atomic writes).
"""

from cycleqd.weights.bank import Bank
from cycleqd.weights.checkpoints import load_state_dict
from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import WeightSpace

__all__ = ["Bank", "Genome", "Materializer", "WeightSpace", "load_state_dict"]
