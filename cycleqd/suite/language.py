"""Language retention, measured through lm-eval (the paper's Table 3 keeps general ability in view).

A local lm-eval task (written by this module, read by lm-eval's own task loader; nothing comes
from a hub) scores held-out generic text — paragraphs of CPython's bundled documentation topics
that no model of the embedded suite trains on — with ``loglikelihood_rolling``. lm-eval reports
bits per byte; the score is ``2 ** -bits_per_byte``, the geometric mean probability per byte, in
(0, 1] and higher for better retention.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.scorers import ScoringContext, TaskShape
from cycleqd.scorers.lm_eval_tasks import quiet_lm_eval

__all__ = ["LanguageRetention", "TASK"]

TASK = "cycleqd_language"

_TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    {split}: {path}
test_split: {split}
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


class LanguageRetention:
    """Scorer: ``2 ** -bits_per_byte`` on held-out text, computed by lm-eval's ``evaluate``.

    Args:
        documents: paragraphs per split.
        max_length: the model's context for lm-eval's rolling windows.
        batch_size: lm-eval batch size.
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a scoring costs: its documents, read, not generated (the planning hook)."""
        documents = int(params.get("documents", 40))
        return TaskShape(problems=documents, prompt_tokens=128, new_tokens=1)

    def __init__(self, *, documents: int = 40, max_length: int = 128, batch_size: int = 16) -> None:
        from cycleqd.suite.tinylm import generic_text

        paragraphs = generic_text("test")
        if len(paragraphs) < 2 * documents:
            raise CycleQDError(
                f"only {len(paragraphs)} held-out paragraphs: ask for at most "
                f"{len(paragraphs) // 2} documents"
            )
        self.max_length, self.batch_size = max_length, batch_size
        self._dir = Path(tempfile.mkdtemp(prefix="cycleqd-lm-eval-"))
        files = {}
        for split, chunk in (
            ("val", paragraphs[:documents]),
            ("test", paragraphs[documents : 2 * documents]),
        ):
            files[split] = self._dir / f"{split}.jsonl"
            files[split].write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
            (self._dir / f"{TASK}_{split}.yaml").write_text(
                _TASK_YAML.format(task=f"{TASK}_{split}", split=split, path=files[split])
            )
        self.documents = {
            "val": paragraphs[:documents],
            "test": paragraphs[documents : 2 * documents],
        }
        self._manager: Any = None

    takes_context = True

    def _task(self, split: str) -> Any:
        """lm-eval's task object for ``split``'s paragraphs, loaded fresh per call.

        The task manager indexes this scorer's own two task files only (not lm-eval's thousands
        of built-in YAML files, about 10 s a call), once per scorer.
        """
        from lm_eval.tasks import TaskManager, get_task_dict

        if self._manager is None:
            self._manager = TaskManager(include_path=str(self._dir), include_defaults=False)
        return get_task_dict([f"{TASK}_{split}"], self._manager)

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> float:
        """``2 ** -bits_per_byte`` of ``model`` on ``split``'s paragraphs (context: tokenizer)."""
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        tokenizer = context.tokenizer if context is not None else None
        if tokenizer is None:
            raise CycleQDError(
                "LanguageRetention needs the model's tokenizer in the scoring context "
                "(by hand: pass ScoringContext(tokenizer=...))"
            )
        if split not in self.documents:
            raise CycleQDError(f"unknown split {split!r}; use val or test")
        with quiet_lm_eval():
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )
            # lm-eval's evaluate, not simple_evaluate: the same scores without the run record
            # simple_evaluate adds (the environment's package list and a `git describe` that
            # prints to the terminal outside a repository), and no bootstrap of a stderr
            results = evaluate(
                lm=lm,
                task_dict=self._task(split),
                bootstrap_iters=0,
                log_samples=False,
                verbosity="ERROR",
            )
        bits_per_byte = results["results"][f"{TASK}_{split}"]["bits_per_byte,none"]
        return float(2.0**-bits_per_byte)
