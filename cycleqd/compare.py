"""``cycleqd compare``: CycleQD beside what users would otherwise use, over several seeds.

On one config's experts and evaluation budget, every method chooses its model on the val split and
is reported on the test split (each task, their average, and the config's report metrics):

* ``base``, ``expert_<task>``: the models as they are;
* ``task_arithmetic``: ``θ_base + λ Σ_k τ_k``, λ swept on val (``final.lambdas``);
* ``ties``, ``dare_ties``: mergekit's methods over the experts, density swept on val
  (``final.ties_densities``); DARE's drop masks follow the seed;
* ``cma_es``: a single-objective CMA-ES (the ``cma`` package) over per-expert coefficients
  ``θ_base + Σ_k λ_k τ_k``, maximising the val average, with CycleQD's budget of val evaluations
  (``K`` seeds + ``generations × batch_size`` children + the final-model candidates);
* ``multitask_finetune``: the base fine-tuned on the union of the experts' training data for as
  many steps as all experts together (sources that train their experts: ``tinylm``);
* the ablation chain of the paper's Table 2, each a full run: ``fixed_axes`` (no cycling: task 0's
  archive is the only one parents come from; Gaussian mutation; uniform selection), ``cycling``
  (+ cycling), ``svd_mutation`` (+ the config's SVD mutation), ``cycleqd`` (+ elite sampling: the
  config as it is).

The Gaussian mutation of the ablation is matched to the SVD mutation's size: its ``std`` is
``rate / 2`` times the experts' task vectors' root mean square (``rate`` of the config's
mutation, 0.1 if it has none), the expected size of ``svd_expert``'s perturbation.

Seed-independent methods (base, experts, task arithmetic, TIES) are computed once. Every result is
written as it is made (``cells/``) so a killed comparison resumes where it stopped; the CycleQD
runs are ordinary run folders (``runs/``). The outputs: ``compare.json``, ``compare.md`` and
``compare.png`` (average per method with error bars, and per task).
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

from cycleqd._io import atomic_write_json, atomic_write_text
from cycleqd.config import ConfigError, RunConfig
from cycleqd.evolver import SOUP_SIZES, VALIDATION_TEMPERATURES, Evolver
from cycleqd.genome import Genome

__all__ = ["ABLATIONS", "compare", "evaluation_budget", "methods_of"]

#: The ablation chain, in the paper's order; each entry's evolution overrides.
ABLATIONS = ("fixed_axes", "cycling", "svd_mutation", "cycleqd")
#: Methods whose result does not depend on the seed (computed once).
STATIC = ("base", "task_arithmetic", "ties")


def methods_of(cfg: RunConfig) -> list[str]:
    """The methods a comparison of ``cfg`` reports, in table order."""
    methods = ["base", *(f"expert_{t}" for t in cfg.task_names), "task_arithmetic", "ties"]
    methods += ["dare_ties", "cma_es"]
    if cfg.models.source == "tinylm":
        methods.append("multitask_finetune")
    return methods + list(ABLATIONS)


def evaluation_budget(cfg: RunConfig) -> int:
    """Val evaluations of one CycleQD run: seeds, children, final-model candidates."""
    evo = cfg.evolution
    final = 0
    if cfg.final.method == "validation":
        final = 2 * len(VALIDATION_TEMPERATURES) + len(SOUP_SIZES)
    return len(cfg.tasks) + evo.generations * evo.batch_size + final


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
    data = cfg.model_dump() | {"seed": seed, "evolution": evo, "name": f"{cfg.name}-{name}"}
    data["final"] = cfg.final.model_dump() | {"report": [], "ties_densities": []}
    return RunConfig.model_validate(data)


class _Context:
    """What one process needs for its cells: the weight space, scorers, evaluators."""

    def __init__(self, cfg: RunConfig, root: Path) -> None:
        from cycleqd.evaluator import LocalEvaluator
        from cycleqd.models import load_models
        from cycleqd.scorers import SCORERS

        self.cfg, self.root = cfg, root
        self.source, self.space = load_models(cfg)
        self.scorers = {t.name: SCORERS.build(t.scorer, **t.params) for t in cfg.tasks}
        self.extra = {m.name: SCORERS.build(m.scorer, **m.params) for m in cfg.final.report}
        self.val = LocalEvaluator(self.space, self.source, self.scorers)
        self.report = LocalEvaluator(
            self.space, self.source, self.extra, materializer=self.val.materializer
        )
        self.evaluations = 0

    def val_average(self, genome: Genome, evaluator: Any = None) -> float:
        self.evaluations += 1
        scores = (evaluator or self.val).evaluate([genome], "val").scores[0]
        return float("-inf") if np.isnan(scores).any() else float(scores.mean())

    def test_row(self, genome: Genome, val: Any = None, report: Any = None) -> dict[str, float]:
        """The genome's test scores: every task, then every report metric."""
        row = (val or self.val).evaluate([genome], "test").scores[0]
        out = dict(zip(self.cfg.task_names, map(float, row), strict=True))
        if self.extra:
            extra = (report or self.report).evaluate([genome], "test").scores[0]
            out |= dict(zip(self.extra, map(float, extra), strict=True))
        return out

    def best_on_val(self, candidates: dict[Any, Genome]) -> tuple[Any, Genome]:
        scored = [(self.val_average(g), -i, key) for i, (key, g) in enumerate(candidates.items())]
        key = max(scored)[2]
        return key, candidates[key]

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


