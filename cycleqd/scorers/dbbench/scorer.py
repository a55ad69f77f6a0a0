"""SQL tasks over local SQLite databases, scored by execution (DBBench-like, from AgentBench).

The data format is described in :mod:`cycleqd.scorers.dbbench.questions`; the two protocols
(``mode``: ``single``, ``multi``), their prompts and the parsing of replies in
:mod:`cycleqd.scorers.dbbench.conversation`.

Model-written SQL is hostile input and runs only in the sandbox (:mod:`cycleqd.sandbox.box`): a
trusted standard-library runner (``run.py``) builds a fresh in-memory copy of the database from
an SQL script, replays the episode's earlier statements (output discarded; the sandbox keeps no
state between problems), runs the new one and prints JSON: its rows or error and, for a change, a
digest of every table's contents (sorted rows). ``ATTACH`` and ``load_extension`` are refused,
and every statement has a time limit. The host only reads trusted data with ``sqlite3`` (the
inline tables, the ``.sqlite`` files, dumped to SQL scripts).

A select question is solved when the answer (``multi``: the final answer; ``single``: the
statement's rows) equals the expected one as a multiset of values: rows are flattened, numbers
(and strings that are numbers) compared as floats rounded to 4 places, strings stripped. A change
is solved when the tables after the episode have the digest of the tables after ``gold_sql`` on
a fresh copy. Each turn costs one generation call for every active episode and one sandbox call;
gold results are computed once per split.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.models.context import ScoringContext
from cycleqd.sandbox.box import Limits, SandboxResult
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import GenerationSettings, RunMemo, check_split, data_shape
from cycleqd.scorers.dbbench.conversation import (
    MULTI_INSTRUCTION,
    MULTI_QUESTION,
    SINGLE_QUESTION,
    normalize_answer,
    parse_action,
    single_statement,
)
from cycleqd.scorers.dbbench.questions import WHAT, DBQuestion, load_questions

__all__ = ["DBBench"]

CELL_CHARS = 1000  # longer text values are cut in the runner's output
GOLD_ROWS = 1000  # the most rows a gold query's answer may have

#: The trusted runner, sent to the sandbox as ``run.py`` (a real file beside this one, read as
#: text: see its docstring for what it reads and prints).
RUNNER = Path(__file__).with_name("_runner.py").read_text(encoding="utf-8")


@dataclass
class _Gold:
    values: Counter | None = None  # a select question's expected values
    digest: str | None = None  # a change: the tables after gold_sql
    initial: str | None = None  # a change: the tables before anything


@dataclass
class _Episode:
    question: DBQuestion
    messages: list[dict[str, str]]
    steps: list[str] = field(default_factory=list)
    digest: str | None = None
    answer: list[Any] | None = None
    done: bool = False


@dataclass
class _Ran:
    rows: list[list[Any]] | None
    more: bool
    error: str | None
    ran: list[str]
    digest: str | None


def _ran(result: SandboxResult) -> _Ran:
    out = result.json()
    if not isinstance(out, dict):
        why = result.error or (result.stderr.strip()[-300:] or f"exit status {result.returncode}")
        return _Ran(None, False, f"the statement failed: {why}", [], None)
    return _Ran(out["rows"], out["more"], out["error"], out["ran"], out["digest"])


class DBBench:
    """Scorer: the share of SQL questions over SQLite databases a model solves.

    Args:
        val: the questions scored during evolution (JSONL or JSON; see
            :mod:`cycleqd.scorers.dbbench.questions`).
        test: the questions of the final report; default: ``val``.
        limit: at most this many questions per split (the first ones).
        mode: ``single`` (one statement per question) or ``multi`` (AgentBench's protocol).
        max_turns: the most replies of a ``multi`` episode.
        backend: ``transformers``, ``vllm``, a dotted path or a backend object
            (:mod:`cycleqd.generation.backends`).
        backend_params: the backend's parameters.
        max_new_tokens: the longest reply.
        chat_template: a Jinja chat template instead of the tokenizer's (an expert trained with
            its own format).
        max_rows: the rows of a result the model sees (``multi``).
        timeout_s: a statement's time limit in the sandbox.
        memoize: keep every sandbox run by what it ran (the question's database and the whole
            episode's statements so far) and never run one again
            (:class:`~cycleqd.scorers._common.RunMemo`: a run cut by a limit keeps its first
            result).
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs (the planning hook of :mod:`cycleqd.scorers`)."""
        return data_shape(
            params, 100, turns=5, turns_param="max_turns", prompt_tokens=700, new_tokens=256
        )

    def __init__(
        self,
        *,
        val: str,
        test: str | None = None,
        limit: int | None = None,
        mode: str = "multi",
        max_turns: int = 5,
        backend: Any = "transformers",
        backend_params: dict[str, Any] | None = None,
        max_new_tokens: int = 256,
        chat_template: str | None = None,
        max_rows: int = 50,
        timeout_s: float = 2.0,
        memoize: bool = True,
    ) -> None:
        if mode not in ("single", "multi"):
            raise CycleQDError(f"{WHAT}: unknown mode {mode!r}; use single or multi")
        for name, value in (("limit", limit), ("max_turns", max_turns), ("max_rows", max_rows)):
            if value is not None and value < 1:
                raise CycleQDError(f"{WHAT}: {name} must be >= 1, got {value}")
        if timeout_s <= 0:
            raise CycleQDError(f"{WHAT}: timeout_s must be > 0, got {timeout_s}")
        val_questions = load_questions(val, limit=limit)
        self.questions = {
            "val": val_questions,
            "test": val_questions if test is None else load_questions(test, limit=limit),
        }
        self.mode, self.max_turns, self.max_rows = mode, max_turns, max_rows
        self.timeout_s = timeout_s
        self.memo = RunMemo() if memoize else None
        self.generation = GenerationSettings(
            backend=backend,
            backend_params=backend_params,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
        )
        self._gold: dict[str, list[_Gold]] = {}

    # -- prompts

    def messages(self, question: DBQuestion) -> list[dict[str, str]]:
        """The conversation a question starts as (its last message carries the question)."""
        if self.mode == "single":
            text = SINGLE_QUESTION.format(schema=question.schema, question=question.question)
            return [{"role": "user", "content": text}]
        text = MULTI_QUESTION.format(schema=question.schema, question=question.question)
        return [
            {"role": "user", "content": MULTI_INSTRUCTION},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": text},
        ]

    def observation(self, ran: _Ran) -> str:
        """What the model sees of a statement's result."""
        if ran.error is not None:
            return f"Error: {ran.error}"
        rows = [tuple(r) for r in ran.rows or []]
        text = repr(rows)
        if ran.more:
            text += f"\n(only the first {self.max_rows} rows are shown)"
        return text

    # -- the sandbox

    def run(
        self,
        questions: Sequence[DBQuestion],
        steps: Sequence[Sequence[str]],
        *,
        fetch: Sequence[int],
        digest: Sequence[bool],
    ) -> list[_Ran]:
        """Replay each question's ``steps`` on a fresh copy of its database, in one sandbox call.

        The last step's result (at most ``fetch`` rows) is reported; earlier steps' are
        discarded. ``digest``: whether to hash the tables afterwards.
        """
        from cycleqd.sandbox.box import shared_sandbox

        if not questions:
            return []
        statements = max(len(s) for s in steps) + 2
        wall = 5.0 + self.timeout_s * statements
        limits = Limits(wall_s=wall, cpu_s=math.ceil(wall), max_output=4 << 20)
        problems = [
            {
                "code": "python3 -I run.py",
                "files": {
                    "db.sql": q.script,
                    "steps.json": json.dumps(
                        {
                            "steps": list(s),
                            "fetch": f,
                            "seconds": self.timeout_s,
                            "cell": CELL_CHARS,
                            "digest": d,
                        }
                    ),
                },
            }
            for q, s, f, d in zip(questions, steps, fetch, digest, strict=True)
        ]
        sandbox, files = shared_sandbox(), {"run.py": RUNNER}
        if self.memo is None:
            results = sandbox.run("shell", problems, files=files, limits=limits)
        else:
            results = self.memo.run(sandbox, "shell", problems, files=files, limits=limits)
        return [_ran(r) for r in results]

    def gold(self, split: str) -> list[_Gold]:
        """The expected values or tables of each question of ``split`` (computed once).

        Raises:
            CycleQDError: a gold query that fails on its database.
        """
        if split in self._gold:
            return self._gold[split]
        questions = self.questions[split]
        golds = [_Gold() for _ in questions]
        jobs: list[tuple[int, str, list[str]]] = []
        for i, q in enumerate(questions):
            if q.mutation:
                jobs += [(i, "initial", []), (i, "digest", q.gold_sql)]
            elif q.answer is None:
                jobs.append((i, "values", q.gold_sql))
            else:
                golds[i].values = normalize_answer(q.answer)
        ran = self.run(
            [questions[i] for i, _, _ in jobs],
            [steps for _, _, steps in jobs],
            fetch=[GOLD_ROWS] * len(jobs),
            digest=[what != "values" for _, what, _ in jobs],
        )
        for (i, what, _), result in zip(jobs, ran, strict=True):
            q = questions[i]
            failed = result.error or (
                what == "values" and result.rows is None and "it returns no rows"
            )
            if what != "values" and result.digest is None:
                failed = failed or "its tables could not be digested"
            if failed:
                raise CycleQDError(
                    f"{WHAT}: {q.where}: the gold SQL fails on its database ({failed}); fix the "
                    "record's gold_sql"
                )
            if what == "values":
                if result.more:
                    raise CycleQDError(
                        f"{WHAT}: {q.where}: the gold query returns more than {GOLD_ROWS} rows; "
                        "give a narrower question"
                    )
                golds[i].values = normalize_answer(result.rows)
            else:
                setattr(golds[i], what, result.digest)
        self._gold[split] = golds
        return golds

    # -- scoring

    def _single(
        self,
        model: Any,
        questions: list[DBQuestion],
        golds: list[_Gold],
        context: ScoringContext | None,
    ) -> list[bool]:
        conversations = [self.messages(q) for q in questions]
        replies = self.generation.chat(model, conversations, context=context)
        fetch = [
            max(self.max_rows, sum(g.values.values()) + 1) if g.values is not None else 1
            for g in golds
        ]
        ran = self.run(
            questions,
            [[single_statement(r)] for r in replies],
            fetch=fetch,
            digest=[q.mutation for q in questions],
        )
        verdicts = []
        for q, gold, result in zip(questions, golds, ran, strict=True):
            if q.mutation:
                verdicts.append(result.digest is not None and result.digest == gold.digest)
            else:
                verdicts.append(
                    result.error is None
                    and result.rows is not None
                    and not result.more
                    and normalize_answer(result.rows) == gold.values
                )
        return verdicts

    def _multi(
        self,
        model: Any,
        questions: list[DBQuestion],
        golds: list[_Gold],
        context: ScoringContext | None,
    ) -> list[bool]:
        episodes = [
            _Episode(question=q, messages=self.messages(q), digest=g.initial)
            for q, g in zip(questions, golds, strict=True)
        ]
        for turn in range(self.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            replies = self.generation.chat(model, [e.messages for e in active], context=context)
            operating: list[tuple[_Episode, str]] = []
            for episode, reply in zip(active, replies, strict=True):
                episode.messages.append({"role": "assistant", "content": reply})
                action, payload = parse_action(reply)
                if action == "sql":
                    operating.append((episode, payload))
                else:
                    episode.answer, episode.done = payload, True
            if turn == self.max_turns - 1:  # no reply follows: only a change's state matters
                operating = [(e, sql) for e, sql in operating if e.question.mutation]
            ran = self.run(
                [e.question for e, _ in operating],
                [[*e.steps, sql] for e, sql in operating],
                fetch=[self.max_rows] * len(operating),
                digest=[e.question.mutation for e, _ in operating],
            )
            for (episode, _), result in zip(operating, ran, strict=True):
                episode.steps += result.ran
                if episode.question.mutation and (result.ran or result.digest is not None):
                    episode.digest = result.digest
                episode.messages.append({"role": "user", "content": self.observation(result)})
        verdicts = []
        for episode, gold in zip(episodes, golds, strict=True):
            if episode.question.mutation:
                verdicts.append(episode.digest is not None and episode.digest == gold.digest)
            else:
                verdicts.append(
                    episode.answer is not None and normalize_answer(episode.answer) == gold.values
                )
        return verdicts

    def solved(self, model: Any, split: str, context: ScoringContext | None = None) -> list[bool]:
        """Whether the model solves each question of ``split``."""
        check_split(split, WHAT)
        questions, golds = self.questions[split], self.gold(split)
        run = self._single if self.mode == "single" else self._multi
        return run(model, questions, golds, context)

    takes_context = True

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> float:
        """The share of ``split``'s questions solved (``context``: see :mod:`cycleqd.scorers`)."""
        verdicts = self.solved(model, split, context)
        return sum(verdicts) / len(verdicts)
