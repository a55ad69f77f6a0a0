"""The final model, chosen from the archives, and the report of every method on test.

The run (:class:`cycleqd.engine.evolver.Evolver`) and ``cycleqd compare`` both choose CycleQD's
model here; :mod:`cycleqd.engine.choice` scores the candidates and the baselines' grids on val.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cycleqd.engine.archive import Archives
from cycleqd.engine.choice import Chooser, best_task_arithmetic, best_ties
from cycleqd.engine.progress import progress
from cycleqd.evaluation.factory import build_scorers
from cycleqd.evaluation.local import LocalEvaluator
from cycleqd.evaluation.protocol import Evaluator
from cycleqd.models.sources import ModelSource
from cycleqd.stats import objective_value, report_intervals, retention
from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer
from cycleqd.weights.space import WeightSpace

__all__ = [
    "SOUP_SIZES",
    "VALIDATION_TEMPERATURES",
    "baselines",
    "choose_final",
    "final_candidates",
    "final_evaluations",
    "most_candidates",
    "final_model",
    "ranked_by_objective",
    "report_summary",
    "score_report",
    "softmax",
]

#: Softmax temperatures tried by ``final.method: validation`` (``0`` means the best elite alone).
VALIDATION_TEMPERATURES = (1.0, 0.3, 0.1, 0.03, 0.0)
#: Sizes of the uniform "soups" of the elites with the best objectives that ``validation`` tries:
#: averaging elites that are good at every task lowers the variance that choosing on val adds.
SOUP_SIZES = (2, 3, 5, 8)


def softmax(values: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(values / temperature)``; temperature 0 puts all weight on the maximum."""
    values = np.asarray(values, dtype=np.float64)
    if temperature == 0:
        out = np.zeros_like(values)
        out[int(np.argmax(values))] = 1.0
        return out
    z = (values - values.max()) / temperature
    return np.exp(z) / np.exp(z).sum()


def elite_objectives(
    archives: Archives, k: int, objective: str, experts: dict[str, float]
) -> dict[int, tuple[float, ...]]:
    """Archive ``k``'s elites and their ``objective`` keys on the search split.

    ``experts``: each expert's own search-split score (what retention divides by).
    """
    data = archives.elites(k)
    scores = np.insert(data["measures"], k, data["objective"], axis=1)
    tasks = list(experts)
    return {
        int(e): objective_value(objective, dict(zip(tasks, row.tolist(), strict=True)), experts)
        for e, row in zip(data["elite"], scores, strict=True)
    }


def ranked_by_objective(
    archives: Archives, objective: str, experts: dict[str, float]
) -> list[tuple[int, float]]:
    """Every elite of every archive once, by ``objective`` (search split), best first."""
    keys: dict[int, tuple[float, ...]] = {}
    for k in range(len(experts)):
        keys |= elite_objectives(archives, k, objective, experts)
    ranked = sorted(keys, key=lambda e: (tuple(-v for v in keys[e]), e))
    return [(e, keys[e][0]) for e in ranked]


def _best_by_objective(
    archives: Archives, k: int, objective: str, experts: dict[str, float]
) -> tuple[int, float]:
    keys = elite_objectives(archives, k, objective, experts)
    elite = max(keys, key=lambda e: (keys[e], -e))
    return elite, keys[elite][0]


def _schedule(final: Any) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """The final choice's pools, softmax temperatures and soup sizes for the ``final`` config."""
    if final.method == "validation":
        return ("best_quality", "best_objective"), VALIDATION_TEMPERATURES, SOUP_SIZES
    return ("best_quality",), (1.0,), ()


def most_candidates(final: Any) -> int:
    """How many candidates :func:`final_candidates` makes at most (fewer: too few elites)."""
    pools, temperatures, soup_sizes = _schedule(final)
    return len(pools) * len(temperatures) + len(soup_sizes)


def final_evaluations(final: Any, n_tasks: int) -> int:
    """The val evaluations the final choice costs at most: the candidates and the experts.

    A single candidate is taken as it is: nothing is scored (:func:`choose_final`).
    """
    n = most_candidates(final)
    return n + n_tasks if n > 1 else 0


def final_candidates(
    final: Any,
    archives: Archives,
    tasks: Sequence[str],
    genome_of: Callable[[int], Genome],
    experts: dict[str, float],
) -> list[dict[str, Any]]:
    """The final model's candidates (``final``: the run's ``final`` config).

    ``softmax`` (the paper): ``θ_base + Σ_k β_k τ*_k`` over every archive's best elite,
    ``β = softmax`` of their qualities. ``validation`` adds: that merge at several softmax
    temperatures (temperature 0: the single best elite), the same merges of each archive's
    elite with the best ``final.objective`` (the archives hold elites good at every task, not
    only at their own; their search-split scores are already known), and uniform soups of the
    2, 3, 5 and 8 elites with the best objectives over all archives. ``genome_of``: an elite's
    genome; ``experts``: each expert's own search-split score.
    """
    K = len(tasks)
    pool_names, temperatures, soup_sizes = _schedule(final)
    pools = {"best_quality": [archives.best(k) for k in range(K)]}
    if "best_objective" in pool_names:
        pools["best_objective"] = [
            _best_by_objective(archives, k, final.objective, experts) for k in range(K)
        ]
    candidates = []
    for pool, elites in pools.items():
        parents = [genome_of(e) for e, _ in elites]
        weights = np.array([q for _, q in elites])
        for temperature in temperatures:
            beta = softmax(weights, temperature)
            genome = Genome.weighted_sum(
                parents,
                torch.tensor(beta).float(),
                op="final",
                beta=beta.tolist(),
                parent_ids=[p.id for p in parents],
            )
            candidates.append(
                {
                    "pool": pool,
                    "temperature": temperature,
                    "genome": genome,
                    "beta": dict(zip(tasks, beta.tolist(), strict=True)),
                    "elites": {t: p.id for t, p in zip(tasks, parents, strict=True)},
                }
            )
    if soup_sizes:
        ranked = ranked_by_objective(archives, final.objective, experts)
        for m in soup_sizes:
            if len(ranked) < m:
                break
            parents = [genome_of(e) for e, _ in ranked[:m]]
            genome = Genome.weighted_sum(
                parents,
                torch.full((m,), 1.0 / m),
                op="final",
                soup=m,
                parent_ids=[p.id for p in parents],
            )
            candidates.append(
                {
                    "pool": f"soup_{m}",
                    "temperature": None,
                    "genome": genome,
                    "beta": [1.0 / m] * m,
                    "elites": [p.id for p in parents],
                }
            )
    return candidates


