"""The skills' requests: templates per skill, and the train / val / test splits drawn from them.

Every split is generated from templates and a seed. Val and test requests are each a held-out
fifth of the template × argument combinations, or use numbers train never contains (whose digits
train covers in every position), so a model cannot pass by memorising; val is held out like test,
so that choosing models on val rewards what test measures.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.suite.skills.fixtures import DEPARTMENTS, LEVELS, MODULES, PROJECTS

__all__ = [
    "SKILLS",
    "SPLITS",
    "Problem",
    "capacity",
    "generate",
    "prompt_of",
]

SKILLS = ("code", "sql", "shell")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    """One request and its gold answer.

    Attributes:
        skill: ``code``, ``sql`` or ``shell``.
        prompt: the natural-language request.
        gold: the gold program (expression, query or command).
        cases: for ``code``, the inputs the answer is evaluated on.
    """

    skill: str
    prompt: str
    gold: str
    cases: tuple[dict[str, Any], ...] = field(default=())


# --- how splits are made ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """A request with ``{slot}`` placeholders and its gold program over the same slots."""

    request: str
    gold: str

    def slots(self) -> list[str]:
        return sorted(set(re.findall(r"{(\w+)}", self.request)))


def _split_of(prompt: str, values: dict[str, Any], unseen: dict[str, dict[str, set]]) -> str | None:
    """The split a request belongs to (``None``: none).

    A request with a value held out for val (or test) belongs there: those values never reach
    train, so a model must copy them, not recall them; one with values held out for both is
    left out. Any other request falls in a split by the hash of its text: a fifth each for val
    and test, the rest train. So val and test requests are template × argument combinations
    never trained on, and val is held out like test, so that choosing models on val rewards
    what test measures.
    """
    held = {
        split
        for name, splits in unseen.items()
        for split, numbers in splits.items()
        if values.get(name) in numbers
    }
    if held:
        return held.pop() if len(held) == 1 else None
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 5
    return {0: "test", 1: "val"}.get(bucket, "train")


@functools.cache
def _pools(skill: str) -> dict[str, tuple[tuple[tuple[str, str], ...], ...]]:
    """Every distinct ``(request, gold)`` of ``skill``: split → one tuple per template.

    A request's split depends on the request alone, so no request is in two splits, and a split
    is made of distinct requests by construction.
    """
    templates, slots, unseen = _SPECS[skill]
    pools: dict[str, list[list[tuple[str, str]]]] = {s: [] for s in SPLITS}
    for template in templates:
        names = template.slots()
        for split in SPLITS:
            pools[split].append([])
        for combo in itertools.product(*(slots[name] for name in names)):
            values = dict(zip(names, combo, strict=True))
            prompt = template.request.format(**values)
            split = _split_of(prompt, values, unseen)
            if split is not None:
                pools[split][-1].append((prompt, template.gold.format(**values)))
    return {s: tuple(tuple(p) for p in per_template) for s, per_template in pools.items()}


def capacity(skill: str, split: str) -> int:
    """How many distinct requests ``split`` of ``skill`` holds."""
    _check(skill, split)
    return sum(len(pool) for pool in _pools(skill)[split])


def _check(skill: str, split: str) -> None:
    if skill not in _SPECS:
        raise CycleQDError(f"unknown skill {skill!r}; use one of {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise CycleQDError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


# --- code ------------------------------------------------------------------------------------

_SELECTIONS = [  # (phrase, the selected list as an expression)
    ("the elements", "xs"),
    ("the even elements", "[v for v in xs if v % 2 == 0]"),
    ("the odd elements", "[v for v in xs if v % 2 == 1]"),
    ("the elements greater than {k}", "[v for v in xs if v > {k}]"),
    ("the elements less than {k}", "[v for v in xs if v < {k}]"),
    ("the elements divisible by {d}", "[v for v in xs if v % {d} == 0]"),
    ("the elements not divisible by {d}", "[v for v in xs if v % {d} != 0]"),
]
_REDUCTIONS = [  # (phrase, template over the selected list `S`)
    ("the sum of {sel}", "sum(S)"),
    ("the largest of {sel}", "max(S, default=0)"),
    ("the smallest of {sel}", "min(S, default=0)"),
    ("the number of {sel}", "len(S)"),
    ("{sel} sorted in increasing order", "sorted(S)"),
    ("{sel} sorted in decreasing order", "sorted(S, reverse=True)"),
    ("{sel} each squared", "[v * v for v in S]"),
    ("{sel} each multiplied by {m}", "[v * {m} for v in S]"),
    ("{sel} each increased by {m}", "[v + {m} for v in S]"),
    ("the first {m} of {sel}", "S[:{m}]"),
    ("the last {m} of {sel}", "S[-{m}:]"),
]
_CODE = [
    _Template(f"Given a list xs, return {red.replace('{sel}', sel)}.", gold.replace("S", selected))
    for sel, selected in _SELECTIONS
    for red, gold in _REDUCTIONS
]
_CODE_SLOTS = {"k": range(5, 96), "d": range(2, 10), "m": range(2, 10)}


def _cases(rng: random.Random) -> tuple[dict[str, Any], ...]:
    """The inputs a code answer is run on."""
    return tuple({"xs": [rng.randint(0, 99) for _ in range(rng.randint(5, 12))]} for _ in range(4))


# --- sql -------------------------------------------------------------------------------------

_JOIN = "FROM employees e JOIN departments d ON e.dept_id = d.id"
_SQL = [
    _Template(
        "How many employees work in the {d} department?",
        f"SELECT COUNT(*) {_JOIN} WHERE d.name = '{{d}}'",
    ),
    _Template(
        "What is the average salary in the {d} department?",
        f"SELECT AVG(e.salary) {_JOIN} WHERE d.name = '{{d}}'",
    ),
    _Template(
        "List the names of employees in {d} older than {a}, alphabetically.",
        f"SELECT e.name {_JOIN} WHERE d.name = '{{d}}' AND e.age > {{a}} ORDER BY e.name",
    ),
    _Template(
        "What is the total project budget of the {d} department?",
        "SELECT SUM(p.budget) FROM projects p JOIN departments d ON p.dept_id = d.id "
        "WHERE d.name = '{d}'",
    ),
    _Template(
        "How many employees earn more than {s}?",
        "SELECT COUNT(*) FROM employees WHERE salary > {s}",
    ),
    _Template(
        "Which departments have more than {c} employees? Give their names alphabetically.",
        "SELECT d.name FROM departments d JOIN employees e ON e.dept_id = d.id GROUP BY d.id "
        "HAVING COUNT(*) > {c} ORDER BY d.name",
    ),
    _Template(
        "How many departments have more than {c} employees?",
        "SELECT COUNT(*) FROM (SELECT d.id FROM departments d JOIN employees e "
        "ON e.dept_id = d.id GROUP BY d.id HAVING COUNT(*) > {c})",
    ),
    _Template(
        "How many employees work on floor {f}?",
        f"SELECT COUNT(*) {_JOIN} WHERE d.floor = {{f}}",
    ),
    _Template(
        "What is the highest salary on floor {f}?",
        f"SELECT MAX(e.salary) {_JOIN} WHERE d.floor = {{f}}",
    ),
    _Template(
        "How many employees in the {d} department earn more than {s}?",
        f"SELECT COUNT(*) {_JOIN} WHERE d.name = '{{d}}' AND e.salary > {{s}}",
    ),
    _Template(
        "How many employees older than {a} earn less than {s}?",
        "SELECT COUNT(*) FROM employees WHERE age > {a} AND salary < {s}",
    ),
    _Template(
        "What is the average age of employees in {d} earning more than {s}?",
        f"SELECT AVG(e.age) {_JOIN} WHERE d.name = '{{d}}' AND e.salary > {{s}}",
    ),
    _Template(
        "List the titles of projects with a budget over {b}, alphabetically.",
        "SELECT title FROM projects WHERE budget > {b} ORDER BY title",
    ),
    _Template(
        "How many projects of the {d} department have a budget over {b}?",
        "SELECT COUNT(*) FROM projects p JOIN departments d ON p.dept_id = d.id "
        "WHERE d.name = '{d}' AND p.budget > {b}",
    ),
    _Template(
        "What is the highest salary of employees younger than {a}?",
        "SELECT MAX(salary) FROM employees WHERE age < {a}",
    ),
    _Template(
        "How many employees on floor {f} are older than {a}?",
        f"SELECT COUNT(*) {_JOIN} WHERE d.floor = {{f}} AND e.age > {{a}}",
    ),
    _Template(
        "List the names of employees on floor {f} earning more than {s}, alphabetically.",
        f"SELECT e.name {_JOIN} WHERE d.floor = {{f}} AND e.salary > {{s}} ORDER BY e.name",
    ),
]
_SQL_SLOTS = {
    "d": DEPARTMENTS,
    "a": range(20, 65),
    "s": range(40000, 150001, 1000),
    "c": range(2, 13),
    "f": range(1, 6),
    "b": range(50000, 450001, 10000),
}
#: Numbers only val (or only test) requests use, never train: a model must copy, not recall them.
_SQL_UNSEEN = {
    "a": {"test": {23, 33, 47, 52, 61}, "val": {29, 38, 41, 56, 64}},
    "s": {
        "test": {52000, 75000, 85000, 98000, 115000, 127000},
        "val": {48000, 65000, 91000, 103000, 135000, 142000},
    },
}


# --- shell -----------------------------------------------------------------------------------

_SHELL = [
    _Template("List the files in the {p}/src directory.", "ls {p}/src"),
    _Template("Count the lines of {p}/src/mod{i}.py.", "wc -l < {p}/src/mod{i}.py"),
    _Template(
        "Show the lines containing TODO in {p}/src/mod{i}.py.", "grep TODO {p}/src/mod{i}.py"
    ),
    _Template(
        "Count the lines of {p}/src/mod{i}.py without TODO.", "grep -vc TODO {p}/src/mod{i}.py"
    ),
    _Template("Count the lines containing {w} in logs/{p}.log.", "grep -c {w} logs/{p}.log"),
    _Template("Show the lines containing {w} in logs/{p}.log.", "grep {w} logs/{p}.log"),
    _Template("Print the first {n} lines of {p}/data.csv.", "head -n {n} {p}/data.csv"),
    _Template("Print line {n} of {p}/data.csv.", "sed -n {n}p {p}/data.csv"),
    _Template("Show the rows of {p}/data.csv that contain {v}.", "grep {v} {p}/data.csv"),
    _Template("Print the first {n} lines of {p}/src/mod{i}.py.", "head -n {n} {p}/src/mod{i}.py"),
    _Template("Print the last {n} lines of {p}/src/mod{i}.py.", "tail -n {n} {p}/src/mod{i}.py"),
    _Template("Find the README.md of {p}.", "find {p} -name README.md"),
    _Template("Count the words in {p}/README.md.", "wc -w < {p}/README.md"),
    _Template("List the python files under {p}, sorted.", "find {p} -name '*.py' | sort"),
    _Template("Count the python files under {p}.", "find {p} -name '*.py' | wc -l"),
    _Template(
        "Show the last {n} lines of logs/{p}.log in reverse alphabetical order.",
        "tail -n {n} logs/{p}.log | sort -r",
    ),
]
_SHELL_SLOTS = {
    "p": PROJECTS,
    "i": range(MODULES),
    "w": LEVELS,
    "n": range(1, 10),
    "v": range(12),
}


#: skill → (templates, argument slots, values held out for val and test)
_SPECS: dict[str, tuple[list[_Template], dict[str, Sequence[Any]], dict[str, dict[str, set]]]] = {
    "code": (_CODE, _CODE_SLOTS, {}),
    "sql": (_SQL, _SQL_SLOTS, _SQL_UNSEEN),
    "shell": (_SHELL, _SHELL_SLOTS, {}),
}


def generate(skill: str, split: str, n: int, *, seed: int = 0) -> list[Problem]:
    """``n`` problems of ``skill`` on ``split``, deterministic from ``seed``.

    Each problem picks a template at random (templates weigh the same in every split), then one
    of that template's requests not drawn yet: val and test problems are distinct requests, and
    a template whose requests are used up is left out. Train repeats its requests once they are
    all drawn (training examples, not measurements).

    Raises:
        CycleQDError: an unknown skill or split, or more val/test problems than distinct
            requests (:func:`capacity`).
    """
    _check(skill, split)
    pools = _pools(skill)[split]
    available = sum(len(pool) for pool in pools)
    if split != "train" and n > available:
        raise CycleQDError(
            f"{skill} {split} holds {available} distinct requests; ask for at most that many "
            f"(problems / test_problems)"
        )
    rng = random.Random(f"{skill}:{split}:{seed}")
    queues: list[list[tuple[str, str]]] = [[] for _ in pools]
    out: list[Problem] = []
    while len(out) < n:
        live = [i for i, q in enumerate(queues) if q]
        if not live:  # every request drawn (train only): start another round
            queues = [rng.sample(pool, len(pool)) for pool in pools]
            continue
        prompt, gold = queues[rng.choice(live)].pop()
        cases = _cases(rng) if skill == "code" else ()
        out.append(Problem(skill, prompt, gold, cases))
    return out


def prompt_of(prompt: str) -> str:
    """The text a model is given for a request (what the tiny models are trained on, too)."""
    return f"Q: {prompt}\nA:"
