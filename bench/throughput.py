"""Scoring throughput on the quickstart: the same children scored as before and as now.

Builds (or reuses) the quickstart's experts and makes children with the config's selection,
crossover and mutation from archives filled as a run fills them (seed 0). The first ``--warmup``
children are scored untimed, so that the timed ones meet archives and an execution memo as a
run's children do; the default, 213, puts the 24 timed children (213 to 236) in the middle of
the quickstart's 450, so that their cost stands for the run's average (earlier children find
fewer answers known, later ones more). They are scored on the search split three ways:

* ``before``: ``transformers``' forward for decoding, every answer executed in the sandbox;
* ``exact``: the lean decoder (:mod:`cycleqd.generation.lean`) and the execution memo (what
  each distinct answer gave, :class:`cycleqd.suite.skills.execution.ExecutionMemo`); must give
  the same tokens and the same scores (asserted);
* ``racing``: ``exact`` plus racing (:mod:`cycleqd.engine.racing`): a child is scored on growing
  prefixes of the search split and stopped once it cannot enter any archive.

Each way builds its scorers fresh and scores the experts first, as a run's seeding does (not
timed). The archives are filled by the full evaluations in order, and each child's raced
decision (enter some archive or not) is compared with the full one against the same archives.
Last line: ``RESULT s_per_child_before=… s_per_child_exact=… speedup_exact=… cache_hit=…
speedup_racing=… raced_agreement=… tokens_identical=1``.

    python bench/throughput.py [--children 24] [--warmup 48] [--small]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from evaluators import small_config  # bench/ is the script folder

from cycleqd import Genome, load_config
from cycleqd.engine.archive import Archives, derive_ranges
from cycleqd.engine.racing import Racer
from cycleqd.evaluation.factory import build_scorers
from cycleqd.evaluation.local import LocalEvaluator
from cycleqd.evaluation.protocol import SEARCH
from cycleqd.models.sources import load_models
from cycleqd.operators import CROSSOVERS, MUTATIONS, SELECTIONS, MutationContext
from cycleqd.weights.materialize import Materializer


def evaluator(cfg, source, space, materializer, **params) -> LocalEvaluator:
    """An in-process evaluator whose skill scorers get ``params`` on top of the config's."""
    tasks = [t.model_copy(update={"params": t.params | params}) for t in cfg.tasks]
    return LocalEvaluator(space, source, build_scorers(tasks), materializer=materializer)


PHASES: dict[str, float] = {"materialize": 0.0, "decode": 0.0, "execute": 0.0}


def clock_phases() -> None:
    """Time materialising, decoding and executing (summed into :data:`PHASES`)."""
    import cycleqd.generation.decode as decode
    import cycleqd.suite.skills.accuracy as accuracy

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                PHASES[phase] += time.perf_counter() - start

        return wrapper

    decode.greedy_decode = timed("decode", decode.greedy_decode)
    accuracy.score = timed("execute", accuracy.score)
    Materializer.materialize = timed("materialize", Materializer.materialize)


