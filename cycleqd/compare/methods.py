"""The methods a comparison runs: the models as they are, the merges, CMA-ES, the fine-tune.

Each runs at a seed in a :class:`~cycleqd.compare.context._Context` and returns its test row
and what it chose (:func:`_method`); CycleQD and its ablations run from
:mod:`cycleqd.compare.ablations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cycleqd.compare.ablations import ABLATIONS, _evolve
from cycleqd.compare.context import _Context, builds_experts
from cycleqd.config import RunConfig
from cycleqd.engine.choice import best_task_arithmetic, best_ties
from cycleqd.engine.final import final_evaluations
from cycleqd.errors import CycleQDError
from cycleqd.weights.genome import Genome

__all__ = ["METHODS", "STATIC", "evaluation_budget", "methods_of"]

#: Methods whose result does not depend on the evolution's seed (computed once per expert build).
STATIC = ("base", "task_arithmetic", "ties")


def methods_of(cfg: RunConfig) -> list[str]:
    """The methods a comparison of ``cfg`` reports, in table order."""
    methods = ["base", *(f"expert_{t}" for t in cfg.task_names), "task_arithmetic", "ties"]
    methods += ["dare_ties", "cma_es"]
    if cfg.models.source == "tinylm":
        methods.append("multitask_finetune")
    return methods + list(ABLATIONS)


def evaluation_budget(cfg: RunConfig) -> int:
    """Evaluations of one CycleQD run: seeds, children, and the final choice on val.

    The final choice scores the experts on val (what ``retention`` divides by) and every
    final-model candidate.
    """
    evo = cfg.evolution
    final = final_evaluations(cfg.final, len(cfg.tasks))
    return len(cfg.tasks) + evo.generations * evo.batch_size + final


def _static(ctx: _Context, genome: Genome) -> tuple[Any, dict[str, Any]]:
    return ctx.test_row(genome), {}


def _task_arithmetic(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
    lam, genome = best_task_arithmetic(ctx.space, ctx.chooser, ctx.cfg.final.lambdas)
    return ctx.test_row(genome), {"lambda": lam}


def _ties(method: str) -> Callable[[_Context, int], tuple[Any, dict[str, Any]]]:
    def run(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
        densities = ctx.cfg.final.ties_densities or [0.2, 0.4, 0.6, 0.8, 1.0]
        density, genome = best_ties(ctx.space, ctx.chooser, densities, method, seed)
        return ctx.test_row(genome), {"density": density}

    return run


def _method(name: str) -> Callable[[_Context, int], tuple[Any, dict[str, Any]]]:
    """The function that runs method ``name`` at a seed: ``(test row, info)``."""
    if name == "base":
        return lambda ctx, seed: _static(ctx, Genome.base(ctx.space))
    if name.startswith("expert_"):
        task = name.removeprefix("expert_")
        return lambda ctx, seed: _static(
            ctx, Genome.expert(ctx.space, ctx.cfg.task_names.index(task))
        )
    if name not in METHODS:
        known = ["base", "expert_<task>", *METHODS]
        raise CycleQDError(f"unknown comparison method {name!r}; known: {', '.join(known)}")
    return METHODS[name]


def _cma_es(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
    import cma

    K = len(ctx.cfg.tasks)
    budget = evaluation_budget(ctx.cfg)
    es = cma.CMAEvolutionStrategy(
        [0.5] * K,
        0.3,
        {"seed": seed + 1, "bounds": [0.0, 2.0], "verbose": -9, "maxfevals": budget},
    )
    best: tuple[float, ...] = (float("-inf"),)
    best_x = np.full(K, 0.5)
    ctx.chooser.expert_val_scores()
    used = K  # CycleQD's budget counts the experts' val scores too
    while used < budget:
        xs = es.ask()[: budget - used]
        losses = []
        for x in xs:
            # the same split as CycleQD's children, the same objective as every choice
            genome = Genome.linear(ctx.space, torch.tensor(x).float())
            key = ctx.chooser.judge([genome], "search")[0][0]
            used += 1
            # CMA-ES minimises one number: the objective's first value, then its tie-break
            losses.append(-(key[0] + 1e-3 * key[-1]) if math.isfinite(key[0]) else 1.0)
            if key > best:
                best, best_x = key, np.asarray(x)
        if len(xs) < es.popsize:
            break
        es.tell(xs, losses)
    genome = Genome.linear(ctx.space, torch.tensor(best_x).float())
    info = {"coefficients": best_x.tolist(), "search_objective": list(best)}
    return ctx.test_row(genome), info | {"val_evaluations": used}


def _finetune(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
    from cycleqd.evaluation.factory import local_evaluator
    from cycleqd.suite.tinylm import build_multitask
    from cycleqd.weights.space import WeightSpace

    recipe = ctx.source.recipe
    path = build_multitask(Path(ctx.cfg.cache_dir).expanduser(), recipe, seed)
    space = WeightSpace.from_paths(base=ctx.source.base, experts={"multitask": path})
    val = local_evaluator(ctx.cfg, source=ctx.source, space=space, scorers=ctx.scorers)
    report = local_evaluator(
        ctx.cfg, source=ctx.source, space=space, scorers=ctx.extra, materializer=val.materializer
    )
    steps = len(ctx.cfg.tasks) * recipe.expert_steps
    return ctx.test_row(Genome.expert(space, 0), val, report), {"steps": steps}


def _ablation_run(name: str) -> Callable[[_Context, int], tuple[Any, dict[str, Any]]]:
    return lambda ctx, seed: _evolve(ctx, name, seed)


#: The comparison methods other than the single models (``base``, ``expert_<task>``), by name:
#: ``run(ctx, seed) -> (test row, info)``. CycleQD and its ablations are full runs.
METHODS: dict[str, Callable[[_Context, int], tuple[Any, dict[str, Any]]]] = {
    "task_arithmetic": _task_arithmetic,
    "ties": _ties("ties"),
    "dare_ties": _ties("dare_ties"),
    "cma_es": _cma_es,
    "multitask_finetune": _finetune,
    **{name: _ablation_run(name) for name in ABLATIONS},
}


def _once(cfg: RunConfig, method: str) -> bool:
    """Whether ``method`` runs at the first seed only (fixed experts, no seed of its own)."""
    return not builds_experts(cfg) and (method in STATIC or method.startswith("expert_"))
