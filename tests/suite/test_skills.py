"""The agent skills: oracle answers score 1, wrong ones 0, test requests are never trained on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import tiny_quickstart_yaml

from cycleqd import CycleQDError, Evolver, load_config
from cycleqd.engine.store import RunStore
from cycleqd.sandbox.box import Sandbox
from cycleqd.suite.skills import SKILLS, SkillAccuracy, capacity, generate, score
from cycleqd.suite.skills.problems import _pools
from cycleqd.suite.tinylm import TinyLMRecipe


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
            for split, n in (("train", 4000), ("val", 300), ("test", 600))
        )
        # no val or test request was trained on, and val does not leak test
        assert not train & val and not train & test and not val & test, skill
        assert len(val) == 300 and len(test) == 600, skill  # distinct requests, no copies

    def numbers(split, n):
        return {
            int(w.strip(".?,"))
            for p in generate("sql", split, n)
            for w in p.prompt.split()
            if w.strip(".?,").isdigit() and int(w.strip(".?,")) > 12
        }

    # the ages and salaries held out for test appear in test requests and never in train or val
    held = {23, 33, 47, 52, 61, 52000, 75000, 85000, 98000, 115000, 127000}
    assert held & numbers("test", 600) and not held & (numbers("train", 4000) | numbers("val", 300))
    held_val = {29, 38, 41, 56, 64, 48000, 65000, 91000, 103000, 135000, 142000}
    assert held_val & numbers("val", 300) and not held_val & numbers("train", 4000)


def test_a_split_never_repeats_a_request_and_says_how_many_it_holds():
    for skill in SKILLS:
        n = capacity(skill, "val")
        problems = generate(skill, "val", n)
        assert len({(p.prompt, p.gold) for p in problems}) == n  # every request, once
        with pytest.raises(CycleQDError, match=f"holds {n} distinct requests"):
            generate(skill, "val", n + 1)
    # templates weigh the same: no template takes over a split
    template_of = {q: i for i, pool in enumerate(_pools("sql")["test"]) for q, _ in pool}
    per_template = Counter(template_of[p.prompt] for p in generate("sql", "test", 600))
    assert len(per_template) == sum(1 for pool in _pools("sql")["test"] if pool)
    assert max(per_template.values()) < 0.2 * 600  # 17 templates, some with a handful
    # the search subset is the head of val
    scorer = SkillAccuracy(skill="code", problems=50, test_problems=80, search_problems=20)
    assert scorer.problems["search"] == scorer.problems["val"][:20]
    with pytest.raises(CycleQDError, match="search_problems=60 must be between 1 and"):
        SkillAccuracy(skill="code", problems=50, search_problems=60)


def test_the_quickstart_splits_hold_no_copies_and_share_nothing():
    cfg = load_config(Path(__file__).parents[2] / "experiments" / "quickstart.yaml")
    recipe = TinyLMRecipe(**cfg.models.params)
    for task in cfg.tasks:
        scorer = SkillAccuracy(**task.params)
        skill = task.params["skill"]
        splits = {
            "train": {
                (p.prompt, p.gold)
                for p in generate(skill, "train", recipe.train_problems, seed=recipe.seed)
            },
            **{s: [(p.prompt, p.gold) for p in scorer.problems[s]] for s in ("val", "test")},
        }
        for split in ("val", "test"):
            assert len(set(splits[split])) == len(splits[split]), (skill, split)
        assert len(splits["val"]) >= 300 and len(splits["test"]) >= 600, skill
        val, test = set(splits["val"]), set(splits["test"])
        assert not (splits["train"] & val or splits["train"] & test or val & test), skill
        # and no prompt is shared either, whatever its gold
        prompts = [{p for p, _ in split} for split in (splits["train"], val, test)]
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])


def test_unknown_skill_or_split():
    with pytest.raises(CycleQDError, match="unknown skill 'bash'"):
        generate("bash", "train", 1)
    with pytest.raises(CycleQDError, match="unknown split 'dev'"):
        generate("code", "dev", 1)


def test_memoised_verdicts_change_no_score_of_a_run(tmp_path, tinylm_micro):
    """The same run with and without the verdict cache: every score, event and report equal."""
    runs = {}
    for memoize in (False, True):
        path = tiny_quickstart_yaml(
            tmp_path / f"m{memoize}.yaml", tinylm_micro[0], problems=8, generations=6, batch_size=3
        )
        data = yaml.safe_load(path.read_text())
        for task in data["tasks"]:
            task["params"]["memoize"] = memoize
        path.write_text(yaml.safe_dump(data))
        cfg = load_config(path)
        evolver = Evolver(cfg, RunStore.create(tmp_path / f"run{memoize}", cfg))
        summary = evolver.run()
        runs[memoize] = (evolver, summary)
    (plain, plain_summary), (cached, cached_summary) = runs[False], runs[True]
    assert plain.store.read_log("events.jsonl") == cached.store.read_log("events.jsonl")
    assert plain_summary == cached_summary
    scorers = cached.evaluator.scorers.values()
    assert all(s.memo_lookups > 0 for s in scorers)
    assert sum(s.memo_hits for s in scorers) > 0  # children repeat answers: runs were saved
    assert all(s.memo is None for s in plain.evaluator.scorers.values())


def test_the_execution_memo_gives_the_verdicts_of_running_every_answer(sandbox):
    """Gold answers, repeated answers, one answer given to several problems, wrong ones: the
    memo runs each distinct program once and every verdict equals the unmemoised one."""
    from cycleqd.suite.skills.execution import ExecutionMemo, gold_outputs

    for skill in SKILLS:
        problems = generate(skill, "val", 10, seed=5)
        gold = gold_outputs(sandbox, problems)
        other = [p.gold for p in problems[1:]] + [problems[0].gold]  # another problem's gold
        wrong = {"code": "xs[:1]", "sql": "SELECT 1", "shell": "echo 1"}[skill]
        rounds = [
            [p.gold for p in problems],
            other,
            [wrong] * 10,
            [p.gold if i % 2 else wrong for i, p in enumerate(problems)],
        ]
        memo = ExecutionMemo()
        for answers in rounds:
            plain = score(sandbox, problems, answers, gold)
            assert score(sandbox, problems, answers, gold, memo) == plain
        assert memo.lookups == 40
        # the first round is all gold (not run); "wrong" runs once per distinct key, the last
        # round is known whole: most lookups were saved
        assert memo.hits >= 40 - 10 - (10 if skill == "code" else 1)
        assert any(rounds[1][i] != problems[i].gold for i in range(10))


def test_a_prefix_split_is_the_first_requests_of_its_split():
    scorer = SkillAccuracy(skill="sql", problems=12, search_problems=8)
    assert scorer.split("search:3") == scorer.problems["search"][:3]
    assert scorer.split("val:12") == scorer.problems["val"]
    with pytest.raises(CycleQDError, match="no split 'dev:3'"):
        scorer.split("dev:3")
    with pytest.raises(CycleQDError, match="no split 'val:x'"):
        scorer.split("val:x")
    with pytest.raises(CycleQDError, match="decoder must be auto, lean or transformers"):
        SkillAccuracy(skill="sql", decoder="vllm")
