"""What one process needs for one expert build's cells: the run's seeds, weights and evaluators.

A process of a comparison holds the config it was started with (:func:`_init`) and the context of
one expert build at a time (:func:`_context`): the weights, the scorers, the val and report
evaluators and the chooser every method chooses on val with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cycleqd.config import RunConfig
from cycleqd.engine.choice import Chooser
from cycleqd.weights.genome import Genome

__all__ = ["BUILDERS", "builds_experts", "seeded"]

#: Model sources that build their experts from a seeded recipe.
BUILDERS = ("tinylm", "digits")


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


class _Context:
    """What one process needs for one expert build's cells: weights, scorers, evaluators."""

    def __init__(self, cfg: RunConfig, root: Path) -> None:
        from cycleqd.evaluation.factory import build_scorers, local_evaluator
        from cycleqd.models.sources import load_models

        self.cfg, self.root = cfg, root
        self.source, self.space = load_models(cfg)
        self.scorers = build_scorers(cfg.tasks)
        self.extra = build_scorers(cfg.final.report)
        parts = {"source": self.source, "space": self.space}
        self.val = local_evaluator(cfg, **parts, scorers=self.scorers)
        self.report = local_evaluator(
            cfg, **parts, scorers=self.extra, materializer=self.val.materializer
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
