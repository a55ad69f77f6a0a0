"""DBBench's conversation: the prompts, the parsing of replies and how answers compare.

Two protocols (``mode``):

* ``single``: the model sees the tables (their ``CREATE`` statements and first rows) and the
  question, and replies with one SQL statement (in a ```` ```sql ```` block or bare).
* ``multi`` (AgentBench's DBBench): every turn the model replies either ``Action: Operation``
  with a ```` ```sql ```` block (one statement; it sees the result as the next user message, rows
  as a Python-literal list cut to ``max_rows``), or ``Action: Answer`` with
  ``Final Answer: [...]`` (a Python-literal list; for a change, it answers after making it).
  An episode ends on an answer, on a reply of neither form, or after ``max_turns`` replies.

A select question's answer is compared with the expected one as a multiset of values
(:func:`normalize_answer`): rows are flattened, numbers (and strings that are numbers)
compared as floats rounded to 4 places, strings stripped.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from typing import Any

from cycleqd.scorers._common import code_block

__all__ = ["normalize_answer", "parse_action", "parse_final_answer"]

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
