"""Evaluation: scoring genomes on every task, in-process or on Ray workers.

Modules:
    protocol: the Evaluator protocol (every member the loop uses), Evaluation, Outcome.
    context: what scorers share per set of weights (ScoringContext).
    local: LocalEvaluator, in this process.
    ray_evaluator: RayEvaluator, one Ray actor per worker slot.
    factory: the one place that builds a run's scorers and evaluator (run, compare, Ray workers).
"""
