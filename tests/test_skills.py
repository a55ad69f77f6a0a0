"""The agent skills: oracle answers score 1, wrong ones 0, test requests are never trained on."""

from __future__ import annotations

import pytest

from cycleqd import CycleQDError
from cycleqd.sandbox import Sandbox
from cycleqd.skills import SKILLS, generate, score


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as box:
        yield box


@pytest.mark.parametrize("skill", SKILLS)
def test_gold_answers_score_one_and_wrong_ones_zero(sandbox, skill):
    problems = generate(skill, "val", 12, seed=3)
    assert score(sandbox, problems, [p.gold for p in problems]) == [True] * 12
    wrong = {"code": "xs[::-1] + [k, 99]", "sql": "SELECT 12345", "shell": "echo nope"}[skill]
    assert score(sandbox, problems, [wrong] * 12) == [False] * 12
    hostile = {
        "code": "__import__('os').system('rm -rf /')",
        "sql": "DROP TABLE employees",
        "shell": "rm -rf ~ / ; :(){ :|:& };:",
    }[skill]
    assert score(sandbox, problems[:2], [hostile] * 2) == [False, False]


def test_splits_are_deterministic_and_test_requests_are_never_trained_on():
    assert generate("sql", "train", 30, seed=1) == generate("sql", "train", 30, seed=1)
    assert generate("sql", "train", 30, seed=1) != generate("sql", "train", 30, seed=2)
    for skill in SKILLS:
        train, val, test = (
            {p.prompt for p in generate(skill, split, n)}
            for split, n in (("train", 2000), ("val", 200), ("test", 200))
        )
        # no val or test request was trained on, and val does not leak test
        assert not train & val and not train & test and not val & test, skill
        assert len(val) >= 15 and len(test) >= 15, skill  # and they are not a handful

    def numbers(split, n):
        return {
            int(w.strip(".?,"))
            for p in generate("sql", split, n)
            for w in p.prompt.split()
            if w.strip(".?,").isdigit() and int(w.strip(".?,")) > 12
        }

    # ages and salaries in test requests are values train and val never contain
    assert numbers("test", 200) == {23, 33, 47, 52, 61, 75000, 85000, 115000}
    assert numbers("val", 200) == {29, 38, 41, 56, 64, 65000, 95000, 135000}
    assert not numbers("test", 200) & (numbers("train", 2000) | numbers("val", 200))
    # ... while every digit k of a code request is trained on, in other combinations
    ks = {p.prompt for p in generate("code", "test", 200)}
    assert {d for d in "23456789" if any(f" {d} " in s or f" {d}." in s for s in ks)} == set(
        "23456789"
    )


def test_unknown_skill_or_split():
    with pytest.raises(CycleQDError, match="unknown skill 'bash'"):
        generate("bash", "train", 1)
    with pytest.raises(CycleQDError, match="unknown split 'dev'"):
        generate("code", "dev", 1)
