"""OS interaction's tasks: the data files, read and checked (named errors with the fix).

Task files are a JSON list or JSONL (:func:`cycleqd.scorers._common.read_records`), a record per
task:

* ``description`` (required): the task, as the model reads it;
* ``id``: a name for reports (default: the file name and the record's number);
* ``files``: ``{relative path: UTF-8 text}``, the starting tree (the working directory);
* ``init``: a shell script run before the episode (set-up: files, permissions, variables do not
  persist);
* ``answer`` (the expected answer) or ``check`` (a shell script, exit status 0 = pass): exactly
  one;
* ``example``: a gold command (documentation; test oracles run it).

AgentBench OS's own keys are read too: ``create.init`` (a string, ``{"code": ...}`` or a list of
them) for ``init``, ``start`` (run in the episode's shell before the first command),
``evaluation.match`` (a string or ``{"answer": ...}``) for ``answer``, ``evaluation.check`` (a
string or ``{"code": ...}``) for ``check`` and ``evaluation.example`` for ``example``. Scripts
referenced by file (``{"file": ...}``) and AgentBench's Python check pipelines are errors that
say how to inline them as a shell ``check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.scorers._common import read_records, require

__all__ = ["OSTask", "load_tasks"]

WHAT = "os_interaction"
#: The per-problem folder that carries the scripts into the sandbox; removed before they run.
_RESERVED = ".cycleqd"


@dataclass(frozen=True)
class OSTask:
    """One task of a data file.

    Attributes:
        id: its name in reports.
        description: the problem as the model reads it.
        files: the starting tree, relative path → text.
        init: the set-up script (run in a subshell before the episode), or ``""``.
        start: a script run in the episode's own shell before the first command, or ``""``.
        answer: the expected answer (``None`` for a check task).
        check: the check script (``None`` for an answer task).
        example: a gold command, or ``None``.
    """

    id: str
    description: str
    files: dict[str, str] = field(default_factory=dict)
    init: str = ""
    start: str = ""
    answer: str | None = None
    check: str | None = None
    example: str | None = None


def _script(value: Any, *, where: str, key: str, allow_list: bool = False) -> str | None:
    """A shell script given as text, ``{"code": ...}`` (AgentBench) or, if allowed, a list."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if allow_list and isinstance(value, list):
        parts = [_script(v, where=where, key=key) for v in value]
        return "\n".join(p for p in parts if p)
    if isinstance(value, dict):
        language = str(value.get("language", "bash")).lower()
        if language not in ("bash", "sh", "shell"):
            raise CycleQDError(
                f"{where}: {key} is a {language} script; only shell scripts run here: rewrite "
                f"it in bash and give it inline as {key} (a string)"
            )
        if "code" in value and isinstance(value["code"], str):
            return value["code"]
        if "file" in value:
            raise CycleQDError(
                f"{where}: {key} refers to the file {value['file']!r}; scripts are not read "
                f"from files: paste its text into the record as {key} (a string)"
            )
    raise CycleQDError(
        f"{where}: {key} must be a shell script (a string or {{'code': ...}}), got {value!r}"
    )


def _files(value: Any, *, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CycleQDError(
            f"{where}: files must be an object of relative path → text, e.g. "
            '{"notes/a.txt": "hello\\n"}'
        )
    for path in value:
        parts = PurePosixPath(path).parts
        if not parts or path.startswith("/") or ".." in parts:
            raise CycleQDError(
                f"{where}: file path {path!r} must be relative and stay inside the working "
                "directory (no leading /, no ..)"
            )
        if parts[0] == _RESERVED:
            raise CycleQDError(
                f"{where}: file path {path!r}: the folder {_RESERVED}/ is reserved for the "
                "scorer's scripts; rename it"
            )
    return dict(value)


def _pick(record: dict[str, Any], key: str, native: Any, native_name: str, *, where: str) -> Any:
    """``record[key]`` or its AgentBench alias; both given is an error."""
    if key in record and native is not None:
        raise CycleQDError(f"{where}: both {key} and {native_name} are given; keep one")
    return record[key] if key in record else native


def _task(record: dict[str, Any], *, index: int, path: Path) -> OSTask:
    where = f"{path}, record {index}" + (f" (id {record['id']!r})" if "id" in record else "")
    require(record, ["description"], what=WHAT, where=where)
    where = f"{WHAT}: {where}"
    if not isinstance(record["description"], str) or not record["description"].strip():
        raise CycleQDError(f"{where}: description must be a non-empty string")
    create = record.get("create") or {}
    evaluation = record.get("evaluation") or {}
    if not isinstance(create, dict) or not isinstance(evaluation, dict):
        raise CycleQDError(f"{where}: create and evaluation must be objects (AgentBench format)")

    init = _script(
        _pick(record, "init", create.get("init"), "create.init", where=where),
        where=where,
        key="init",
        allow_list=True,
    )
    start = _script(record.get("start"), where=where, key="start")
    example = _script(
        _pick(record, "example", evaluation.get("example"), "evaluation.example", where=where),
        where=where,
        key="example",
    )

    answer = _pick(record, "answer", evaluation.get("match"), "evaluation.match", where=where)
    if isinstance(answer, dict) and "answer" in answer:
        answer = answer["answer"]
    if isinstance(answer, bool) or (
        answer is not None and not isinstance(answer, str | int | float)
    ):
        raise CycleQDError(
            f"{where}: answer must be a string (the expected answer), got {answer!r}"
        )
    answer = None if answer is None else str(answer)

    raw_check = _pick(record, "check", evaluation.get("check"), "evaluation.check", where=where)
    if isinstance(raw_check, list):
        raise CycleQDError(
            f"{where}: evaluation.check is an AgentBench check pipeline (Python scripts "
            "referenced by file), which does not run here: inline it as a shell `check` that "
            "exits 0 on a pass, the model's answer in $ANSWER, e.g. "
            '"check": "test \\"$ANSWER\\" = \\"$(<the example command>)\\""'
        )
    check = _script(raw_check, where=where, key="check")

    if answer is None and check is None:
        raise CycleQDError(
            f"{where}: has neither answer nor check: give the expected answer as answer, or a "
            "shell script that exits 0 on a pass as check"
        )
    if answer is not None and check is not None:
        raise CycleQDError(
            f"{where}: has both answer and check; keep one (a check can compare $ANSWER itself)"
        )
    if check is not None and not check.strip():
        raise CycleQDError(f"{where}: check is empty; give a script that exits 0 on a pass")
    return OSTask(
        id=str(record.get("id", f"{path.name}#{index}")),
        description=record["description"],
        files=_files(record.get("files"), where=where),
        init=init or "",
        start=start or "",
        answer=answer,
        check=check,
        example=example,
    )


def load_tasks(path: str | Path, *, limit: int | None = None) -> list[OSTask]:
    """The tasks of a JSON list or JSONL file (the first ``limit`` of them).

    Raises:
        CycleQDError: a missing or unreadable file, or a bad record (named, with the fix).
    """
    path = Path(path).expanduser()
    records = read_records(path, what=WHAT)
    if limit is not None:
        records = records[:limit]
    tasks = [_task(r, index=i, path=path) for i, r in enumerate(records)]
    if not tasks:
        raise CycleQDError(f"{WHAT}: {path} holds no tasks")
    return tasks
