"""The DBBench scorer: single- and multi-turn SQL on SQLite, oracles, saboteurs, hostile SQL."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import REPO

from cycleqd.errors import CycleQDError
from cycleqd.scorers import SCORERS
from cycleqd.scorers.dbbench.conversation import (
    normalize_answer,
    parse_action,
    parse_final_answer,
)
from cycleqd.scorers.dbbench.questions import load_questions
from cycleqd.scorers.dbbench.scorer import DBBench

EMPLOYEES = {
    "table_name": "employees",
    "table_info": {
        "columns": [
            {"name": "id", "type": "INTEGER"},
            {"name": "name", "type": "TEXT"},
            {"name": "dept", "type": "TEXT"},
            {"name": "salary", "type": "REAL"},
        ],
        "rows": [
            [1, "Alice", "eng", 120.5],
            [2, "Bob", "eng", 95.0],
            [3, "Carol", "sales", 70.0],
        ],
    },
}
PETS = {
    "table_name": "pets",
    "table_info": {"columns": [{"name": "pet"}, {"name": "owner"}], "rows": [["Rex", "Bob"]]},
}

RECORDS = [
    {
        "id": "names",
        "question": "Who works in eng?",
        "tables": [EMPLOYEES, PETS],
        "answer": ["Alice", "Bob"],
        "gold_sql": "SELECT name FROM employees WHERE dept = 'eng'",
    },
    {  # the answer computed from the gold query
        "id": "average",
        "question": "What is the average salary in eng?",
        "tables": EMPLOYEES,
        "gold_sql": "SELECT AVG(salary) FROM employees WHERE dept = 'eng'",
    },
    {  # AgentBench's native keys
        "description": "Whose pet is Rex?",
        "add_description": "The table is pets.",
        "table": PETS,
        "type": ["SELECT"],
        "label": ["Bob"],
        "sql": {"query": "SELECT owner FROM pets WHERE pet = 'Rex'"},
    },
    {
        "id": "insert",
        "question": "Add Dan to sales with salary 60.",
        "tables": EMPLOYEES,
        "type": "INSERT",
        "gold_sql": "INSERT INTO employees VALUES (4, 'Dan', 'sales', 60.0)",
    },
    {
        "id": "update",
        "question": "Give everyone in sales a raise of 10.",
        "tables": [EMPLOYEES, PETS],
        "type": "update",
        "gold_sql": ["UPDATE employees SET salary = salary + 10 WHERE dept = 'sales'"],
    },
    {
        "id": "file-select",
        "question": "Which city is the largest?",
        "database": "cities.sqlite",
        "answer": ["Tokyo"],
        "gold_sql": "SELECT city FROM cities ORDER BY population DESC LIMIT 1",
    },
    {
        "id": "file-update",
        "question": "Set the population of Lima to 11.",
        "database": "cities.sqlite",
        "type": "update",
        "gold_sql": "UPDATE cities SET population = 11 WHERE city = 'Lima'",
    },
]


@pytest.fixture
def data(tmp_path):
    db = sqlite3.connect(tmp_path / "cities.sqlite")
    db.execute("CREATE TABLE cities (city TEXT, population INTEGER)")
    db.executemany("INSERT INTO cities VALUES (?, ?)", [("Tokyo", 37), ("Lima", 10), ("Oslo", 1)])
    db.commit()
    db.close()
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


class Scripted:
    """A backend that answers each conversation from its question and the turn."""

    def __init__(self, scorer, reply, split="val"):
        first = scorer.messages(scorer.questions[split][0])
        self.at = len(first) - 1  # the message that carries the question
        self.questions = {scorer.messages(q)[-1]["content"]: q for q in scorer.questions[split]}
        self.reply, self.calls, self.seen = reply, 0, []

    def chat(self, model, conversations, *, max_new_tokens, stop=()):
        self.calls += 1
        self.seen.append([c[-1]["content"] for c in conversations])
        replies = []
        for c in conversations:
            question = self.questions[c[self.at]["content"]]
            turn = (len(c) - self.at - 1) // 2
            replies.append(self.reply(question, turn, c))
        return replies


def sql_block(sql):
    return f"```sql\n{sql}\n```"


def oracle(question, turn, conversation):
    """Single: the gold SQL. Multi: run the gold SQL, then answer what it showed."""
    sql = ";\n".join(question.gold_sql)
    if len(conversation) == 1:
        return sql_block(sql)
    if turn == 0:
        return "I will run the gold query.\nAction: Operation\n" + sql_block(sql)
    observed = "[]" if question.mutation else conversation[-1]["content"]
    return f"Action: Answer\nFinal Answer: {observed}"


def scorer_with(path, reply, **params):
    scorer = DBBench(val=str(path), backend=None, **params)
    scorer.generation.backend = backend = Scripted(scorer, reply)
    return scorer, backend


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_the_oracle_solves_everything(data, mode):
    scorer, backend = scorer_with(data, oracle, mode=mode)
    assert scorer(None, "val") == 1.0
    assert scorer(None, "test") == 1.0
    assert backend.calls == (2 if mode == "single" else 4)  # one call per turn, all episodes


def test_the_gold_is_computed_once_per_split_and_in_the_sandbox(data):
    scorer, _ = scorer_with(data, oracle, mode="single")
    gold = scorer.gold("val")
    assert gold[1].values == normalize_answer([107.75])  # AVG(120.5, 95.0), from gold_sql
    assert gold[3].digest and gold[3].initial and gold[3].digest != gold[3].initial
    assert scorer.gold("val") is gold


def wrong_single(question, turn, conversation):
    if question.mutation:
        return sql_block("UPDATE employees SET salary = 0")
    return sql_block("SELECT 1")


def wrong_multi(question, turn, conversation):
    if question.mutation and turn == 0:  # a change, but the wrong one
        table = "cities" if "Lima" in question.question else "employees"
        column = "population" if table == "cities" else "salary"
        return "Action: Operation\n" + sql_block(f"UPDATE {table} SET {column} = 0")
    return "Action: Answer\nFinal Answer: ['nobody', 42]"


@pytest.mark.parametrize("mode, reply", [("single", wrong_single), ("multi", wrong_multi)])
def test_wrong_answers_score_zero(data, mode, reply):
    scorer, _ = scorer_with(data, reply, mode=mode)
    assert scorer(None, "val") == 0.0


def test_multi_turn_state_is_replayed_across_turns(data):
    def reply(question, turn, conversation):
        if turn == 0:
            return "Action: Operation\n" + sql_block(";\n".join(question.gold_sql))
        if turn == 1 and question.mutation:  # the change made last turn is still there
            table = "cities" if "cities" in question.schema else "employees"
            return "Action: Operation\n" + sql_block(f"SELECT * FROM {table}")
        return "Action: Answer\nFinal Answer: []"

    scorer, backend = scorer_with(data, reply, mode="multi", limit=5)
    verdicts = scorer.solved(None, "val")
    assert verdicts == [False, False, False, True, True]  # the selects answered []
    seen = backend.seen[2]  # the observations of the turn-2 SELECTs of the two changes
    assert any("'Dan', 'sales', 60.0" in s for s in seen)
    assert any("(3, 'Carol', 'sales', 80.0)" in s for s in seen)


def test_episodes_end_on_invalid_replies_and_after_max_turns(data):
    scorer, backend = scorer_with(data, lambda q, t, c: "hello", mode="multi")
    assert scorer(None, "val") == 0.0 and backend.calls == 1

    def looping(question, turn, conversation):
        return "Action: Operation\n" + sql_block("SELECT 1")

    scorer, backend = scorer_with(data, looping, mode="multi", max_turns=3)
    assert scorer(None, "val") == 0.0 and backend.calls == 3
    assert backend.seen[-1][0] == "[(1,)]"


def test_results_are_cut_to_max_rows(data):
    def reply(question, turn, conversation):
        if turn == 0:
            return "Action: Operation\n" + sql_block(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
            )
        return "Action: Answer\nFinal Answer: []"

    scorer, backend = scorer_with(data, reply, mode="multi", max_rows=3, limit=1)
    scorer(None, "val")
    assert backend.seen[1][0] == "[(1,), (2,), (3,)]\n(only the first 3 rows are shown)"


HOSTILE = [
    "ATTACH DATABASE '/etc/passwd' AS x",
    "ATTACH DATABASE '{escape}' AS x; CREATE TABLE x.t (a)",
    "SELECT load_extension('x')",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
]


def test_hostile_sql_scores_zero_and_stays_in_the_sandbox(data, tmp_path):
    escape = tmp_path / "escape.db"
    hostile = [sql.format(escape=escape) for sql in HOSTILE]
    for sql in hostile:
        scorer, _ = scorer_with(
            data, lambda q, t, c, sql=sql: sql_block(sql), mode="single", timeout_s=0.3
        )
        assert scorer(None, "val") == 0.0

    def reply(question, turn, conversation):
        if turn < len(hostile):
            return "Action: Operation\n" + sql_block(hostile[turn])
        return "Action: Answer\nFinal Answer: []"

    scorer, backend = scorer_with(data, reply, mode="multi", max_turns=5, timeout_s=0.3)
    assert scorer(None, "val") == 0.0
    assert not escape.exists()
    for seen in backend.seen[1:]:  # every episode saw the same errors
        assert len(set(seen)) == 1
    observed = [seen[0] for seen in backend.seen[1:]]
    assert observed[0].startswith("Error:") and "not authorized" in observed[0]
    assert observed[1].startswith("Error:") and "not authorized" in observed[1]
    assert observed[2].startswith("Error:") and "not authorized" in observed[2]
    assert observed[3].startswith("Error:") and "time limit" in observed[3]


def test_answers_are_compared_as_multisets_of_normalised_values():
    assert normalize_answer([("Alice", 30)]) == normalize_answer([" Alice ", "30.00001"])
    assert normalize_answer([["b"], ["a"]]) == normalize_answer(["a", "b"])
    assert normalize_answer(["a", "a"]) != normalize_answer(["a"])
    assert normalize_answer([1.23456]) != normalize_answer([1.2345])
    assert parse_final_answer("[('Alice', 30)]\nthat is all") == [("Alice", 30)]
    assert parse_final_answer("Alice") == ["Alice"]
    assert parse_final_answer("7") == [7]
    assert parse_action("Action: Answer\nFinal Answer: ['x']") == ("answer", ["x"])
    assert parse_action("Action: Operation\n```sql\nSELECT 1\n```") == ("sql", "SELECT 1\n")
    assert parse_action("Action: Operation\nSELECT 1") == ("invalid", None)
    assert parse_action("SELECT 1") == ("invalid", None)
    huge = 10**400  # beyond any float: model text must not crash the comparison
    assert normalize_answer([huge]) == normalize_answer([huge])
    assert normalize_answer([huge]) != normalize_answer([float("inf")])
    assert parse_final_answer(f"[{huge}]") == [huge]


def test_the_tiny_model_runs(tiny_lm, tiny_ctx, data):
    for mode in ("single", "multi"):
        scorer = SCORERS.build(
            "dbbench",
            val=str(data),
            mode=mode,
            max_turns=2,
            limit=4,
            max_new_tokens=16,
            backend_params={"max_prompt_tokens": 64},
        )
        score = scorer(tiny_lm, "val", tiny_ctx)
        assert isinstance(score, float) and 0.0 <= score <= 1.0


def write(tmp_path, *records):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_bad_data_is_explained(tmp_path):
    good = {"question": "q?", "tables": PETS, "answer": ["Bob"]}
    with pytest.raises(CycleQDError, match=r"record 2 lacks a 'question'"):
        load_questions(write(tmp_path, good, {"tables": PETS, "answer": ["x"]}))
    with pytest.raises(CycleQDError, match=r"record 1: a update question needs 'gold_sql'"):
        load_questions(write(tmp_path, {"question": "q", "tables": PETS, "type": "update"}))
    with pytest.raises(CycleQDError, match=r"database file .*nope.sqlite does not exist"):
        load_questions(write(tmp_path, {"question": "q", "database": "nope.sqlite", "answer": []}))
    with pytest.raises(CycleQDError, match=r"needs 'answer' .* or 'gold_sql'"):
        load_questions(write(tmp_path, {"question": "q", "tables": PETS}))
    with pytest.raises(CycleQDError, match=r"exactly one of 'database' .* or 'tables'"):
        load_questions(write(tmp_path, {"question": "q", "answer": []}))
    with pytest.raises(CycleQDError, match=r"unknown type 'merge'"):
        load_questions(write(tmp_path, {**good, "type": "merge"}))
    short_row = {"table_name": "t", "table_info": {"columns": [{"name": "a"}], "rows": [[1, 2]]}}
    with pytest.raises(CycleQDError, match=r"table 't', row 1 must be a list of 1 values"):
        load_questions(write(tmp_path, {**good, "tables": short_row}))
    bad_gold = {"question": "q", "tables": PETS, "type": "delete", "gold_sql": "DELETE FROM nope"}
    scorer = DBBench(val=str(write(tmp_path, bad_gold)), backend=None)
    with pytest.raises(CycleQDError, match=r"record 1: the gold SQL fails .*no such table: nope"):
        scorer.gold("val")
    with pytest.raises(CycleQDError, match=r"unknown mode 'chat'"):
        DBBench(val=str(write(tmp_path, good)), mode="chat")
    with pytest.raises(CycleQDError, match=r"unknown split 'train'"):
        DBBench(val=str(write(tmp_path, good)))(None, "train")


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_the_shipped_sample_loads_and_the_oracle_solves_it(mode):
    path = REPO / "experiments" / "data" / "dbbench_sample.jsonl"
    questions = load_questions(path)
    assert len(questions) >= 5 and {q.kind for q in questions} >= {"select", "insert", "update"}
    scorer, _ = scorer_with(path, oracle, mode=mode)
    assert scorer(None, "val") == 1.0


def test_episodes_played_again_run_nothing_new_and_score_the_same(data):
    scorer, _ = scorer_with(data, oracle, mode="multi")
    assert scorer(None, "val") == 1.0
    runs, asked = scorer.memo.lookups - scorer.memo.hits, scorer.memo.lookups
    assert runs > 0
    assert scorer(None, "val") == 1.0  # the same statements again: every run is known
    assert scorer.memo.lookups > asked and scorer.memo.lookups - scorer.memo.hits == runs
    plain, _ = scorer_with(data, oracle, mode="multi", memoize=False)
    assert plain.memo is None and plain(None, "val") == 1.0