def answers(ev: LocalEvaluator) -> list[list[str]]:
    """The completions the scorers decoded last (per task)."""
    return [list(s._answers[SEARCH][1]) for s in ev.scorers.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--children", type=int, default=24)
    parser.add_argument(
        "--warmup",
        type=int,
        default=213,
        help="children made and scored first, untimed (the run's archives and cache mid-run)",
    )
    parser.add_argument(
        "--small", action="store_true", help="micro models, 2 + 3 children (smoke run)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="(accepted for symmetry)")
    args = parser.parse_args()
    if args.small:
        args.warmup, args.children = 2, 3
    clock_phases()
    cfg = load_config(small_config(args.config) if args.small else args.config)
    source, space = load_models(cfg)
    materializer = Materializer(space)
    ways = {
        "before": evaluator(
            cfg, source, space, materializer, memoize=False, decoder="transformers"
        ),
        "exact": evaluator(cfg, source, space, materializer),
        "racing": evaluator(cfg, source, space, materializer),
    }
    experts = [Genome.expert(space, k) for k in range(len(cfg.tasks))]
    seeded = {name: ev.evaluate(experts, SEARCH) for name, ev in ways.items()}
    seeds = seeded["before"].scores
    assert all(np.array_equal(s.scores, seeds) for s in seeded.values()), "expert scores differ"
    tasks = cfg.task_names
    sizes = [len(seeded["before"].items[0][t]) for t in tasks]
    archives = Archives(tasks=tasks, bins=cfg.evolution.bins, ranges=derive_ranges(seeds))
    table = list(experts)
    for k in range(len(experts)):
        archives.insert(k, seeds[k])
    evo = cfg.evolution
    selection = SELECTIONS.build(evo.selection.name, **evo.selection.params)
    crossover = CROSSOVERS.build(evo.crossover.name, **evo.crossover.params)
    mutation = MUTATIONS.build(evo.mutation.name, **evo.mutation.params)
    rng = np.random.default_rng(0)
    racer = Racer(ways["racing"], sizes, stages=evo.racing.stages, z=evo.racing.z)
    seconds = dict.fromkeys(ways, 0.0)
    phases = {name: dict.fromkeys(PHASES, 0.0) for name in ways}
    same_tokens, agree, requests = True, 0, {"full": 0, "raced": 0}
    hits = lookups = 0
    for i in range(args.warmup + args.children):
        timed = i >= args.warmup
        if i == args.warmup:  # the cache's hit rate over the timed children only
            hits = -sum(s.memo_hits for s in ways["exact"].scorers.values())
            lookups = -sum(s.memo_lookups for s in ways["exact"].scorers.values())
        k = (i // evo.batch_size) % len(tasks)
        data = archives.elites(k)
        picked = selection(data["objective"], data["measures"], 2, rng)
        parents = [table[int(data["elite"][j])] for j in picked]
        context = MutationContext(space, materializer, k, rng)
        child = mutation(crossover(parents, rng, space), context)
        full = {}
        for name in ("before", "exact") if timed else ("exact",):
            start, before = time.perf_counter(), dict(PHASES)
            full[name] = ways[name].evaluate([child], SEARCH).scores[0]
            seconds[name] += (time.perf_counter() - start) * timed
            for phase, total in PHASES.items():
                phases[name][phase] += (total - before[phase]) * timed
        if timed and not np.array_equal(full["before"], full["exact"]):
            raise SystemExit(f"child {i}: exact scores {full['exact']} != before {full['before']}")
        if timed:
            same_tokens &= answers(ways["before"]) == answers(ways["exact"])
        start = time.perf_counter()
        raced = racer.race([child], archives)[0]
        seconds["racing"] += (time.perf_counter() - start) * timed
        requests["raced"] += raced.requests * timed
        requests["full"] += racer.full_requests * timed
        if raced.may_enter and not np.array_equal(raced.scores, full["exact"]):
            raise SystemExit(f"child {i}: raced full scores differ from the full evaluation")
        entered = archives.insert(len(table), full["exact"])
        # a child raced to the end is decided by its full scores; a stopped one is not offered
        agree += timed and (bool(entered) if raced.may_enter else False) == bool(entered)
        table.append(child)
        print(
            f"{'child' if timed else 'warm-up child'} {i:2d}: "
            f"scores {np.round(full['exact'], 3).tolist()} entered {entered} "
            f"raced {'full' if raced.may_enter else 'stopped'} after {raced.requests} requests",
            flush=True,
        )
    hits += sum(s.memo_hits for s in ways["exact"].scorers.values())
    lookups += sum(s.memo_lookups for s in ways["exact"].scorers.values())
    n = args.children
    per = {name: s / n for name, s in seconds.items()}
    print("seconds per child: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
    for name in ("before", "exact"):
        parts = ", ".join(f"{p} {s / n:.3f}" for p, s in phases[name].items())
        print(f"  {name}: {parts}")
    print(f"requests scored: full {requests['full']}, racing {requests['raced']}")
    if not same_tokens:
        raise SystemExit("the lean decoder's tokens differ from transformers'")
    slow = not args.small and per["before"] / per["exact"] < 3
    if slow:
        print(f"FAILED: speedup_exact {per['before'] / per['exact']:.2f} is below 3")
    line = (
        f"RESULT s_per_child_before={per['before']:.3f} s_per_child_exact={per['exact']:.3f} "
        f"speedup_exact={per['before'] / per['exact']:.2f} cache_hit={hits / lookups:.2f} "
        f"speedup_racing={per['before'] / per['racing']:.2f} raced_agreement={agree / n:.2f} "
        f"tokens_identical={int(same_tokens)}"
    )
    print(line)
    if slow:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
