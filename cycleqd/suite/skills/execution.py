"""Execution scoring: run gold programs and answers in the sandbox and compare what they give."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cycleqd.sandbox.box import Limits, Sandbox
from cycleqd.suite.skills.fixtures import shell_fixture, sql_database
from cycleqd.suite.skills.problems import SKILLS, Problem

__all__ = ["LIMITS", "gold_outputs", "score", "verdict_key"]


#: Every gold program finishes in milliseconds: an answer that runs for seconds is wrong anyway.
LIMITS = Limits(wall_s=2.0, cpu_s=2)


def _run(
    sandbox: Sandbox, skill: str, programs: Sequence[str], problems: Sequence[Problem]
) -> list[Any]:
    if skill == "code":
        results = sandbox.run(
            "python",
            [{"code": p, "cases": list(q.cases)} for p, q in zip(programs, problems, strict=True)],
            limits=LIMITS,
        )
        return [r.json() for r in results]
    if skill == "sql":
        results = sandbox.run(
            "sql", [{"code": p} for p in programs], sqlite=sql_database(), limits=LIMITS
        )
        return [r.json() for r in results]
    results = sandbox.run(
        "shell", [{"code": p} for p in programs], files=shell_fixture(), limits=LIMITS
    )
    return [r.stdout if r.ok else None for r in results]


def gold_outputs(sandbox: Sandbox, problems: Sequence[Problem]) -> list[Any]:
    """What each problem's gold program gives in ``sandbox`` (scorers compute it once)."""
    outputs: list[Any] = [None] * len(problems)
    for skill in SKILLS:
        idx = [i for i, p in enumerate(problems) if p.skill == skill]
        if idx:
            subset = [problems[i] for i in idx]
            ran = _run(sandbox, skill, [p.gold for p in subset], subset)
            for i, out in zip(idx, ran, strict=True):
                outputs[i] = out
    return outputs


def verdict_key(problem: Problem, answer: str) -> tuple[str, str, str, str, str]:
    """What a verdict depends on: the problem (request, gold program, cases) and the answer."""
    return (problem.skill, problem.prompt, problem.gold, repr(problem.cases), answer)


def score(
    sandbox: Sandbox,
    problems: Sequence[Problem],
    answers: Sequence[str],
    gold: Sequence[Any] | None = None,
    memo: dict[tuple[str, ...], bool] | None = None,
) -> list[bool]:
    """Whether each answer, executed in ``sandbox``, behaves like its problem's gold program.

    ``code``: every case gives the gold value; ``sql``: the same rows (order-insensitive unless
    the gold query orders them); ``shell``: the same output. An answer that fails, times out or
    errors on any case is wrong. ``gold``: :func:`gold_outputs` of the problems, if known.
    ``memo``: verdicts by :func:`verdict_key`, read and filled: an answer given to a problem
    before is not run again (execution is deterministic: the same fixture, no clock, no network).
    """
    gold = gold_outputs(sandbox, problems) if gold is None else gold
    verdicts = [False] * len(problems)
    keys = [verdict_key(p, a) for p, a in zip(problems, answers, strict=True)]
    known = set()
    if memo is not None:
        for i, key in enumerate(keys):
            if key in memo:
                verdicts[i] = memo[key]
                known.add(i)
    for skill in SKILLS:
        idx = [i for i, p in enumerate(problems) if p.skill == skill and i not in known]
        if not idx:
            continue
        subset = [problems[i] for i in idx]
        got = _run(sandbox, skill, [answers[i] for i in idx], subset)
        for i, problem, have in zip(idx, subset, got, strict=True):
            want = gold[i]
            if have is None or want is None:
                continue
            if skill == "code":
                verdicts[i] = all(h.get("ok") for h in have) and have == want
            elif skill == "sql":
                ordered = "ORDER BY" in problem.gold.upper()
                rows = (lambda r: r) if ordered else sorted
                verdicts[i] = rows(have["rows"]) == rows(want["rows"])
            else:
                verdicts[i] = have == want
    if memo is not None:
        memo.update((keys[i], verdicts[i]) for i in range(len(problems)) if i not in known)
    return verdicts
