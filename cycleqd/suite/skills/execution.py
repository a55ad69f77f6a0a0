"""Execution scoring: run gold programs and answers in the sandbox and compare what they give."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cycleqd.sandbox.box import Limits, Sandbox
from cycleqd.suite.skills.fixtures import shell_fixture, sql_database
from cycleqd.suite.skills.problems import SKILLS, Problem

__all__ = ["LIMITS", "ExecutionMemo", "gold_outputs", "output_key", "score"]


#: Every gold program finishes in milliseconds: an answer that runs for seconds is wrong anyway.
LIMITS = Limits(wall_s=2.0, cpu_s=2)


def _run(
    sandbox: Sandbox, skill: str, programs: Sequence[str], problems: Sequence[Problem]
) -> list[tuple[Any, bool]]:
    """What each program gave, and whether that is its own outcome (``SandboxResult.settled``)."""
    if skill == "code":
        results = sandbox.run(
            "python",
            [{"code": p, "cases": list(q.cases)} for p, q in zip(programs, problems, strict=True)],
            limits=LIMITS,
        )
        return [(r.json(), r.settled) for r in results]
    if skill == "sql":
        results = sandbox.run(
            "sql", [{"code": p} for p in programs], sqlite=sql_database(), limits=LIMITS
        )
        return [(r.json(), r.settled) for r in results]
    results = sandbox.run(
        "shell", [{"code": p} for p in programs], files=shell_fixture(), limits=LIMITS
    )
    return [(r.stdout if r.ok else None, r.settled) for r in results]


def gold_outputs(sandbox: Sandbox, problems: Sequence[Problem]) -> list[Any]:
    """What each problem's gold program gives in ``sandbox`` (scorers compute it once)."""
    outputs: list[Any] = [None] * len(problems)
    for skill in SKILLS:
        idx = [i for i, p in enumerate(problems) if p.skill == skill]
        if idx:
            subset = [problems[i] for i in idx]
            ran = _run(sandbox, skill, [p.gold for p in subset], subset)
            for i, (out, _) in zip(idx, ran, strict=True):
                outputs[i] = out
    return outputs


class ExecutionMemo:
    """What answers gave when executed, by :func:`output_key`: each program runs once.

    What an answer gives depends only on its skill, its text and (code) its test cases: every
    problem of a skill runs against the same fixture tree or database, with no network (an
    answer that prints the clock keeps its first output: it is wrong either way). So an answer
    given before, to this problem or to another, is not run again, and neither is an answer that
    is its problem's gold program (the gold run was that execution). A run the sandbox failed
    (not the answer's own outcome) is not kept.

    Attributes:
        outputs: output by key.
        hits: answers whose output was known (not run).
        lookups: answers looked up.
    """

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, str, str], Any] = {}
        self.hits = self.lookups = 0


def output_key(problem: Problem, answer: str) -> tuple[str, str, str]:
    """What an answer's output depends on: its skill, its text and (code) the problem's cases."""
    return (problem.skill, answer, repr(problem.cases) if problem.skill == "code" else "")


def _verdict(problem: Problem, have: Any, want: Any) -> bool:
    """Whether output ``have`` is the gold program's ``want`` (see :func:`score`)."""
    if have is None or want is None:
        return False
    if problem.skill == "code":
        return all(h.get("ok") for h in have) and have == want
    if problem.skill == "sql":
        ordered = "ORDER BY" in problem.gold.upper()
        rows = (lambda r: r) if ordered else sorted
        return rows(have["rows"]) == rows(want["rows"])
    return have == want


def score(
    sandbox: Sandbox,
    problems: Sequence[Problem],
    answers: Sequence[str],
    gold: Sequence[Any] | None = None,
    memo: ExecutionMemo | None = None,
) -> list[bool]:
    """Whether each answer, executed in ``sandbox``, behaves like its problem's gold program.

    ``code``: every case gives the gold value; ``sql``: the same rows (order-insensitive unless
    the gold query orders them); ``shell``: the same output. An answer that fails, times out or
    errors on any case is wrong. ``gold``: :func:`gold_outputs` of the problems, if known.
    ``memo``: an :class:`ExecutionMemo`, read and filled; with one, an answer whose output is
    known is not run, and answers with the same key in the batch run once. Verdicts are the
    same with or without it.
    """
    gold = gold_outputs(sandbox, problems) if gold is None else gold
    have: list[Any] = [None] * len(problems)
    keys = [output_key(p, a) for p, a in zip(problems, answers, strict=True)]
    pending: dict[tuple[str, str, str], list[int]] = {}
    for i, key in enumerate(keys):
        if memo is None:
            pending[(str(i), "", "")] = [i]  # every answer runs
        elif answers[i] == problems[i].gold:
            have[i] = gold[i]
        elif key in memo.outputs:
            have[i] = memo.outputs[key]
        else:
            pending.setdefault(key, []).append(i)
    if memo is not None:
        memo.lookups += len(problems)
        memo.hits += len(problems) - len(pending)
    for skill in SKILLS:
        runs = [(key, rows) for key, rows in pending.items() if problems[rows[0]].skill == skill]
        if not runs:
            continue
        first = [rows[0] for _, rows in runs]
        got = _run(sandbox, skill, [answers[i] for i in first], [problems[i] for i in first])
        for (key, rows), (out, settled) in zip(runs, got, strict=True):
            for i in rows:
                have[i] = out
            if memo is not None and settled:  # a sandbox failure is not the answer's output
                memo.outputs[key] = out
    return [_verdict(p, h, w) for p, h, w in zip(problems, have, gold, strict=True)]
