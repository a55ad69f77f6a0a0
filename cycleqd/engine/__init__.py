"""The engine: the cyclic MAP-Elites loop and everything a run is made of above the weights.

Modules:
    archive: the K grid archives (pyribs), one per task.
    evolver: the loop, Algorithm 1 (seed, select, cross, mutate, evaluate, insert).
    steady: the steady-state schedule (children in flight on a cluster).
    state: the loop's checkpoint state, saved and restored.
    choice: choosing on val (the chooser, the baselines' grids); shared by the run and compare.
    final: the final model's candidates, its choice, the baselines and the report.
    store: the run folder (atomic writes, logs, genomes); run: reading one back (notebooks).
    plots: the archives' heat maps; progress: one line per stage on stderr.
    summary_table: the run's report as a rich table (``cycleqd evolve``, ``show``).
"""