def choose_final(
    candidates: list[dict[str, Any]], chooser: Chooser, final: Any
) -> tuple[Genome, dict[str, Any]]:
    """The candidate with the best objective on val (the only one, unscored, if alone).

    Returns the genome and ``final.json``'s record; its ``evaluations`` counts this choice's
    (the candidates and, the first time, the experts on val).
    """
    before = chooser.evaluations + chooser.expert_evaluations
    if len(candidates) > 1:
        progress(f"final model: {len(candidates)} candidates on val ({final.objective})")
        judged = chooser.judge([c["genome"] for c in candidates])
        for candidate, (key, scores) in zip(candidates, judged, strict=True):
            candidate["val_objective"], candidate["val_scores"] = list(key), scores
            candidate["val_average"] = float(np.mean(scores))
    chosen = max(candidates, key=lambda c: c.get("val_objective", [0.0]))
    info = {
        "evaluations": chooser.evaluations + chooser.expert_evaluations - before,
        "method": final.method,
        "objective": final.objective,
        **{k: v for k, v in chosen.items() if k != "genome"},
        "candidates": [
            {k: v for k, v in c.items() if k not in ("genome", "elites")} for c in candidates
        ],
    }
    return chosen["genome"], info


def final_model(
    final: Any,
    archives: Archives,
    tasks: list[str],
    genome_of: Callable[[int], Genome],
    expert_scores: list[list[float]],
    chooser: Chooser,
) -> tuple[Genome, dict[str, Any]]:
    """The final model of a run's archives, and how it was chosen.

    ``expert_scores``: the experts' rows on the search split (retention divides by them).
    """
    searched = {t: expert_scores[j][j] for j, t in enumerate(tasks)}
    candidates = final_candidates(final, archives, tasks, genome_of, searched)
    return choose_final(candidates, chooser, final)


def baselines(
    space: WeightSpace, chooser: Chooser, final: Any
) -> tuple[dict[str, Genome], dict[str, Any]]:
    """The report's reference models and how the merges among them were chosen on val.

    The base, each expert, task arithmetic at the best of ``final.lambdas`` and, with
    ``final.ties_densities``, TIES at the best density: the run's report and ``cycleqd
    compare`` both choose them here.
    """
    methods = {"base": Genome.base(space)}
    methods |= {f"expert_{t}": Genome.expert(space, k) for k, t in enumerate(space.expert_names)}
    lam, methods["task_arithmetic_best"] = best_task_arithmetic(space, chooser, final.lambdas)
    info: dict[str, Any] = {"task_arithmetic_lambda": lam}
    if final.ties_densities:
        info["ties_density"], methods["ties"] = best_ties(space, chooser, final.ties_densities)
    return methods, info


def score_report(
    methods: dict[str, Genome],
    evaluator: Evaluator,
    space: WeightSpace,
    source: ModelSource,
    materializer: Materializer,
    final: Any,
) -> dict[str, Any]:
    """Every method on the test split, and ``final.report``'s metrics: ``summary.json``.

    The metrics are scored in this process on ``materializer`` (never during evolution).
    """
    tasks = list(evaluator.tasks)
    progress(f"report: scoring {len(methods)} models on the test split")
    result = evaluator.evaluate(list(methods.values()), "test")
    rows = {
        name: dict(zip(tasks, row.tolist(), strict=True))
        for name, row in zip(methods, result.scores, strict=True)
    }
    items = dict(zip(methods, result.items, strict=True))
    report = final.report
    if report:
        reporter = LocalEvaluator(space, source, build_scorers(report), materializer=materializer)
        extra = reporter.evaluate(list(methods.values()), "test")
        for name, row in zip(methods, extra.scores, strict=True):
            rows[name] |= {m.name: float(v) for m, v in zip(report, row, strict=True)}
    return report_summary(tasks, rows, items, [m.name for m in report])


def report_summary(
    tasks: list[str],
    rows: dict[str, dict[str, float]],
    items: dict[str, dict[str, tuple[float, ...]]],
    report: list[str],
    reference: str = "cycleqd_final",
) -> dict[str, Any]:
    """``summary.json``: every method's test scores, average and worst-task retention.

    With 95% bootstrap intervals over requests and the paired differences
    ``reference − method`` (:func:`cycleqd.stats.report_intervals`).
    """
    experts = {t: f"expert_{t}" for t in tasks}
    own = {t: rows[experts[t]][t] for t in tasks if experts[t] in rows}
    for row in rows.values():
        scores = [row[t] for t in tasks]
        row["average"] = float(np.mean(scores))
        if len(own) == len(tasks):
            row["retention"] = retention({t: row[t] for t in tasks}, own)
    return {
        "split": "test",
        "tasks": tasks,
        "report": report,
        "methods": rows,
        "intervals": report_intervals(
            items, tasks, experts, reference if reference in rows else None
        ),
    }
