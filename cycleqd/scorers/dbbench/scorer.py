"""SQL tasks over local SQLite databases, scored by execution (DBBench-like, from AgentBench).

The format (a JSONL file or a JSON list, one record per question):

* ``id``: optional (default: the record's number);
* ``question``: the request (AgentBench's ``description``; its ``add_description``, if present,
  is put before it);
* the database, either ``database``: a ``.sqlite`` file (relative to the data file's folder), or
  ``tables`` (AgentBench's ``table``): a DBBench-style inline table or a list of them,
  ``{"table_name": str, "table_info": {"columns": [{"name": str, "type"?: str}],
  "rows": [[...], ...]}}``;
* ``type``: ``select`` (default), ``insert``, ``update`` or ``delete`` (case-insensitive).
  AgentBench's list form (``["SELECT"]``, ``["counting"]``...) counts as a change when it names
  INSERT, UPDATE or DELETE and as a select question otherwise, as AgentBench's metric does;
* ``answer`` (AgentBench's ``label``): the expected values of a select question;
* ``gold_sql`` (AgentBench's ``sql: {"query": ...}``): the gold statement(s), a string or a list.
  Required for changes; for a select question without ``answer``, the answer is the gold
  query's result (computed in the sandbox).

Two protocols (``mode``):

* ``single``: the model sees the tables (their ``CREATE`` statements and first rows) and the
  question, and replies with one SQL statement (in a ```` ```sql ```` block or bare).
* ``multi`` (AgentBench's DBBench): every turn the model replies either ``Action: Operation``
  with a ```` ```sql ```` block (one statement; it sees the result as the next user message, rows
  as a Python-literal list cut to ``max_rows``), or ``Action: Answer`` with
  ``Final Answer: [...]`` (a Python-literal list; for a change, it answers after making it).
  An episode ends on an answer, on a reply of neither form, or after ``max_turns`` replies.

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

import ast
import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox.box import Limits, SandboxResult
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import (
    GenerationSettings,
    check_split,
    code_block,
    data_shape,
    read_records,
)

__all__ = [
    "DBBench",
    "DBQuestion",
    "load_questions",
    "normalize_answer",
    "parse_action",
    "parse_final_answer",
]

WHAT = "dbbench"
KINDS = ("select", "insert", "update", "delete")
MUTATIONS = ("insert", "update", "delete")
SAMPLE_ROWS = 3
CELL_CHARS = 1000  # longer text values are cut in the runner's output
GOLD_ROWS = 1000  # the most rows a gold query's answer may have

MULTI_INSTRUCTION = """\
I will ask you a question, then you should help me operate a SQLite database with SQL to answer \
the question.
You have to explain the problem and your solution to me and write down your thoughts.
After thinking and explaining thoroughly, every round you can choose to operate or to answer.
Your operation should be like this:
Action: Operation
```sql
SELECT * FROM table WHERE condition;
```
You MUST put SQL in markdown format without any other comments. Your SQL should be in one line.
Every time you can only execute one SQL statement. I will only execute the statement in the first \
SQL code block. Every time you write a SQL, I will execute it for you and give you the output.
If you are done operating, and you want to commit your final answer, then write down:
Action: Answer
Final Answer: ["ANSWER1", "ANSWER2", ...]
The final answer is a Python list of the values that answer the question.
DO NOT write this pattern unless you are sure about your answer. I expect an accurate and correct \
answer.
Your answer should be accurate. Your answer must be exactly the same as the correct answer.
If the question is about modifying the database, then after done operation, your answer field \
can be anything.
If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL \
immediately.
Your input will be the raw SQLite result, you have to deal with it by yourself."""

MULTI_QUESTION = "The database:\n\n{schema}\n\nQuestion: {question}"

SINGLE_QUESTION = """\
Answer the question with one SQLite statement run on this database:

{schema}

