"""The embedded default's language models: a tiny Llama, its base and its three skill experts.

Plain torch, no trainer framework, deterministic from a seed, cached by the recipe's hash. Read
the modules in order: the recipe, the data, the training, the builder.

Modules:
    recipe: ``TinyLMRecipe`` (model size and training schedule, the cache key) and the build's
        constants (``BUILD_VERSION``, ``BUILD_THREADS``, ``EXPERT_TRAIN``).
    corpus: what the models read: generic text (CPython 3.11's documentation topics, shipped
        with cycleqd; some held out for language retention), copying drills and the skills'
        training examples.
    training: the base's pretraining, each expert's fine-tuning (KL anchors, scaled task
        vectors), the experts' joint last round (``train_jointly``), and ``build_threads`` (a
        fixed thread count and deterministic kernels while training).
    builder: building and caching (``build``, ``build_multitask``), ``build_info`` and
        ``weights_hash`` (the same recipe gives the same weights on any machine of a kind).
    source: ``TinyLMSource``, the model source the registry names ``tinylm``.

The names users and the model-source registry import from ``cycleqd.suite.tinylm`` are
re-exported here; the package's own modules import from the module that defines a name.
"""

from __future__ import annotations

from cycleqd.suite.skills.problems import prompt_of
from cycleqd.suite.tinylm.builder import build, build_info, build_multitask, weights_hash
from cycleqd.suite.tinylm.corpus import copy_examples, format_example, generic_text
from cycleqd.suite.tinylm.recipe import BUILD_THREADS, BUILD_VERSION, EXPERT_TRAIN, TinyLMRecipe
from cycleqd.suite.tinylm.source import TinyLMSource
from cycleqd.suite.tinylm.training import build_threads, train_base, train_expert, train_jointly

__all__ = [
    "BUILD_THREADS",
    "BUILD_VERSION",
    "EXPERT_TRAIN",
    "TinyLMRecipe",
    "TinyLMSource",
    "build",
    "build_info",
    "build_multitask",
    "build_threads",
    "copy_examples",
    "format_example",
    "generic_text",
    "prompt_of",
    "train_base",
    "train_expert",
    "train_jointly",
    "weights_hash",
]
