"""``cycleqd compare``: CycleQD against baselines and its ablations at equal budgets.

Modules:
    context: one expert build's weights, scorers, evaluators and chooser; the seeded config.
    ablations: the ablation chain (fixed axes, cycling, SVD mutation, CycleQD), each a full run.
    methods: the registry of methods (models as they are, merges, CMA-ES, fine-tune), the budget.
    report: the summary over seeds, the paired differences, compare.md and compare.png.
    study: ``compare`` itself (the cells, run or resumed, in one process or several).
"""

from cycleqd.compare.ablations import ABLATIONS
from cycleqd.compare.methods import METHODS, evaluation_budget, methods_of
from cycleqd.compare.study import compare

__all__ = ["ABLATIONS", "METHODS", "compare", "evaluation_budget", "methods_of"]