If the question asks to change the database (insert, update or delete rows), write the statement \
that makes the change. Reply with the statement in one ```sql code block.

Question: {question}"""

#: The trusted runner, sent to the sandbox as ``run.py`` (a real file beside this one, read as
#: text: see its docstring for what it reads and prints).
RUNNER = Path(__file__).with_name("_runner.py").read_text(encoding="utf-8")


@dataclass
class DBQuestion:
    """One question, its database and its gold.

    Attributes:
        id: the record's ``id`` (default: its number).
        question: the request.
        kind: ``select``, ``insert``, ``update`` or ``delete``.
        script: the database as an SQL script (trusted data: the dump of the tables).
        schema: the tables as the model sees them (``CREATE`` statements and first rows).
        answer: the expected values of a select question (``None``: the gold query's result).
        gold_sql: the gold statements.
        where: the file and record, for messages.
    """

    id: str
    question: str
    kind: str
    script: str
    schema: str
    answer: list[Any] | None
    gold_sql: list[str]
    where: str

    @property
    def mutation(self) -> bool:
        """Whether the question asks for a change (insert, update, delete)."""
        return self.kind in MUTATIONS


# --- data ------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?")


def _inline_database(tables: Any, where: str) -> sqlite3.Connection:
    """An in-memory database holding DBBench-style inline tables (trusted data)."""
    fix = (
        'give each table as {"table_name": str, "table_info": {"columns": [{"name": str, '
        '"type": str}], "rows": [[...], ...]}}'
    )
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not tables:
        raise CycleQDError(f"{WHAT}: {where}: 'tables' must be a table or a list of them; {fix}")
    db = sqlite3.connect(":memory:")
    for number, table in enumerate(tables, 1):
        name = table.get("table_name") if isinstance(table, dict) else None
        info = table.get("table_info") if isinstance(table, dict) else None
        if not isinstance(name, str) or not name or not isinstance(info, dict):
            raise CycleQDError(f"{WHAT}: {where}: table {number} lacks a name or table_info; {fix}")
        columns, rows = info.get("columns"), info.get("rows", [])
        if not isinstance(columns, list) or not columns or not isinstance(rows, list):
            raise CycleQDError(
                f"{WHAT}: {where}: table {name!r} needs a non-empty 'columns' list and a "
                f"'rows' list; {fix}"
            )
        defs = []
        for column in columns:
            column = {"name": column} if isinstance(column, str) else column
            cname = column.get("name") if isinstance(column, dict) else None
            ctype = column.get("type", "") if isinstance(column, dict) else ""
            if not isinstance(cname, str) or not cname:
                raise CycleQDError(
                    f"{WHAT}: {where}: table {name!r} has a column without a name: {column!r}"
                )
            if not isinstance(ctype, str) or (ctype and not _TYPE.fullmatch(ctype)):
                raise CycleQDError(
                    f"{WHAT}: {where}: table {name!r}, column {cname!r}: type {ctype!r} is not an "
                    "SQL type name (use e.g. TEXT, INTEGER, REAL, VARCHAR(20))"
                )
            defs.append(f"{_quote(cname)} {ctype}".strip())
        for i, row in enumerate(rows, 1):
            if not isinstance(row, list) or len(row) != len(columns):
                raise CycleQDError(
                    f"{WHAT}: {where}: table {name!r}, row {i} must be a list of {len(columns)} "
                    f"values (one per column), got {row!r}"
                )
            if not all(v is None or isinstance(v, (str, int, float)) for v in row):
                raise CycleQDError(
                    f"{WHAT}: {where}: table {name!r}, row {i}: values must be strings, numbers "
                    f"or null, got {row!r}"
                )
        try:
            db.execute(f"CREATE TABLE {_quote(name)} ({', '.join(defs)})")
            marks = ", ".join("?" * len(columns))
            db.executemany(f"INSERT INTO {_quote(name)} VALUES ({marks})", rows)
        except sqlite3.Error as exc:
            raise CycleQDError(f"{WHAT}: {where}: table {name!r} cannot be built: {exc}") from None
    db.commit()
    return db


def _describe(db: sqlite3.Connection) -> tuple[str, str]:
    """The database as an SQL script and as the model's description (trusted data)."""
    script = "\n".join(db.iterdump())
    parts = []
    tables = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY rowid"
    ).fetchall()
    for name, sql in tables:
        count = db.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0]
        rows = db.execute(f"SELECT * FROM {_quote(name)} LIMIT {SAMPLE_ROWS}").fetchall()
        shown = f"the first {len(rows)}" if count > len(rows) else "all"
        parts.append(f"{sql};\n-- {count} rows; {shown}: {rows!r}")
    return script, "\n\n".join(parts)


def _file_database(path: Path, where: str) -> tuple[str, str]:
    if not path.is_file():
        raise CycleQDError(
            f"{WHAT}: {where}: database file {path} does not exist (a 'database' path is "
            "relative to the data file's folder)"
        )
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            script, schema = _describe(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise CycleQDError(
            f"{WHAT}: {where}: {path} is not a readable SQLite database ({exc})"
        ) from None
    return script, schema


def _kind(value: Any, where: str) -> str:
    if isinstance(value, list):  # AgentBench: ["SELECT"], ["INSERT"], ["counting"], ...
        names = {str(v).lower() for v in value}
        return next((k for k in MUTATIONS if k in names), "select")
    if isinstance(value, str) and value.lower() in KINDS:
        return value.lower()
    raise CycleQDError(
        f"{WHAT}: {where}: unknown type {value!r}; use one of {list(KINDS)} (or AgentBench's "
        'list form, e.g. ["SELECT"])'
    )


def _gold_sql(record: dict[str, Any], where: str) -> list[str]:
    gold = record.get("gold_sql", record.get("sql"))
    if isinstance(gold, dict):  # AgentBench: {"query": ...}
        gold = gold.get("query")
    if gold is None:
        return []
    if isinstance(gold, str):
        gold = [gold]
    if not isinstance(gold, list) or not all(isinstance(g, str) and g.strip() for g in gold):
        raise CycleQDError(
            f"{WHAT}: {where}: gold_sql must be an SQL string or a list of them, got {gold!r}"
        )
    return gold


def _question(
    record: dict[str, Any], number: int, folder: Path, where: str, cache: dict[Path, Any]
) -> DBQuestion:
    question = record.get("question", record.get("description"))
    if not isinstance(question, str) or not question.strip():
        raise CycleQDError(
            f"{WHAT}: {where} lacks a 'question' (or AgentBench's 'description') string; it has "
            f"{sorted(record)}"
        )
    extra = record.get("add_description")
    if isinstance(extra, str) and extra.strip():
        question = f"{extra.strip()}\n{question}"
    kind = _kind(record.get("type", "select"), where)
    gold = _gold_sql(record, where)
    answer = record.get("answer", record.get("label"))
    if kind in MUTATIONS:
        if not gold:
            raise CycleQDError(
                f"{WHAT}: {where}: a {kind} question needs 'gold_sql' (the statement that makes "
                "the change): the result is compared with the tables after it"
            )
        answer = None
    elif answer is None and not gold:
        raise CycleQDError(
            f"{WHAT}: {where}: a select question needs 'answer' (the expected values) or "
            "'gold_sql' (the query that computes them)"
        )
    elif answer is not None and not isinstance(answer, list):
        answer = [answer]
    tables = record.get("tables", record.get("table"))
    if ("database" in record) == (tables is not None):
        raise CycleQDError(
            f"{WHAT}: {where}: give the database as exactly one of 'database' (a .sqlite file) "
            "or 'tables' (inline tables)"
        )
    if "database" in record:
        if not isinstance(record["database"], str):
            raise CycleQDError(f"{WHAT}: {where}: 'database' must be a path to a .sqlite file")
        path = folder / record["database"]
        if path not in cache:
            cache[path] = _file_database(path, where)
        script, schema = cache[path]
    else:
        db = _inline_database(tables, where)
        try:
            script, schema = _describe(db)
        finally:
            db.close()
    if not schema:
        raise CycleQDError(f"{WHAT}: {where}: the database has no tables")
    return DBQuestion(
        id=str(record.get("id", number)),
        question=question.strip(),
        kind=kind,
        script=script,
        schema=schema,
        answer=answer,
        gold_sql=gold,
        where=where,
    )


def load_questions(path: str | Path, *, limit: int | None = None) -> list[DBQuestion]:
    """The questions of a data file (see the module's docstring for the format).

    Raises:
        CycleQDError: a missing or malformed file, or a bad record (named, with the fix).
    """
    records = read_records(path, what=WHAT)
    if limit is not None:
        records = records[:limit]
    folder = Path(path).expanduser().parent
    cache: dict[Path, tuple[str, str]] = {}
    return [
        _question(record, i + 1, folder, f"{path}, record {i + 1}", cache)
        for i, record in enumerate(records)
    ]


# --- answers ---------------------------------------------------------------------------------


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def _value(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float (model text): compared as text
            return ("s", str(value))
        if math.isfinite(number):
            return ("n", round(number, 4))
        return ("s", str(value))
    if value is None:
        return ("s", "None")
    text = (repr(value) if isinstance(value, bytes) else str(value)).strip()
    try:
        number = float(text)
    except ValueError:
        return ("s", text)
    return ("n", round(number, 4)) if math.isfinite(number) else ("s", text)


def normalize_answer(values: Any) -> Counter:
    """The multiset an answer is compared as: flattened, numbers rounded, strings stripped."""
    return Counter(_value(v) for v in _flatten(values))


def parse_final_answer(text: str) -> list[Any]:
    """The list after ``Final Answer:`` (a Python literal; otherwise the text as one value)."""
    text = text.strip()
    first = text.splitlines()[0].strip() if text else ""
    candidates = [text, first, text[: text.rfind("]") + 1] if "]" in text else ""]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            value = ast.literal_eval(candidate)
        except Exception:  # noqa: BLE001 - model text: anything that does not parse
            continue
        return list(value) if isinstance(value, (list, tuple, set)) else [value]
    return [first]


_OPERATION = re.compile(r"Action:\s*Operation", re.IGNORECASE)
_ANSWER = re.compile(r"Action:\s*Answer", re.IGNORECASE)
_FINAL = re.compile(r"Final\s+Answer:(.*)", re.IGNORECASE | re.DOTALL)


def parse_action(reply: str) -> tuple[str, Any]:
    """A multi-turn reply as ``("sql", text)``, ``("answer", values)`` or ``("invalid", None)``.

    The first of ``Action: Operation`` (with a fenced SQL block after it) and ``Action: Answer``
    (with ``Final Answer:`` after it) counts.
    """
    operation, answer = _OPERATION.search(reply), _ANSWER.search(reply)
    if operation and (answer is None or operation.start() < answer.start()):
        sql = code_block(reply[operation.end() :], ("sql", "sqlite", "sqlite3"))
        return ("sql", sql) if sql and sql.strip() else ("invalid", None)
    if answer:
        final = _FINAL.search(reply, answer.end())
        if final:
            return "answer", parse_final_answer(final.group(1))
    return "invalid", None


def single_statement(reply: str) -> str:
    """The SQL of a single-turn reply: its first SQL block, or the bare text."""
    sql = code_block(reply, ("sql", "sqlite", "sqlite3"))
    return (reply if sql is None else sql).strip()


# --- the scorer ------------------------------------------------------------------------------


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
        val: the questions scored during evolution (JSONL or JSON; see the module's docstring).
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
        results = shared_sandbox().run("shell", problems, files={"run.py": RUNNER}, limits=limits)
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

    def _single(self, model: Any, questions: list[DBQuestion], golds: list[_Gold]) -> list[bool]:
        replies = self.generation.chat(model, [self.messages(q) for q in questions])
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

    def _multi(self, model: Any, questions: list[DBQuestion], golds: list[_Gold]) -> list[bool]:
        episodes = [
            _Episode(question=q, messages=self.messages(q), digest=g.initial)
            for q, g in zip(questions, golds, strict=True)
        ]
        for turn in range(self.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            replies = self.generation.chat(model, [e.messages for e in active])
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

    def solved(self, model: Any, split: str) -> list[bool]:
        """Whether the model solves each question of ``split``."""
        check_split(split, WHAT)
        questions, golds = self.questions[split], self.gold(split)
        run = self._single if self.mode == "single" else self._multi
        return run(model, questions, golds)

    def __call__(self, model: Any, split: str) -> float:
        """The share of ``split``'s questions solved."""
        verdicts = self.solved(model, split)
        return sum(verdicts) / len(verdicts)
