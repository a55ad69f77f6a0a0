"""The worlds SQL and shell requests run in: the skill's database and its fixture tree.

Both are deterministic (the database from a seed), so that a gold program gives the same output
on every machine; the request templates draw their arguments (departments, projects, log levels)
from the same lists.
"""

from __future__ import annotations

import random

__all__ = [
    "DEPARTMENTS",
    "LEVELS",
    "MODULES",
    "PROJECTS",
    "SCHEMA",
    "shell_fixture",
    "sql_database",
]

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
