"""Planning: what a run costs before it runs (``cycleqd plan``).

Modules: plan (the architecture read from a config, memory, cost per child, make_plan).
"""
