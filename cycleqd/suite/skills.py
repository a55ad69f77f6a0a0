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

import functools
import hashlib
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox.box import Limits, Sandbox, shared_sandbox
from cycleqd.scorers import TaskShape
from cycleqd.stats import Score

__all__ = [
    "SKILLS",
    "Problem",
    "SkillAccuracy",
    "capacity",
    "generate",
    "gold_outputs",
    "prompt_of",
    "score",
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

PROJECTS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "omega",
    "sigma",
    "kappa",
    "theta",
    "lambda",
    "zeta",
    "iota",
    "rho",
    "tau",
    "phi",
    "chi",
    "psi",
    "eta",
    "nu",
    "mu",
    "xi",
]
LEVELS = ["INFO", "WARN", "ERROR", "DEBUG"]
MODULES = 6


def shell_fixture() -> dict[str, str]:
    """The fixture tree shell commands run on (path → text)."""
    files = {}
    for n, project in enumerate(PROJECTS):
        for i in range(MODULES):
            body = "\n".join(
                f"{'TODO ' if (i + j + n) % 3 == 0 else ''}line {j} of {project}{i}"
                for j in range(3 + (i + n) % 7)
            )
            files[f"{project}/src/mod{i}.py"] = body + "\n"
        readme = f"# {project}\nnotes for {project}\n" + "see src\n" * (n % 3)
        files[f"{project}/README.md"] = readme
        rows = [f"{project},{(v * 7 + n) % 12}" for v in range(9)]
        files[f"{project}/data.csv"] = "\n".join(rows) + "\n"
        files[f"logs/{project}.log"] = (
            "\n".join(f"{LEVELS[(n + i * i) % 4]} event {i}" for i in range(6 + n % 6)) + "\n"
        )
    return files


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


def prompt_of(prompt: str) -> str:
    """The text a model is given for a request (what the tiny models are trained on, too)."""
    return f"Q: {prompt}\nA:"


class SkillAccuracy:
    """Scorer: the share of a skill's problems a language model solves, by execution.

    Prompts of the split are decoded greedily all at once
    (:func:`cycleqd.generation.decode.greedy_decode`) and every answer runs in the sandbox against
    its gold program. The tokenizer is the one the model source attaches as ``model.tokenizer``.
    Returns a :class:`cycleqd.stats.Score` (each request's verdict kept, for intervals).

    Args:
        skill: ``code``, ``sql`` or ``shell``.
        problems: val problems (the final choice and the baselines' sweeps score these).
        test_problems: test problems (scored only for the report); default: ``problems``.
        search_problems: the first this many val problems form the ``search`` split that
            evolution scores every child on (a fixed subset: cheaper children); default: all
            of val.
        seed: generates the problems.
        max_new_tokens: longest answer; default: the longest gold answer of the split (in the
            model's tokens) plus 4, so that a rambling child stops as soon as it must be wrong.

    Raises:
        CycleQDError: more val or test problems than the skill's split holds distinct requests,
            or a search subset larger than val.
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs: its search split, decoded in one batch (the planning hook)."""
        val = int(params.get("problems", 300))
        search = int(params.get("search_problems") or val)
        return TaskShape(problems=search, prompt_tokens=24, new_tokens=32, one_batch=True)

    def __init__(
        self,
        *,
        skill: str,
        problems: int = 300,
        test_problems: int | None = None,
        search_problems: int | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> None:
        self.skill, self.seed, self.max_new_tokens = skill, seed, max_new_tokens
        if search_problems is not None and not 0 < search_problems <= problems:
            raise CycleQDError(
                f"skill_accuracy: search_problems={search_problems} must be between 1 and "
                f"problems={problems} (the search split is a subset of val)"
            )
        val = generate(skill, "val", problems, seed=seed)
        self.problems = {
            "val": val,
            "search": val[: search_problems or problems],
            "test": generate(skill, "test", test_problems or problems, seed=seed),
        }
        self.search_split = search_problems is not None
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
        from cycleqd.generation.decode import greedy_decode

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

    def __call__(self, model: Any, split: str) -> Score:
        """Accuracy on ``split`` (``val``, ``search`` or ``test``), with each verdict."""
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
        return Score(verdicts)
