"""Replay time of a genome against its lineage's depth, under each mutation.

On the quickstart's weight space (its tiny Llama experts, built or reused), a lineage of depth
``d`` is made as a run makes children: ``g_{i+1} = mutation(crossover(g_i, g_j))`` with ``g_j``
drawn from the lineage so far (the experts first), the config's crossover
(``gaussian_task_arithmetic``). The deepest genome is then materialised (replayed) and timed,
best of three. Prints, per mutation and depth, the replay time and the terms the genome holds,
and per mutation the ratio of the deepest replay to the shallowest. Last line:
``RESULT replay_ratio_default=<x>`` (the config's own mutation; flat is <= 2).

    python bench/replay.py [--depths 10 100 1000] [--small]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from evaluators import small_config  # bench/ is the script folder

from cycleqd import Genome, load_config
from cycleqd.models.sources import load_models
from cycleqd.operators import CROSSOVERS, MUTATIONS, MutationContext
from cycleqd.weights.materialize import Materializer

MUTATIONS_TIMED = {
    "svd_expert": {"rate": 0.1},
    "gaussian (basis 8)": {"std": 0.002, "basis": 8},
    "gaussian": {"std": 0.002},
    "svd_child": {"rank": 16, "scale": 0.1},
}


def lineage(space, materializer, crossover, mutation, depth: int, seed: int = 0) -> Genome:
    """The last genome of a lineage ``depth`` children deep."""
    rng = np.random.default_rng(seed)
    pool = [Genome.expert(space, k) for k in range(space.num_experts)]
    current = pool[0]
    for i in range(depth):
        other = pool[int(rng.integers(len(pool)))]
        context = MutationContext(space, materializer, i % space.num_experts, rng)
        current = mutation(crossover([current, other], rng, space), context)
        pool.append(current)
    return current


def replay_seconds(materializer: Materializer, genome: Genome, repeats: int = 3) -> float:
    """Best of ``repeats`` materialisations of ``genome``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        materializer.materialize(genome)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--small", action="store_true", help="micro models, depths 2 and 8")
    parser.add_argument("--repeats", type=int, default=3, help="timed replays (best of)")
    args = parser.parse_args()
    cfg = load_config(small_config(args.config) if args.small else args.config)
    depths = [2, 8] if args.small else args.depths
    source, space = load_models(cfg)
    materializer = Materializer(space)
    evo = cfg.evolution
    crossover = CROSSOVERS.build(evo.crossover.name, **evo.crossover.params)
    ratios = {}
    for name, params in MUTATIONS_TIMED.items():
        mutation = MUTATIONS.build(name.split()[0], **params)
        times = []
        for depth in depths:
            genome = lineage(space, materializer, crossover, mutation, depth)
            seconds = replay_seconds(materializer, genome, args.repeats)
            times.append(seconds)
            terms = (
                sum(len(c) for c in genome.spectral.values()),
                len(genome.noise),
                len(genome.lowrank),
                sum(int(t.s.numel()) for t in genome.lowrank),
            )
            print(
                f"{name:18s} depth {depth:5d}: replay {seconds * 1000:8.1f} ms  "
                f"(spectral {terms[0]}, noise {terms[1]}, low-rank {terms[2]} of total rank "
                f"{terms[3]})",
                flush=True,
            )
        ratios[name] = times[-1] / times[0]
        print(f"{name:18s} deepest / shallowest: {ratios[name]:.2f}")
    print(f"RESULT replay_ratio_default={ratios[evo.mutation.name]:.2f}")


if __name__ == "__main__":
    main()