_CONTEXT: _Context | None = None


def _init(config_json: str, root: str, threads: int) -> None:
    global _CONTEXT
    torch.set_num_threads(threads)  # before the sandbox pool is sized from it
    _CONTEXT = _Context(RunConfig.model_validate_json(config_json), Path(root))


def _cell(method: str, seed: int) -> dict[str, Any]:
    """Run one method at one seed; returns its record (also written to ``cells/``)."""
    ctx = _CONTEXT
    assert ctx is not None
    start = time.perf_counter()
    ctx.evaluations = 0
    info: dict[str, Any] = {}
    experts = [Genome.expert(ctx.space, k) for k in range(len(ctx.cfg.tasks))]
    K = len(experts)
    if method == "base":
        row = ctx.test_row(Genome.base(ctx.space))
    elif method.startswith("expert_"):
        row = ctx.test_row(experts[ctx.cfg.task_names.index(method.removeprefix("expert_"))])
    elif method == "task_arithmetic":
        grid = {
            lam: Genome.linear(ctx.space, torch.full((K,), lam)) for lam in ctx.cfg.final.lambdas
        }
        info["lambda"], genome = ctx.best_on_val(grid)
        row = ctx.test_row(genome)
    elif method in ("ties", "dare_ties"):
        densities = ctx.cfg.final.ties_densities or [0.2, 0.4, 0.6, 0.8, 1.0]
        grid = {
            d: Genome.merged(
                method,
                experts,
                parameters={"density": d},
                weights=torch.ones(K, experts[0].num_tensors),
                seed=seed,
                op=f"{method}_baseline",
            )
            for d in densities
        }
        info["density"], genome = ctx.best_on_val(grid)
        row = ctx.test_row(genome)
    elif method == "cma_es":
        row, info = _cma_es(ctx, seed)
    elif method == "multitask_finetune":
        row, info = _finetune(ctx, seed)
    else:
        row, info = _evolve(ctx, method, seed)
    record = {
        "method": method,
        "seed": seed,
        "test": row,
        "val_evaluations": ctx.evaluations,
        "seconds": round(time.perf_counter() - start, 1),
        **info,
    }
    atomic_write_json(ctx.root / "cells" / f"{method}__{seed}.json", record)
    return record


