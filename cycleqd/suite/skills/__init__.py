"""Synthetic agent skills, scored by executing what a model writes (in the sandbox).

A miniature of the paper's coding / database / OS tasks: a natural-language request becomes

* ``code`` — a one-line Python expression over the inputs ``xs`` (a list of ints) and ``k``;
  scored by evaluating it on several inputs against the gold expression's values;
* ``sql`` — a query over a small SQLite database (employees, departments, projects: joins and
  aggregates); scored by comparing result sets with the gold query's;
* ``shell`` — a command over a fixture directory tree (``ls``, ``grep``, ``wc``, ``sort``,
  ``head``, ``find``, pipes); scored by comparing its output, run on a fresh copy, with the gold
  command's.

Every split is generated from templates and a seed; val and test requests are never trained on
(:mod:`cycleqd.suite.skills.problems` says how).

Modules:
    fixtures: the SQL database and the shell fixture tree the programs run in.
    problems: the request templates per skill, the splits drawn from them (``generate``) and
        the prompt a model is given (``prompt_of``).
    execution: running gold programs and answers in the sandbox, and comparing what they give
        (``ExecutionMemo``: each distinct program runs once).
    accuracy: the ``SkillAccuracy`` scorer (decoding and execution-checked accuracy).

The names users and the scorer registry import from ``cycleqd.suite.skills`` are re-exported
here; the package's own modules import from the module that defines a name.
"""

from __future__ import annotations

from cycleqd.suite.skills.accuracy import SkillAccuracy
from cycleqd.suite.skills.execution import LIMITS, ExecutionMemo, gold_outputs, score
from cycleqd.suite.skills.fixtures import (
    DEPARTMENTS,
    LEVELS,
    MODULES,
    PROJECTS,
    SCHEMA,
    shell_fixture,
    sql_database,
)
from cycleqd.suite.skills.problems import SKILLS, SPLITS, Problem, capacity, generate, prompt_of

__all__ = [
    "DEPARTMENTS",
    "ExecutionMemo",
    "LEVELS",
    "LIMITS",
    "MODULES",
    "PROJECTS",
    "SCHEMA",
    "SKILLS",
    "SPLITS",
    "Problem",
    "SkillAccuracy",
    "capacity",
    "generate",
    "gold_outputs",
    "prompt_of",
    "score",
    "shell_fixture",
    "sql_database",
]
