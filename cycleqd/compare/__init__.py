"""``cycleqd compare``: CycleQD against baselines and its ablations at equal budgets.

Modules: study (the methods, the ablations, the report).
"""
