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
    train = " ".join(p.prompt for p in generate("sql", "train", 300))
    test = generate("sql", "test", 50)
    assert any(d in train for d in ("sales", "research"))
    assert not any(d in train for d in ("ops", "hr"))
    assert all(
        ("ops" in p.prompt or "hr" in p.prompt)
        for p in test
        if "department" in p.prompt and "departments" not in p.prompt
    )
    code_train = {p.prompt for p in generate("code", "train", 300)}
    code_test = generate("code", "test", 100)
    assert not {p.prompt for p in code_test} & code_train
    assert all(int(p.prompt.split("k = ")[1].split(",")[0]) >= 6 for p in code_test)
    shell_test = generate("shell", "test", 40)
    assert all("alpha" not in p.gold and "beta" not in p.gold for p in shell_test)


def test_unknown_skill_or_split():
    with pytest.raises(CycleQDError, match="unknown skill 'bash'"):
        generate("bash", "train", 1)
    with pytest.raises(CycleQDError, match="unknown split 'dev'"):
        generate("code", "dev", 1)
