"""``cycleqd compare``: CycleQD beside what users would otherwise use, over several seeds.

On one config's experts and evaluation budget, every method chooses its model on the val split and
is reported on the test split (each task, their average, and the config's report metrics):

* ``base``, ``expert_<task>``: the models as they are;
* ``task_arithmetic``: ``θ_base + λ Σ_k τ_k``, λ swept on val (``final.lambdas``);
* ``ties``, ``dare_ties``: mergekit's methods over the experts, density swept on val
  (``final.ties_densities``); DARE's drop masks follow the seed;
* ``cma_es``: a single-objective CMA-ES (the ``cma`` package) over per-expert coefficients
  ``θ_base + Σ_k λ_k τ_k``, maximising the objective on the split CycleQD's children are scored
  on, with CycleQD's budget of evaluations (:func:`evaluation_budget`);
* ``multitask_finetune``: the base fine-tuned on the union of the experts' training data for as
  many steps as all experts together (sources that train their experts: ``tinylm``);
* the ablation chain of the paper's Table 2, each a full run: ``fixed_axes`` (no cycling: task 0's
  archive is the only one parents come from; Gaussian mutation; uniform selection), ``cycling``
  (+ cycling), ``svd_mutation`` (+ the config's SVD mutation), ``cycleqd`` (+ elite sampling: the
  config as it is).

The Gaussian mutation of the ablation is matched to the SVD mutation's size: its ``std`` is
``rate / 2`` times the experts' task vectors' root mean square (``rate`` of the config's
mutation, 0.1 if it has none), the expected size of ``svd_expert``'s perturbation.

Every choice on val (λ, density, CMA-ES's search, the final model) maximises the config's
``final.objective``. Seeds vary the evolution and, where the source builds its experts from a
seeded recipe (``tinylm``, ``digits``), the expert build too: seed ``cfg.seed + s`` builds with
the recipe's seed plus ``s``, so the spread over seeds includes the experts' own. Methods without
a seed of their own (base, experts, task arithmetic, TIES) then run once per build; with fixed
experts, once. Each cell keeps its per-request test results: every figure has its 95% bootstrap
interval over requests, and ``differences`` gives ``cycleqd − method`` paired on the same requests
and seed. Every result is written as it is made (``cells/``) so a killed comparison resumes where
it stopped; the CycleQD runs are ordinary run folders (``runs/``). The outputs:
``compare.json``, ``compare.md`` and ``compare.png`` (average per method with error bars, and
per task).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cycleqd.config import ConfigError, RunConfig
from cycleqd.engine.choice import Chooser, task_arithmetic_grid, ties_grid
from cycleqd.engine.evolver import Evolver
from cycleqd.engine.final import SOUP_SIZES, VALIDATION_TEMPERATURES
from cycleqd.stats import interval, resampled_columns, retention
from cycleqd.weights._io import atomic_write_json, atomic_write_text
from cycleqd.weights.genome import Genome

__all__ = ["ABLATIONS", "compare", "evaluation_budget", "methods_of"]

#: The ablation chain, in the paper's order; each entry's evolution overrides.
ABLATIONS = ("fixed_axes", "cycling", "svd_mutation", "cycleqd")
#: Methods whose result does not depend on the evolution's seed (computed once per expert build).
STATIC = ("base", "task_arithmetic", "ties")
#: Model sources that build their experts from a seeded recipe.
BUILDERS = ("tinylm", "digits")
#: The method the others are compared with, pairwise on the same requests.
REFERENCE = "cycleqd"


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
    final = 0
    if cfg.final.method == "validation":
        final = len(cfg.tasks) + 2 * len(VALIDATION_TEMPERATURES) + len(SOUP_SIZES)
    return len(cfg.tasks) + evo.generations * evo.batch_size + final


def builds_experts(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s experts are built from a seeded recipe (so each seed builds its own)."""
    return cfg.models.source in BUILDERS


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` at ``seed``: the evolution's seed and, for built experts, the build's seed.

    Seed ``cfg.seed + s`` builds its experts with the recipe's seed plus ``s``, so that the
    spread over seeds includes the experts' own.
    """
    data = cfg.model_dump() | {"seed": seed}
    if builds_experts(cfg):
        params = dict(cfg.models.params)
        params["seed"] = int(params.get("seed", 0)) + seed - cfg.seed
        data["models"] = cfg.models.model_dump() | {"params": params}
    return RunConfig.model_validate(data)


def _ablation(cfg: RunConfig, name: str, seed: int, std: float) -> RunConfig:
    evo = cfg.evolution.model_dump()
    gaussian = {"name": "gaussian", "params": {"std": std}}
    uniform = {"name": "uniform", "params": {}}
    if name == "fixed_axes":
        evo |= {"cycle": False, "mutation": gaussian, "selection": uniform}
    elif name == "cycling":
        evo |= {"cycle": True, "mutation": gaussian, "selection": uniform}
    elif name == "svd_mutation":
        evo |= {"cycle": True, "selection": uniform}
    data = seeded(cfg, seed).model_dump() | {"evolution": evo, "name": f"{cfg.name}-{name}"}
    data["final"] = cfg.final.model_dump() | {"report": [], "ties_densities": []}
    return RunConfig.model_validate(data)


class _Context:
    """What one process needs for one expert build's cells: weights, scorers, evaluators."""

    def __init__(self, cfg: RunConfig, root: Path) -> None:
        from cycleqd.evaluation.local import LocalEvaluator
        from cycleqd.models.sources import load_models
        from cycleqd.scorers import SCORERS

        self.cfg, self.root = cfg, root
        self.source, self.space = load_models(cfg)
        self.scorers = {t.name: SCORERS.build(t.scorer, **t.params) for t in cfg.tasks}
        self.extra = {m.name: SCORERS.build(m.scorer, **m.params) for m in cfg.final.report}
        self.val = LocalEvaluator(self.space, self.source, self.scorers)
        self.report = LocalEvaluator(
            self.space, self.source, self.extra, materializer=self.val.materializer
        )
        # every method chooses on val by the run's objective, as the run's final choice does
        self.chooser = Chooser(self.val, self.space, cfg.final.objective)

    def test_row(
        self, genome: Genome, val: Any = None, report: Any = None
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """The genome's test scores (every task, then every report metric), and per request."""
        result = (val or self.val).evaluate([genome], "test")
        out = dict(zip(self.cfg.task_names, map(float, result.scores[0]), strict=True))
        if self.extra:
            extra = (report or self.report).evaluate([genome], "test").scores[0]
            out |= dict(zip(self.extra, map(float, extra), strict=True))
        return out, {t: list(v) for t, v in result.items[0].items()}

    def gaussian_std(self) -> float:
        """``rate / 2`` × the task vectors' RMS: the expected size of ``svd_expert``'s step."""
        rate = float(self.cfg.evolution.mutation.params.get("rate", 0.1))
        total, count = 0.0, 0
        for k in range(self.space.num_experts):
            for name in self.space.tensor_names:
                tau = self.space.task_vector(k, name).float()
                total += float(tau.pow(2).sum())
                count += tau.numel()
        return rate / 2 * math.sqrt(total / count)


_CONFIG: tuple[RunConfig, Path] | None = None
_CONTEXTS: dict[int, _Context] = {}


def _init(config_json: str, root: str, threads: int) -> None:
    global _CONFIG
    torch.set_num_threads(threads)  # before the sandbox pool is sized from it
    _CONFIG = (RunConfig.model_validate_json(config_json), Path(root))
    _CONTEXTS.clear()


def _context(seed: int) -> _Context:
    """The context of the experts built for ``seed`` (one build for all seeds if fixed)."""
    assert _CONFIG is not None
    cfg, root = _CONFIG
    build = seed if builds_experts(cfg) else cfg.seed
    if build not in _CONTEXTS:
        _CONTEXTS.clear()  # one build's weights in memory at a time
        _CONTEXTS[build] = _Context(seeded(cfg, build), root)
    return _CONTEXTS[build]


def _static(ctx: _Context, genome: Genome) -> tuple[Any, dict[str, Any]]:
    return ctx.test_row(genome), {}


def _task_arithmetic(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
    grid = task_arithmetic_grid(ctx.space, ctx.cfg.final.lambdas)
    lam, _ = ctx.chooser.best(grid)
    return ctx.test_row(grid[lam]), {"lambda": lam}


def _ties(method: str) -> Callable[[_Context, int], tuple[Any, dict[str, Any]]]:
    def run(ctx: _Context, seed: int) -> tuple[Any, dict[str, Any]]:
        densities = ctx.cfg.final.ties_densities or [0.2, 0.4, 0.6, 0.8, 1.0]
        grid = ties_grid(ctx.space, densities, method, seed)
        density, _ = ctx.chooser.best(grid)
        return ctx.test_row(grid[density]), {"density": density}

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
    if name in METHODS:
        return METHODS[name]
    return lambda ctx, seed: _evolve(ctx, name, seed)  # CycleQD and its ablations


def _cell(method: str, seed: int) -> dict[str, Any]:
    """Run one method at one seed; returns its record (also written to ``cells/``)."""
    ctx = _context(seed)
    start = time.perf_counter()
    judged = ctx.chooser.evaluations
    row, info = _method(method)(ctx, seed)
    test, items = row
    record = {
        "method": method,
        "seed": seed,
        "test": test,
        "items": items,
        "val_evaluations": info.pop("val_evaluations", ctx.chooser.evaluations - judged),
        "seconds": round(time.perf_counter() - start, 1),
        **info,
    }
    atomic_write_json(ctx.root / "cells" / f"{method}__{seed}.json", record)
    return record


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
    from cycleqd.evaluation.local import LocalEvaluator
    from cycleqd.suite.tinylm import build_multitask
    from cycleqd.weights.space import WeightSpace

    recipe = ctx.source.recipe
    path = build_multitask(Path(ctx.cfg.cache_dir).expanduser(), recipe, seed)
    space = WeightSpace.from_paths(base=ctx.source.base, experts={"multitask": path})
    val = LocalEvaluator(space, ctx.source, ctx.scorers)
    report = LocalEvaluator(space, ctx.source, ctx.extra, materializer=val.materializer)
    steps = len(ctx.cfg.tasks) * recipe.expert_steps
    return ctx.test_row(Genome.expert(space, 0), val, report), {"steps": steps}


def _evolve(ctx: _Context, method: str, seed: int) -> tuple[Any, dict[str, Any]]:
    from cycleqd.engine.store import RunStore
    from cycleqd.evaluation.local import LocalEvaluator

    cfg = _ablation(ctx.cfg, method, seed, ctx.gaussian_std())
    root = ctx.root / "runs" / f"{method}-seed{seed}"
    if (root / "checkpoint.json").is_file():
        store = RunStore.open(root)
    else:
        shutil.rmtree(root, ignore_errors=True)  # a run killed before its first checkpoint
        store = RunStore.create(root, cfg)
    evolver = Evolver(cfg, store)
    evolver.evolve(resume=True)
    final, info = evolver.final_genome()
    evolver.store.write_json("final.json", info)
    report = LocalEvaluator(
        evolver.space, evolver.source, ctx.extra, materializer=evolver.materializer
    )
    row = ctx.test_row(final, evolver.evaluator, report)
    evolver.close()
    keep = ("pool", "temperature", "val_average", "val_objective")
    out = {"final": {k: info.get(k) for k in keep}, "run": str(root)}
    return row, out | {"val_evaluations": info["evaluations"]}


#: The methods that are neither a single model nor an evolution: name → ``run(ctx, seed)``.
METHODS: dict[str, Callable[[_Context, int], tuple[Any, dict[str, Any]]]] = {
    "task_arithmetic": _task_arithmetic,
    "ties": _ties("ties"),
    "dare_ties": _ties("dare_ties"),
    "cma_es": _cma_es,
    "multitask_finetune": _finetune,
}


def _once(cfg: RunConfig, method: str) -> bool:
    """Whether ``method`` runs at the first seed only (fixed experts, no seed of its own)."""
    return not builds_experts(cfg) and (method in STATIC or method.startswith("expert_"))


def _summarise(cfg: RunConfig, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    tasks = cfg.task_names
    columns = [*tasks, "average", "retention", *(m.name for m in cfg.final.report)]
    experts = {t: f"expert_{t}" for t in tasks}
    # every seed's results, a method run once standing for every seed (the same experts)
    at: dict[int, dict[str, dict[str, Any]]] = {seed: {} for seed in seeds}
    for r in records:
        for seed in seeds if _once(cfg, r["method"]) else [r["seed"]]:
            if seed in at:
                at[seed][r["method"]] = r
    resampled = {
        seed: resampled_columns(
            {m: r.get("items", {}) for m, r in cells.items()}, tasks, experts, seed=0
        )
        for seed, cells in at.items()
    }

    def value(seed: int, method: str, column: str) -> float:
        cells = at[seed]
        row = cells[method]["test"]
        if column == "average":
            return float(np.mean([row[t] for t in tasks]))
        if column == "retention":
            if not all(experts[t] in cells for t in tasks):
                return float("nan")
            return retention(row, {t: cells[experts[t]]["test"][t] for t in tasks})
        return float(row[column])

    methods: dict[str, Any] = {}
    for method in methods_of(cfg):
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        if not rows:
            continue
        own_seeds = [r["seed"] for r in rows]
        stats: dict[str, Any] = {}
        for column in columns:
            values = [value(seed, method, column) for seed in own_seeds]
            stats[column] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
                # over requests, at each seed: what one seed's figure can resolve
                "intervals": [
                    interval(resampled[seed][method][column])
                    for seed in own_seeds
                    if column in resampled[seed].get(method, {})
                ],
            }
        methods[method] = {
            "seeds": own_seeds,
            "scores": stats,
            "val_evaluations": [r["val_evaluations"] for r in rows],
            "seconds": [r["seconds"] for r in rows],
        }
    differences = _differences(cfg, at, resampled, seeds, value)
    return {
        "config": cfg.name,
        "split": "test",
        "seeds": seeds,
        "experts_vary_with_seed": builds_experts(cfg),
        "objective": cfg.final.objective,
        "tasks": tasks,
        "columns": columns,
        "evaluation_budget": evaluation_budget(cfg),
        "methods": methods,
        "reference": REFERENCE,
        "differences": differences,
    }


def _differences(
    cfg: RunConfig,
    at: dict[int, dict[str, dict[str, Any]]],
    resampled: dict[int, dict[str, dict[str, np.ndarray]]],
    seeds: list[int],
    value: Callable[[int, str, str], float],
) -> dict[str, Any]:
    """``REFERENCE − method`` per column, paired on the same requests and the same seed.

    ``mean``: over the seeds both ran; ``interval``: the 95% bootstrap interval of that mean
    over requests (each seed's requests resampled, the same indices for both methods);
    ``values``: each seed's difference.
    """
    out: dict[str, Any] = {}
    for method in methods_of(cfg):
        if method == REFERENCE:
            continue
        both = [s for s in seeds if REFERENCE in at[s] and method in at[s]]
        if not both:
            continue
        per_column: dict[str, Any] = {}
        for column in [*cfg.task_names, "average", "retention"]:
            values = [value(s, REFERENCE, column) - value(s, method, column) for s in both]
            samples = [
                resampled[s][REFERENCE][column] - resampled[s][method][column]
                for s in both
                if column in resampled[s].get(REFERENCE, {})
                and column in resampled[s].get(method, {})
            ]
            per_column[column] = {
                "mean": float(np.mean(values)),
                "values": values,
                "interval": interval(np.mean(samples, axis=0))
                if len(samples) == len(both)
                else None,
            }
        out[method] = {"seeds": both, "columns": per_column}
    return out


def _fmt_interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f" [{bounds[0]:+.3f}, {bounds[1]:+.3f}]"


def _markdown(summary: dict[str, Any]) -> str:
    columns = summary["columns"]
    seeds = summary["seeds"]
    varied = "evolution and expert build" if summary["experts_vary_with_seed"] else "evolution"
    lines = [
        f"Test split, mean ± sd over seeds {seeds} ({varied} seeds; one value where a method "
        f"ran once); every choice on val by `{summary['objective']}`; budget "
        f"{summary['evaluation_budget']} evaluations. `retention`: the worst task's score as a "
        "fraction of its expert's; ± after a single value: the 95% interval over requests, "
        "half its width.",
        "",
        "| method | " + " | ".join(columns) + " | val evals |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for method, data in summary["methods"].items():
        cells = []
        for column in columns:
            s = data["scores"][column]
            if len(data["seeds"]) > 1:
                text = f"{s['mean']:.3f} ± {s['sd']:.3f}"
            elif s["intervals"]:
                lo, hi = s["intervals"][0]
                text = f"{s['mean']:.3f} ± {(hi - lo) / 2:.3f}"
            else:
                text = f"{s['mean']:.3f}"
            cells.append(f"**{text}**" if column in ("average", "retention") else text)
        evals = int(np.mean(data["val_evaluations"]))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {evals} |")
    tasks = summary["tasks"]
    diff_columns = [*tasks, "average", "retention"]
    lines += [
        "",
        f"Paired differences `{summary['reference']} − method` on the same test requests (and "
        "the same seed), mean over seeds with its 95% bootstrap interval over requests:",
        "",
        "| method | " + " | ".join(diff_columns) + " |",
        "|---|" + "---|" * len(diff_columns),
    ]
    for method, data in summary["differences"].items():
        cells = []
        for column in diff_columns:
            d = data["columns"][column]
            cells.append(f"{d['mean']:+.3f}{_fmt_interval(d['interval'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["methods"])
    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 2]})
    y = np.arange(len(methods))
    avg = [summary["methods"][m]["scores"]["average"] for m in methods]
    axes[0].barh(y, [a["mean"] for a in avg], xerr=[a["sd"] for a in avg], color="tab:blue")
    axes[0].set(yticks=y, yticklabels=methods, xlabel="test average", title="average over tasks")
    axes[0].invert_yaxis()
    width = 0.8 / len(tasks)
    for j, task in enumerate(tasks):
        s = [summary["methods"][m]["scores"][task] for m in methods]
        axes[1].bar(
            np.arange(len(methods)) + j * width,
            [v["mean"] for v in s],
            width,
            yerr=[v["sd"] for v in s],
            label=task,
        )
    axes[1].set_xticks(np.arange(len(methods)) + width * (len(tasks) - 1) / 2)
    axes[1].set_xticklabels(methods, rotation=45, ha="right")
    axes[1].set(ylabel="test score", title="per task (mean ± sd over seeds)")
    axes[1].legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def compare(
    cfg: RunConfig,
    root: str | Path,
    *,
    seeds: int = 3,
    jobs: int = 1,
    methods: list[str] | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a comparison of ``cfg`` in ``root``; returns the summary.

    Args:
        cfg: the run config whose experts, budget and operators are compared.
        root: the comparison folder (``config.json``, ``cells/``, ``runs/``, outputs).
        seeds: seeds ``cfg.seed, cfg.seed + 1, ...``.
        jobs: processes running cells at once (each uses ``cpu_count // jobs`` threads).
        methods: run only these (default: every method of :func:`methods_of`); the outputs
            show every method that has results in ``root``.
        on_cell: called with each finished cell's record (progress display).

    Raises:
        ConfigError: ``root`` holds a comparison of another config or seed count; an unknown
            method.
    """
    if seeds < 1 or jobs < 1:
        raise ConfigError(f"--seeds and --jobs must be at least 1, got {seeds} and {jobs}")
    cfg.check_names()
    root = Path(root)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    identity = {"config": cfg.model_dump(mode="json"), "seeds": seeds}
    marker = root / "compare-config.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != identity:
            raise ConfigError(
                f"{root} holds a comparison of another config or seed count; choose another "
                "--run-dir, or remove that folder"
            )
    else:
        atomic_write_json(marker, identity)
    known = methods_of(cfg)
    unknown = sorted(set(methods or ()) - set(known))
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; this config's methods: {known}")
    seed_list = [cfg.seed + s for s in range(seeds)]
    todo, records = [], []
    for method in known:
        for seed in seed_list[:1] if _once(cfg, method) else seed_list:
            path = root / "cells" / f"{method}__{seed}.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
            elif methods is None or method in methods:
                todo.append((method, seed))
    # the long cells first, so that parallel processes finish together
    todo.sort(key=lambda cell: cell[0] not in (*ABLATIONS, "cma_es", "multitask_finetune"))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1:
        _init(cfg.model_dump_json(), str(root), torch.get_num_threads())
        for method, seed in todo:
            records.append(_cell(method, seed))
            if on_cell:
                on_cell(records[-1])
    elif todo:
        with ProcessPoolExecutor(
            jobs,
            mp_context=get_context("spawn"),
            initializer=_init,
            initargs=(cfg.model_dump_json(), str(root), threads),
        ) as pool:
            futures = [pool.submit(_cell, method, seed) for method, seed in todo]
            for future in as_completed(futures):
                records.append(future.result())
                if on_cell:
                    on_cell(records[-1])
    summary = _summarise(cfg, records, seed_list)
    atomic_write_json(root / "compare.json", summary)
    atomic_write_text(root / "compare.md", _markdown(summary))
    _plot(summary, root / "compare.png")
    return summary
