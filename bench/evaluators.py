"""Evaluators on the agent-skill suite: in-process, Ray with 1 worker, Ray with 2 workers.

The same candidates (children made by the config's crossover and mutation from the experts) are
scored by each evaluator on the val split; the scores must agree. The Ray timings leave out the
workers' start-up (each builds the weight space once) and a warm-up pass, and include everything
per candidate: genomes out, materialising, decoding, sandboxed execution, scores back. Each Ray
worker reserves one CPU and uses one (torch threads, sandbox processes). The baseline of the
ratio is Ray with 1 worker in the same process. Last line:
``RESULT speedup_2v1=<x> bytes_per_candidate=<n>`` (``weight_share`` in the line above says what
share of the model's weight bytes a candidate's message is).

    python bench/evaluators.py [--config experiments/quickstart.yaml] [--candidates 24]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from _timing import timed  # bench/ is the script folder

from cycleqd import load_config
from cycleqd.evaluation.factory import local_evaluator
from cycleqd.models.sources import load_models
from cycleqd.operators import CROSSOVERS, MUTATIONS, MutationContext
from cycleqd.suite.tinylm import TinyLMRecipe
from cycleqd.weights.materialize import Materializer


def candidates(cfg, space, count: int) -> list:
    """Children of random expert pairs, made by the config's operators."""
    from cycleqd import Genome

    rng = np.random.default_rng(0)
    evo = cfg.evolution
    crossover = CROSSOVERS.build(evo.crossover.name, **evo.crossover.params)
    mutation = MUTATIONS.build(evo.mutation.name, **evo.mutation.params)
    experts = [Genome.expert(space, k) for k in range(len(cfg.tasks))]
    out = []
    for i in range(count):
        a, b = rng.choice(len(experts), size=2, replace=False)
        ctx = MutationContext(space, Materializer(space), i % len(experts), rng)
        out.append(mutation(crossover([experts[a], experts[b]], rng, space), ctx))
    return out


def small_config(path: str) -> Path:
    """``path`` with the micro tinylm recipe (built in seconds, in a temporary cache)."""
    data = yaml.safe_load(Path(path).read_text())
    folder = Path(tempfile.mkdtemp())
    data["cache_dir"] = str(folder / "cache")
    data["models"] = {"source": "tinylm", "params": asdict(TinyLMRecipe.micro())}
    for task in data["tasks"]:
        task["params"] |= {"problems": 4, "test_problems": 4, "max_new_tokens": 8}
        task["params"]["search_problems"] = 2
    (folder / "small.yaml").write_text(yaml.safe_dump(data))
    return folder / "small.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument(
        "--small", action="store_true", help="micro models, 4 candidates (smoke run)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (median)")
    args = parser.parse_args()
    import ray

    from cycleqd.evaluation.ray_evaluator import RayEvaluator

    cfg = load_config(small_config(args.config) if args.small else args.config)
    source, space = load_models(cfg)
    children = candidates(cfg, space, 4 if args.small else args.candidates)
    weight_bytes = sum(
        t.numel() * t.element_size() for t in map(space.base_tensor, space.tensor_names)
    )
    local = local_evaluator(cfg, source=source, space=space)
    repeats = 1 if args.small else args.repeats
    results = {}

    def score(name: str, evaluator) -> None:
        results[name] = evaluator.evaluate(children, "val").scores

    seconds = {"local": timed(lambda: score("local", local), repeats)}  # warm-up run first
    sent = {}
    for workers in (1, 2):
        name = f"ray{workers}"
        remote = RayEvaluator(cfg, build=local_evaluator, workers=workers, cpus_per_worker=1)
        seconds[name] = timed(lambda n=name, r=remote: score(n, r), repeats)
        sent[workers] = remote.bytes_per_candidate
        remote.close()
        if not np.array_equal(results[name], results["local"], equal_nan=True):
            raise SystemExit(f"Ray with {workers} worker(s) scored differently from in-process")
    ray.shutdown()
    n = len(children)
    for name, s in seconds.items():
        print(f"{name:6s} {s:7.2f} s for {n} candidates ({s / n:.2f} s each)")
    bytes_per = sent[2]
    print(
        f"weights {weight_bytes} bytes; a candidate sends {bytes_per:.0f} bytes "
        f"(weight_share={bytes_per / weight_bytes:.5f})"
    )
    print(
        f"RESULT speedup_2v1={seconds['ray1'] / seconds['ray2']:.2f} "
        f"bytes_per_candidate={bytes_per:.0f}"
    )


if __name__ == "__main__":
    main()