def _cma_es(ctx: _Context, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    import cma

    K = len(ctx.cfg.tasks)
    budget = evaluation_budget(ctx.cfg)
    es = cma.CMAEvolutionStrategy(
        [0.5] * K,
        0.3,
        {"seed": seed + 1, "bounds": [0.0, 2.0], "verbose": -9, "maxfevals": budget},
    )
    best, best_x = float("-inf"), np.full(K, 0.5)
    while ctx.evaluations < budget:
        xs = es.ask()[: budget - ctx.evaluations]
        losses = []
        for x in xs:
            value = ctx.val_average(Genome.linear(ctx.space, torch.tensor(x).float()))
            losses.append(-value if math.isfinite(value) else 1.0)
            if value > best:
                best, best_x = value, np.asarray(x)
        if len(xs) < es.popsize:
            break
        es.tell(xs, losses)
    genome = Genome.linear(ctx.space, torch.tensor(best_x).float())
    return ctx.test_row(genome), {"coefficients": best_x.tolist(), "val_average": best}


def _finetune(ctx: _Context, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    from cycleqd.evaluator import LocalEvaluator
    from cycleqd.tinylm import build_multitask
    from cycleqd.weights import WeightSpace

    recipe = ctx.source.recipe
    path = build_multitask(Path(ctx.cfg.cache_dir).expanduser(), recipe, seed)
    space = WeightSpace.from_paths(base=ctx.source.base, experts={"multitask": path})
    val = LocalEvaluator(space, ctx.source, ctx.scorers)
    report = LocalEvaluator(space, ctx.source, ctx.extra, materializer=val.materializer)
    steps = len(ctx.cfg.tasks) * recipe.expert_steps
    return ctx.test_row(Genome.expert(space, 0), val, report), {"steps": steps}


def _evolve(ctx: _Context, method: str, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    from cycleqd.evaluator import LocalEvaluator
    from cycleqd.store import RunStore

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
    ctx.evaluations = evolver.evaluations + len(info["candidates"]) * (len(info["candidates"]) > 1)
    report = LocalEvaluator(
        evolver.space, evolver.source, ctx.extra, materializer=evolver.materializer
    )
    row = ctx.test_row(final, evolver.evaluator, report)
    evolver.close()
    keep = ("pool", "temperature", "val_average")
    return row, {"final": {k: info.get(k) for k in keep}, "run": str(root)}


def _summarise(cfg: RunConfig, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    columns = [*cfg.task_names, "average", *(m.name for m in cfg.final.report)]
    methods: dict[str, Any] = {}
    for method in methods_of(cfg):
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        if not rows:
            continue
        stats: dict[str, Any] = {}
        for column in columns:
            if column == "average":
                values = [float(np.mean([r["test"][t] for t in cfg.task_names])) for r in rows]
            else:
                values = [r["test"][column] for r in rows]
            stats[column] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
            }
        methods[method] = {
            "seeds": [r["seed"] for r in rows],
            "scores": stats,
            "val_evaluations": [r["val_evaluations"] for r in rows],
            "seconds": [r["seconds"] for r in rows],
        }
    return {
        "config": cfg.name,
        "split": "test",
        "seeds": seeds,
        "tasks": cfg.task_names,
        "columns": columns,
        "evaluation_budget": evaluation_budget(cfg),
        "methods": methods,
    }


def _markdown(summary: dict[str, Any]) -> str:
    columns = summary["columns"]
    lines = [
        f"Test split, mean ± sd over seeds {summary['seeds']} (one value where the method does "
        f"not depend on the seed); budget {summary['evaluation_budget']} val evaluations.",
        "",
        "| method | " + " | ".join(columns) + " | val evals |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for method, data in summary["methods"].items():
        cells = []
        for column in columns:
            s = data["scores"][column]
            text = f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if len(data["seeds"]) > 1 else "")
            cells.append(f"**{text}**" if column == "average" else text)
        evals = int(np.mean(data["val_evaluations"]))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {evals} |")
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
        for seed in (
            seed_list[:1] if method in STATIC or method.startswith("expert_") else seed_list
        ):
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
