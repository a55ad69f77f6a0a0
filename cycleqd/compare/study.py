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
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from cycleqd.compare.ablations import ABLATIONS
from cycleqd.compare.context import _context, _init
from cycleqd.compare.methods import _method, _once, methods_of
from cycleqd.compare.report import _markdown, _plot, _summarise
from cycleqd.config import ConfigError, RunConfig
from cycleqd.weights._io import atomic_write_json, atomic_write_text

__all__ = ["compare"]


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
