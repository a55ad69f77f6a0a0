"""Language retention on lm-eval tasks by name (the paper's Table 3: MMLU, GSM8K, ...).

The tasks come from lm-eval's registry, extended by the user's own task folder
(``include_path``: YAML task definitions whose data are local files). Nothing here downloads: the
datasets library runs offline unless the user's environment says otherwise, so a task whose data
is not on the machine fails with lm-eval's message.

The score is the mean over the split's tasks of one metric (``acc,none`` by default) that must
lie in [0, 1]; perplexity-like metrics need a transformation the user writes as a scorer of
their own (see :class:`cycleqd.suite.language.LanguageRetention`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.models.context import ScoringContext
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import check_split

__all__ = ["LmEvalTasks", "quiet_lm_eval"]

WHAT = "lm_eval"


def _names(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """Run lm-eval offline and quietly; errors still raise.

    lm-eval and datasets report progress and warnings on stderr for every call: a scorer that
    runs once per model would bury the run's own display.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class LmEvalTasks:
    """Scorer: the mean of one metric over lm-eval tasks, through ``lm_eval.simple_evaluate``.

    Args:
        tasks: task (or group) names scored on both splits.
        val_tasks: the tasks of the val split (evolution), instead of ``tasks``.
        test_tasks: the tasks of the test split (the final report), instead of ``tasks``.
        include_path: a folder of the user's own task YAML files, added to lm-eval's registry.
        metric: the result key averaged (``acc,none``, ``exact_match,strict-match``, ...).
        limit: documents per task (``None``: all).
        num_fewshot: few-shot examples (``None``: each task's default).
        batch_size: lm-eval's batch size.
        max_length: the model's context for lm-eval (``None``: the model's).
        apply_chat_template: wrap requests in the tokenizer's chat template.
        lm: a callable ``model -> lm_eval LM`` used instead of lm-eval's ``HFLM`` wrapper of
            the resident model (a dotted path in a config).
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs (the planning hook of :mod:`cycleqd.scorers`)."""
        limited = bool(params.get("limit"))
        assumed = [] if limited else ["1000 documents per task (no limit set)"]
        return TaskShape(problems=1000, prompt_tokens=512, new_tokens=1, assumed=assumed)

    def __init__(
        self,
        *,
        tasks: str | list[str] | None = None,
        val_tasks: str | list[str] | None = None,
        test_tasks: str | list[str] | None = None,
        include_path: str | None = None,
        metric: str = "acc,none",
        limit: int | None = None,
        num_fewshot: int | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        apply_chat_template: bool = False,
        lm: Callable[[Any], Any] | str | None = None,
    ) -> None:
        self.tasks = {
            "val": _names(val_tasks) or _names(tasks),
            "test": _names(test_tasks) or _names(tasks),
        }
        for split, names in self.tasks.items():
            if not names:
                raise CycleQDError(
                    f"{WHAT}: no tasks for the {split} split: give `tasks` (both splits) or "
                    "`val_tasks` and `test_tasks`"
                )
        if include_path is not None and not Path(include_path).expanduser().is_dir():
            raise CycleQDError(f"{WHAT}: include_path {include_path} is not a folder")
        if "," not in metric:
            raise CycleQDError(
                f"{WHAT}: metric {metric!r} needs its filter, as lm-eval reports it "
                "(for example 'acc,none' or 'exact_match,strict-match')"
            )
        self.include_path = None if include_path is None else str(Path(include_path).expanduser())
        self.metric, self.limit, self.num_fewshot = metric, limit, num_fewshot
        self.batch_size, self.max_length = batch_size, max_length
        self.apply_chat_template = apply_chat_template
        if isinstance(lm, str):
            from cycleqd.scorers import SCORERS

            lm = SCORERS.import_path(lm)
        self.lm = lm
        self._manager: Any = None
        self.last_results: dict[str, float] = {}

    def _wrap(self, model: Any, context: ScoringContext | None) -> Any:
        if self.lm is not None:
            return self.lm(model)
        from lm_eval.models.huggingface import HFLM

        tokenizer = context.tokenizer if context is not None else None
        if tokenizer is None:
            raise CycleQDError(
                f"{WHAT} needs the model's tokenizer in the scoring context: put the tokenizer "
                "files in the base model's directory (by hand: pass ScoringContext(tokenizer=...))"
            )
        extra = {} if self.max_length is None else {"max_length": self.max_length}
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, **extra)

    takes_context = True

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> float:
        """The mean of ``metric`` over the split's tasks (``context``: its tokenizer)."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        check_split(split, WHAT)
        with quiet_lm_eval():
            if self._manager is None:
                self._manager = TaskManager(include_path=self.include_path)
            known = set(self._manager.all_tasks)
            unknown = [t for t in self.tasks[split] if t not in known]
            if unknown:
                raise CycleQDError(
                    f"{WHAT}: unknown lm-eval task(s) {unknown}: check the names "
                    "(`lm-eval ls tasks`) or give the folder of your task YAMLs as "
                    "include_path"
                )
            results = lm_eval.simple_evaluate(
                model=self._wrap(model, context),
                tasks=list(self.tasks[split]),
                task_manager=self._manager,
                limit=self.limit,
                num_fewshot=self.num_fewshot,
                apply_chat_template=self.apply_chat_template,
                verbosity="ERROR",
                log_samples=False,
            )
        values = {}
        for task in self.tasks[split]:
            found = results["results"].get(task, {})
            if self.metric not in found:
                have = sorted(k for k in found if "," in k and not k.endswith("_stderr,none"))
                raise CycleQDError(
                    f"{WHAT}: task {task!r} reports no {self.metric!r}; it reports {have}: "
                    "set the scorer's metric to one of them"
                )
            value = float(found[self.metric])
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise CycleQDError(
                    f"{WHAT}: {task} {self.metric} = {value} is not in [0, 1]; choose a metric "
                    "in [0, 1] (accuracy, exact match)"
                )
            values[task] = value
        self.last_results = values
        return sum(values.values()) / len(values)
