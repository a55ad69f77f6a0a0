"""The ablation chain of the paper's Table 2, each a full CycleQD run from the config.

``fixed_axes`` (no cycling: task 0's archive is the only one parents come from; Gaussian
mutation; uniform selection), ``cycling`` (+ cycling), ``svd_mutation`` (+ the config's SVD
mutation), ``cycleqd`` (+ elite sampling: the config as it is). The Gaussian mutation's ``std`` is
matched to the SVD mutation's size (:meth:`cycleqd.compare.context._Context.gaussian_std`).
"""

from __future__ import annotations

import shutil
from typing import Any

from cycleqd.compare.context import _Context, seeded
from cycleqd.config import RunConfig
from cycleqd.engine.evolver import Evolver

__all__ = ["ABLATIONS"]

#: The ablation chain, in the paper's order (each a registered comparison method).
ABLATIONS = ("fixed_axes", "cycling", "svd_mutation", "cycleqd")


def _overrides(std: float) -> dict[str, dict[str, Any]]:
    """Each ablation's evolution overrides (``std``: the Gaussian mutation's)."""
    gaussian = {"name": "gaussian", "params": {"std": std}}
    uniform = {"name": "uniform", "params": {}}
    return {
        "fixed_axes": {"cycle": False, "mutation": gaussian, "selection": uniform},
        "cycling": {"cycle": True, "mutation": gaussian, "selection": uniform},
        "svd_mutation": {"cycle": True, "selection": uniform},
        "cycleqd": {},  # the config as it is
    }


def _ablation(cfg: RunConfig, name: str, seed: int, std: float) -> RunConfig:
    evo = cfg.evolution.model_dump() | _overrides(std)[name]
    data = seeded(cfg, seed).model_dump() | {"evolution": evo, "name": f"{cfg.name}-{name}"}
    data["final"] = cfg.final.model_dump() | {"report": [], "ties_densities": []}
    return RunConfig.model_validate(data)


def _evolve(ctx: _Context, method: str, seed: int) -> tuple[Any, dict[str, Any]]:
    from cycleqd.engine.store import RunStore
    from cycleqd.evaluation.factory import local_evaluator

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
    parts = {"source": evolver.source, "space": evolver.space}
    report = local_evaluator(cfg, **parts, scorers=ctx.extra, materializer=evolver.materializer)
    row = ctx.test_row(final, evolver.evaluator, report)
    evolver.close()
    keep = ("pool", "temperature", "val_average", "val_objective")
    out = {"final": {k: info.get(k) for k in keep}, "run": str(root)}
    return row, out | {"val_evaluations": info["evaluations"]}
