"""The agent skills: oracle answers score 1, wrong ones 0, test splits hold unseen values."""

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


def test_splits_are_deterministic_and_test_values_are_unseen():
    assert generate("sql", "train", 30, seed=1) == generate("sql", "train", 30, seed=1)
    assert generate("sql", "train", 30, seed=1) != generate("sql", "train", 30, seed=2)
    for skill in SKILLS:
        train = generate(skill, "train", 400) + generate(skill, "val", 200)
        test = generate(skill, "test", 100)
        seen = {p.prompt for p in train}
        assert not {p.prompt for p in test} & seen, skill  # no test request was trained on

    def numbers(split, n):
        return {
            int(w.strip("."))
            for p in generate("code", split, n)
            for w in p.prompt.split()
            if w.strip(".").isdigit()
        }

    assert numbers("test", 100) == {6, 7, 8, 9}  # values of k a model must copy, never seen
    assert not numbers("test", 100) & (numbers("train", 400) | numbers("val", 200))
    sql_train = {
        (p.gold.split("WHERE")[0], p.prompt.split(" department")[0].split()[-1])
        for p in generate("sql", "train", 500)
        if "department?" in p.prompt
    }
    sql_test = {
        (p.gold.split("WHERE")[0], p.prompt.split(" department")[0].split()[-1])
        for p in generate("sql", "test", 200)
        if "department?" in p.prompt
    }
    assert sql_test and not sql_test & sql_train  # held-out (template, department) pairs


def test_unknown_skill_or_split():
    with pytest.raises(CycleQDError, match="unknown skill 'bash'"):
        generate("bash", "train", 1)
    with pytest.raises(CycleQDError, match="unknown split 'dev'"):
        generate("code", "dev", 1)
