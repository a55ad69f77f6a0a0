"""CycleQD's evolutionary operators, each found by name in a registry that plug-ins extend.

Registries:
    SELECTIONS: ``elite_sampling``, ``uniform``.
    CROSSOVERS: ``gaussian_task_arithmetic`` and every merge method mergekit registers (``ties``,
        ``dare_ties``, ``slerp``, ...) under mergekit's name.
    MUTATIONS: ``svd_expert``, ``svd_child``, ``gaussian``, ``none``.

Plug-ins register more through the entry-point groups ``cycleqd.selection``, ``cycleqd.crossover``
and ``cycleqd.mutation``, or a config names a dotted path ``package.module:Factory``.

Public names:
    EliteSampling, UniformSelection, elite_sampling_weights,
    GaussianTaskArithmetic, MergekitCrossover, mergekit_merge, mergekit_method_names,
    SvdExpert, SvdChild, GaussianMutation, NoMutation, MutationContext, svd_child_error_bound.
"""

from cycleqd.operators._crossover import CROSSOVERS, GaussianTaskArithmetic, MergekitCrossover
from cycleqd.operators._mutation import (
    MUTATIONS,
    GaussianMutation,
    MutationContext,
    NoMutation,
    SvdChild,
    SvdExpert,
    svd_child_error_bound,
)
from cycleqd.operators._selection import (
    SELECTIONS,
    EliteSampling,
    UniformSelection,
    elite_sampling_weights,
)
from cycleqd.weights._mergekit import mergekit_merge, mergekit_method_names

__all__ = [
    "CROSSOVERS",
    "MUTATIONS",
    "SELECTIONS",
    "EliteSampling",
    "GaussianMutation",
    "GaussianTaskArithmetic",
    "MergekitCrossover",
    "MutationContext",
    "NoMutation",
    "SvdChild",
    "SvdExpert",
    "UniformSelection",
    "elite_sampling_weights",
    "mergekit_merge",
    "mergekit_method_names",
    "svd_child_error_bound",
]
