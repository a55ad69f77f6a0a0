"""DBBench's data: the questions, their databases and their gold, read and checked on the host.

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

The host only reads trusted data with ``sqlite3`` (the inline tables, the ``.sqlite`` files,
dumped to SQL scripts); model-written SQL runs only in the sandbox
(:mod:`cycleqd.scorers.dbbench.scorer`).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.scorers._common import read_records

__all__ = ["DBQuestion", "load_questions"]

WHAT = "dbbench"
KINDS = ("select", "insert", "update", "delete")
MUTATIONS = ("insert", "update", "delete")
SAMPLE_ROWS = 3


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
