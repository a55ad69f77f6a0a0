"""DBBench's trusted runner: sent to the sandbox as ``run.py``, run there by the system Python.

Standard library only, no f-strings (any Python 3 runs it). It reads ``db.sql`` (the database
as an SQL script) and ``steps.json`` (``steps``: SQL texts, the last one's result is reported;
``fetch``: rows kept; ``seconds``: a statement's time limit; ``cell``: the longest text value
kept; ``digest``: whether to digest the tables afterwards), and prints one JSON line.
The scorer (:mod:`cycleqd.scorers.dbbench.scorer`) reads this file's text; nothing imports it.
"""

import hashlib
import json
import sqlite3
import time

CELL = [1000]


def statements(text):
    """The statements of ``text``, split where SQLite's parser says one is complete."""
    out, start = [], 0
    for i, char in enumerate(text):
        if char == ";" and sqlite3.complete_statement(text[start : i + 1]):
            out.append(text[start : i + 1])
            start = i + 1
    out.append(text[start:])
    return [s for s in out if s.strip().strip(";").strip()]


def cell(value):
    if isinstance(value, bytes):
        value = repr(value)
    if isinstance(value, str) and len(value) > CELL[0]:
        value = value[: CELL[0]]
    return value


def run(db, text, fetch, clock, seconds):
    """Run ``text``'s statements until one fails; the last query's rows, and what ran."""
    rows, more, ran = None, False, []
    for statement in statements(text):
        clock[0] = time.monotonic() + seconds
        try:
            cursor = db.execute(statement)
            if cursor.description is not None:
                got = cursor.fetchmany(fetch + 1)
                rows, more = [[cell(v) for v in row] for row in got[:fetch]], len(got) > fetch
            cursor.close()
        except Exception as exc:  # the statement's failure is its result
            message = str(exc)
            if message == "interrupted":
                message = "the statement ran past its time limit of %g s" % seconds
            return rows, more, ("%s: %s" % (type(exc).__name__, message))[:300], ran
        ran.append(statement)
    return rows, more, None, ran


def digest(db):
    """A hash of every table's name, columns and rows (sorted)."""
    tables = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name"
    ).fetchall()
    h = hashlib.sha256()
    for (name,) in tables:
        cursor = db.execute('SELECT * FROM "%s"' % name.replace('"', '""'))
        columns = [d[0] for d in cursor.description]
        rows = sorted(repr(tuple(row)) for row in cursor)
        h.update(json.dumps([name, columns, rows]).encode())
    return h.hexdigest()


def authorize(action, arg1, arg2, *rest):
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def main():
    with open("steps.json", encoding="utf-8") as fh:
        config = json.load(fh)
    seconds = config["seconds"]
    CELL[0] = config["cell"]
    db = sqlite3.connect(":memory:", isolation_level=None)
    with open("db.sql", encoding="utf-8") as fh:
        db.executescript(fh.read())
    if hasattr(db, "setlimit"):
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    db.set_authorizer(authorize)
    clock = [0.0]
    db.set_progress_handler(lambda: 1 if time.monotonic() > clock[0] else 0, 1000)
    steps = config["steps"]
    for text in steps[:-1]:
        run(db, text, 0, clock, seconds)
    out = {"rows": None, "more": False, "error": None, "ran": [], "digest": None}
    if steps:
        out["rows"], out["more"], out["error"], out["ran"] = run(
            db, steps[-1], config["fetch"], clock, seconds
        )
    if config["digest"]:
        clock[0] = time.monotonic() + seconds
        try:
            out["digest"] = digest(db)
        except Exception as exc:
            out["digest_error"] = ("%s: %s" % (type(exc).__name__, exc))[:300]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
