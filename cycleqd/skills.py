"""Synthetic agent skills, scored by executing what a model writes (in the sandbox).

A miniature of the paper's coding / database / OS tasks: a natural-language request becomes

* ``code`` — a one-line Python expression over the inputs ``xs`` (a list of ints) and ``k``;
  scored by evaluating it on several inputs against the gold expression's values;
* ``sql`` — a query over a small SQLite database (employees, departments, projects: joins and
  aggregates); scored by comparing result sets with the gold query's;
* ``shell`` — a command over a fixture directory tree (``ls``, ``grep``, ``wc``, ``sort``,
  ``head``, ``find``, pipes); scored by comparing its output, run on a fresh copy, with the gold
  command's.

Every split is generated from templates and a seed. Val and test requests are each a held-out
fifth of the template × argument combinations, or use numbers train never contains (whose digits
train covers in every position), so a model cannot pass by memorising; val is held out like test,
so that choosing models on val rewards what test measures.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox import Limits, Sandbox

__all__ = [
    "SKILLS",
    "Problem",
    "SkillAccuracy",
    "generate",
    "gold_outputs",
    "score",
    "shared_sandbox",
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


# --- code ------------------------------------------------------------------------------------

_SELECTIONS = [  # (phrase, condition on an element `v`)
    ("the elements", ""),
    ("the even elements", "v % 2 == 0"),
    ("the odd elements", "v % 2 == 1"),
    ("the elements greater than {k}", "v > {k}"),
    ("the elements less than {k}", "v < {k}"),
    ("the elements divisible by {k}", "v % {k} == 0"),
]
_REDUCTIONS = [  # (phrase, template over the selected list `S`)
    ("the sum of {sel}", "sum({S})"),
    ("the largest of {sel}", "max({S}, default=0)"),
    ("the smallest of {sel}", "min({S}, default=0)"),
    ("the number of {sel}", "len({S})"),
    ("{sel} sorted in increasing order", "sorted({S})"),
    ("{sel} sorted in decreasing order", "sorted({S}, reverse=True)"),
    ("{sel} each multiplied by {k}", "[v * {k} for v in {S}]"),
    ("the first {k} of {sel}", "{S}[:{k}]"),
    ("{sel} each squared", "[v * v for v in {S}]"),
]


def _split_of(prompt: str) -> str:
    """The split a request belongs to, by hash: a fifth each for val and test, the rest train.

    Val is held out like test (not a sample of train's requests), so that choosing among
    models on val rewards what test measures: requests never trained on.
    """
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 5
    return {0: "test", 1: "val"}.get(bucket, "train")


def _values(split: str, pool: Iterable[int], held_out: dict[str, set[int]]) -> list[int]:
    """Values of a split: val and test use their own ``held_out`` sets, train the rest."""
    if split in held_out:
        return sorted(held_out[split])
    return [v for v in pool if not any(v in held for held in held_out.values())]


def _code_problems(rng: random.Random, split: str, n: int) -> list[Problem]:
    out = []
    while len(out) < n:
        sel_phrase, condition = rng.choice(_SELECTIONS)
        red_phrase, template = rng.choice(_REDUCTIONS)
        if "{k}" not in sel_phrase + red_phrase:
            continue  # a request without k would read the same in every split
        k = rng.randint(2, 9)
        phrase = red_phrase.format(sel=sel_phrase.format(k=k), k=k)
        prompt = f"Given a list xs, return {phrase}."
        if _split_of(prompt) != split:
            continue  # val and test requests are (selection, reduction, k) never trained on
        selected = f"[v for v in xs if {condition.format(k=k)}]" if condition else "xs"
        cases = tuple(
            {"xs": [rng.randint(0, 40) for _ in range(rng.randint(5, 12))]} for _ in range(4)
        )
        out.append(Problem("code", prompt, template.format(S=selected, k=k), cases))
    return out


# --- sql -------------------------------------------------------------------------------------

DEPARTMENTS = [
    "sales",
    "research",
    "support",
    "legal",
    "design",
    "finance",
    "ops",
    "hr",
    "media",
    "security",
    "logistics",
    "quality",
]
SCHEMA = """
CREATE TABLE departments(id INTEGER PRIMARY KEY, name TEXT, floor INTEGER);
CREATE TABLE employees(id INTEGER PRIMARY KEY, name TEXT, dept_id INTEGER, salary INTEGER,
                       age INTEGER);
CREATE TABLE projects(id INTEGER PRIMARY KEY, title TEXT, dept_id INTEGER, budget INTEGER);
"""


def sql_database(seed: int = 0) -> str:
    """The SQL script that builds the skill's database (deterministic from ``seed``)."""
    rng = random.Random(seed)
    lines = [SCHEMA]
    for i, name in enumerate(DEPARTMENTS, 1):
        lines.append(f"INSERT INTO departments VALUES ({i}, '{name}', {rng.randint(1, 5)});")
    for i in range(1, 91):
        lines.append(
            f"INSERT INTO employees VALUES ({i}, 'emp{i}', {rng.randint(1, len(DEPARTMENTS))}, "
            f"{rng.randrange(30, 150) * 1000}, {rng.randint(20, 64)});"
        )
    for i in range(1, 37):
        lines.append(
            f"INSERT INTO projects VALUES ({i}, 'proj{i}', {rng.randint(1, len(DEPARTMENTS))}, "
            f"{rng.randrange(10, 500) * 1000});"
        )
    return "\n".join(lines)


_SQL = [
    (
        "How many employees work in the {d} department?",
        "SELECT COUNT(*) FROM employees e JOIN departments d ON e.dept_id = d.id "
        "WHERE d.name = '{d}'",
    ),
    (
        "What is the average salary in the {d} department?",
        "SELECT AVG(e.salary) FROM employees e JOIN departments d ON e.dept_id = d.id "
        "WHERE d.name = '{d}'",
    ),
    (
        "List the names of employees in {d} older than {a}, alphabetically.",
        "SELECT e.name FROM employees e JOIN departments d ON e.dept_id = d.id "
        "WHERE d.name = '{d}' AND e.age > {a} ORDER BY e.name",
    ),
    (
        "What is the total project budget of the {d} department?",
        "SELECT SUM(p.budget) FROM projects p JOIN departments d ON p.dept_id = d.id "
        "WHERE d.name = '{d}'",
    ),
    ("How many employees earn more than {s}?", "SELECT COUNT(*) FROM employees WHERE salary > {s}"),
    (
        "Which departments have more than {c} employees? Give their names alphabetically.",
        "SELECT d.name FROM departments d JOIN employees e ON e.dept_id = d.id GROUP BY d.id "
        "HAVING COUNT(*) > {c} ORDER BY d.name",
    ),
    (
        "How many departments have more than {c} employees?",
        "SELECT COUNT(*) FROM (SELECT d.id FROM departments d JOIN employees e "
        "ON e.dept_id = d.id GROUP BY d.id HAVING COUNT(*) > {c})",
    ),
    (
        "How many employees work on floor {f}?",
        "SELECT COUNT(*) FROM employees e JOIN departments d ON e.dept_id = d.id "
        "WHERE d.floor = {f}",
    ),
    (
        "What is the highest salary on floor {f}?",
        "SELECT MAX(e.salary) FROM employees e JOIN departments d ON e.dept_id = d.id "
        "WHERE d.floor = {f}",
    ),
]


#: Numbers only val (or only test) requests use, never train: a model must copy, not recall them.
_UNSEEN = {
    "a": {"test": {23, 33, 47, 52, 61}, "val": {29, 38, 41, 56, 64}},
    "s": {"test": {75000, 85000, 115000}, "val": {65000, 95000, 135000}},
}


def _draw(
    rng: random.Random,
    split: str,
    templates: Sequence[tuple[str, str]],
    slots: dict[str, Sequence[Any]],
) -> tuple[str, str]:
    """A ``(request, gold)`` of ``split`` from ``templates`` and argument ``slots``.

    A request with a number of :data:`_UNSEEN` belongs to the split the number is held out for;
    any other to its hashed split (:func:`_split_of`). So val and test requests are values or
    template × argument combinations that train never contains (and that each other do not).
    """
    while True:
        request, gold = rng.choice(templates)  # templates weigh the same in every split
        unseen = any("{" + name + "}" in request for name in _UNSEEN)
        for _ in range(64):
            values = {name: rng.choice(options) for name, options in slots.items()}
            for name, held in _UNSEEN.items():
                if name in values:
                    values[name] = rng.choice(_values(split, slots[name], held))
            prompt = request.format(**values)
            if unseen or _split_of(prompt) == split:
                return prompt, gold.format(**values)


def _sql_problems(rng: random.Random, split: str, n: int) -> list[Problem]:
    slots = {
        "d": DEPARTMENTS,
        "a": range(20, 65),
        "s": range(40000, 150001, 5000),
        "c": range(2, 13),
        "f": range(1, 6),
    }
    return [Problem("sql", *_draw(rng, split, _SQL, slots)) for _ in range(n)]


# --- shell -----------------------------------------------------------------------------------


PROJECTS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
LEVELS = ["INFO", "WARN", "ERROR", "DEBUG"]


def shell_fixture() -> dict[str, str]:
    """The fixture tree shell commands run on (path → text)."""
    files = {}
    for project in PROJECTS:
        for i in range(4):
            body = "\n".join(
                f"{'TODO ' if (i + j) % 3 == 0 else ''}line {j} of {project}{i}"
                for j in range(4 + i)
            )
            files[f"{project}/src/mod{i}.py"] = body + "\n"
        files[f"{project}/README.md"] = f"# {project}\nnotes for {project}\n"
        files[f"{project}/data.csv"] = "\n".join(f"{project},{v}" for v in range(5)) + "\n"
    files["logs/app.log"] = (
        "\n".join(f"{lvl} event {i}" for i, lvl in enumerate([*LEVELS, "INFO", "WARN"] * 3)) + "\n"
    )
    return files


_SHELL = [
    ("List the files in the {p}/src directory.", "ls {p}/src"),
    ("Count the lines of {p}/src/mod{i}.py.", "wc -l < {p}/src/mod{i}.py"),
    ("Show the lines containing TODO in {p}/src/mod{i}.py.", "grep TODO {p}/src/mod{i}.py"),
    ("Count the lines containing {w} in logs/app.log.", "grep -c {w} logs/app.log"),
    ("Print the first {n} lines of {p}/data.csv.", "head -n {n} {p}/data.csv"),
    ("Show the rows of {p}/data.csv that contain {v}.", "grep {v} {p}/data.csv"),
    ("Find the README.md of {p}.", "find {p} -name README.md"),
    ("List the python files under {p}, sorted.", "find {p} -name '*.py' | sort"),
    ("Count the python files under {p}.", "find {p} -name '*.py' | wc -l"),
    (
        "Show the last {n} lines of logs/app.log in reverse alphabetical order.",
        "tail -n {n} logs/app.log | sort -r",
    ),
]


def _shell_problems(rng: random.Random, split: str, n: int) -> list[Problem]:
    slots = {
        "p": PROJECTS,
        "i": range(4),
        "w": LEVELS,
        "n": range(1, 10),
        "v": range(5),
    }
    return [Problem("shell", *_draw(rng, split, _SHELL, slots)) for _ in range(n)]


_GENERATORS = {"code": _code_problems, "sql": _sql_problems, "shell": _shell_problems}


def generate(skill: str, split: str, n: int, *, seed: int = 0) -> list[Problem]:
    """``n`` problems of ``skill`` on ``split``, deterministic from ``seed``.

    Raises:
        CycleQDError: an unknown skill or split.
    """
    if skill not in _GENERATORS:
        raise CycleQDError(f"unknown skill {skill!r}; use one of {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise CycleQDError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    rng = random.Random(f"{skill}:{split}:{seed}")
    return _GENERATORS[skill](rng, split, n)


#: Every gold program finishes in milliseconds: an answer that runs for seconds is wrong anyway.
LIMITS = Limits(wall_s=2.0, cpu_s=2)


def _run(
    sandbox: Sandbox, skill: str, programs: Sequence[str], problems: Sequence[Problem]
) -> list[Any]:
    if skill == "code":
        results = sandbox.run(
            "python",
            [{"code": p, "cases": list(q.cases)} for p, q in zip(programs, problems, strict=True)],
            limits=LIMITS,
        )
        return [r.json() for r in results]
    if skill == "sql":
        results = sandbox.run(
            "sql", [{"code": p} for p in programs], sqlite=sql_database(), limits=LIMITS
        )
        return [r.json() for r in results]
    results = sandbox.run(
        "shell", [{"code": p} for p in programs], files=shell_fixture(), limits=LIMITS
    )
    return [r.stdout if r.ok else None for r in results]


def gold_outputs(sandbox: Sandbox, problems: Sequence[Problem]) -> list[Any]:
    """What each problem's gold program gives in ``sandbox`` (scorers compute it once)."""
    outputs: list[Any] = [None] * len(problems)
    for skill in SKILLS:
        idx = [i for i, p in enumerate(problems) if p.skill == skill]
        if idx:
            subset = [problems[i] for i in idx]
            ran = _run(sandbox, skill, [p.gold for p in subset], subset)
            for i, out in zip(idx, ran, strict=True):
                outputs[i] = out
    return outputs


def score(
    sandbox: Sandbox,
    problems: Sequence[Problem],
    answers: Sequence[str],
    gold: Sequence[Any] | None = None,
) -> list[bool]:
    """Whether each answer, executed in ``sandbox``, behaves like its problem's gold program.

    ``code``: every case gives the gold value; ``sql``: the same rows (order-insensitive unless
    the gold query orders them); ``shell``: the same output. An answer that fails, times out or
    errors on any case is wrong. ``gold``: :func:`gold_outputs` of the problems, if known.
    """
    gold = gold_outputs(sandbox, problems) if gold is None else gold
    verdicts = [False] * len(problems)
    for skill in SKILLS:
        idx = [i for i, p in enumerate(problems) if p.skill == skill]
        if not idx:
            continue
        subset = [problems[i] for i in idx]
        got = _run(sandbox, skill, [answers[i] for i in idx], subset)
        for i, problem, have in zip(idx, subset, got, strict=True):
            want = gold[i]
            if have is None or want is None:
                continue
            if skill == "code":
                verdicts[i] = all(h.get("ok") for h in have) and have == want
            elif skill == "sql":
                ordered = "ORDER BY" in problem.gold.upper()
                rows = (lambda r: r) if ordered else sorted
                verdicts[i] = rows(have["rows"]) == rows(want["rows"])
            else:
                verdicts[i] = have == want
    return verdicts


_SANDBOX: Sandbox | None = None


def shared_sandbox() -> Sandbox:
    """The process's sandbox pool, started on first use (scorers share it).

    It has as many workers as torch has threads here (at most 4): the CPUs this process may use.
    A Ray worker that reserved one CPU therefore runs one sandboxed process at a time, and does
    not take the CPU of the worker beside it.
    """
    global _SANDBOX
    if _SANDBOX is None:
        import torch

        _SANDBOX = Sandbox(workers=max(1, min(4, torch.get_num_threads())))
    return _SANDBOX


class SkillAccuracy:
    """Scorer: the share of a skill's problems a language model solves, by execution.

    Prompts of the split are decoded greedily all at once (:func:`cycleqd.decode.greedy_decode`)
    and every answer runs in the sandbox against its gold program. The tokenizer is the one the
    model source attaches as ``model.tokenizer``.

    Args:
        skill: ``code``, ``sql`` or ``shell``.
        problems: val problems (the evolution scores every candidate on these).
        test_problems: test problems (scored only for the final report; more of them cost
            little and make the report more precise); default: ``problems``.
        seed: generates the problems.
        max_new_tokens: longest answer; default: the longest gold answer of the split (in the
            model's tokens) plus 4, so that a rambling child stops as soon as it must be wrong.
    """

    def __init__(
        self,
        *,
        skill: str,
        problems: int = 100,
        test_problems: int | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> None:
        self.skill, self.seed, self.max_new_tokens = skill, seed, max_new_tokens
        self.problems = {
            "val": generate(skill, "val", problems, seed=seed),
            "test": generate(skill, "test", test_problems or problems, seed=seed),
        }
        self._gold: dict[str, list[Any]] = {}
        self._answers: dict[str, tuple[Any, list[str]]] = {}
        self._limits: dict[str, int] = {}

    def _limit(self, tokenizer: Any, split: str) -> int:
        if self.max_new_tokens:
            return self.max_new_tokens
        if split not in self._limits:  # the golds do not change: tokenise them once
            golds = [" " + p.gold for p in self.problems[split]]
            self._limits[split] = 4 + max(len(ids) for ids in tokenizer(golds)["input_ids"])
        return self._limits[split]

    def _decode(self, model: Any, tokenizer: Any, split: str) -> list[str]:
        """This scorer's completions for the model's current weights.

        An evaluator that marks each new set of weights (``model.cycleqd_weights_version``) gets
        every skill scorer's prompts decoded in one batch on the first scorer's call: one decoding
        loop per candidate instead of one per skill. Results are the same either way.
        """
        from cycleqd.decode import greedy_decode
        from cycleqd.tinylm import prompt_of

        version = getattr(model, "cycleqd_weights_version", None)
        peers: list[SkillAccuracy] = [self]
        if version is not None:
            peers = model.__dict__.setdefault("_cycleqd_skill_scorers", [])
            if self not in peers:
                peers.append(self)
            cached = self._answers.get(split)
            if cached is not None and cached[0] == version:
                return cached[1]
        prompts, limits, owners = [], [], []
        for peer in peers:
            problems = peer.problems[split]
            prompts += [prompt_of(p.prompt) for p in problems]
            limits += [peer._limit(tokenizer, split)] * len(problems)
            owners += [peer] * len(problems)
        answers = greedy_decode(model, tokenizer, prompts, max_new_tokens=limits, stop="\n")
        for peer in peers:
            mine = [a for a, o in zip(answers, owners, strict=True) if o is peer]
            peer._answers[split] = (version, mine)
        return self._answers[split][1]

    def __call__(self, model: Any, split: str) -> float:
        """Accuracy on ``split``."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise CycleQDError(
                "SkillAccuracy needs the model's tokenizer: the model source "
                "attaches it as model.tokenizer (base directory with tokenizer "
                "files)"
            )
        problems = self.problems[split]
        answers = self._decode(model, tokenizer, split)
        sandbox = shared_sandbox()
        if split not in self._gold:
            self._gold[split] = gold_outputs(sandbox, problems)
        verdicts = score(sandbox, problems, [a.strip() for a in answers], self._gold[split])
        return sum(verdicts) / len(verdicts)
