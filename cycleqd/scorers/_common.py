"""What the scorers of real tasks share: data files, the backend, replies' code blocks."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.generation.backends import Backend, Message, backend_for
from cycleqd.models.context import ScoringContext
from cycleqd.scorers import TaskShape

__all__ = ["GenerationSettings", "RunMemo", "code_block", "read_records"]

SPLITS = ("val", "test")


def read_records(path: str | Path, *, what: str) -> list[dict[str, Any]]:
    """The records of a JSONL file (one JSON object per line) or a JSON list.

    Raises:
        CycleQDError: a missing file, or a line that is not a JSON object (with its number).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CycleQDError(f"{what}: data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise CycleQDError(f"{what}: {path} is not valid JSON: {exc}") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise CycleQDError(f"{what}: {path} must hold a JSON list of objects")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CycleQDError(f"{what}: {path}, line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise CycleQDError(f"{what}: {path}, line {number}: expected a JSON object")
        records.append(record)
    if not records:
        raise CycleQDError(f"{what}: {path} holds no records")
    return records


def require(record: dict[str, Any], keys: Sequence[str], *, what: str, where: str) -> None:
    """Raise a clear error when ``record`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise CycleQDError(f"{what}: {where} lacks field(s) {missing}; it has {sorted(record)}")


_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def code_block(text: str, languages: Sequence[str] = ()) -> str | None:
    """The first fenced code block of ``text`` in one of ``languages`` (or unlabelled).

    An unclosed block runs to the end of the text (a reply cut by the token limit).
    ``None`` when the text has no fenced block.
    """
    fallback = None
    for match in _BLOCK.finditer(text):
        label, body = match.group(1).lower(), match.group(2)
        if not languages or label in languages:
            return body
        if not label and fallback is None:
            fallback = body
    return fallback


class GenerationSettings:
    """The backend a scorer generates with, and its reply limits.

    Args:
        backend: a backend name (``transformers``, ``vllm``), a dotted path, or a backend object.
        backend_params: the backend's parameters.
        max_new_tokens: the longest reply.
        chat_template: a Jinja chat template used instead of the tokenizer's (``None``: the
            tokenizer's).
    """

    def __init__(
        self,
        *,
        backend: str | Backend = "transformers",
        backend_params: dict[str, Any] | None = None,
        max_new_tokens: int = 512,
        chat_template: str | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise CycleQDError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.backend, self.backend_params = backend, dict(backend_params or {})
        self.max_new_tokens, self.chat_template = max_new_tokens, chat_template

    def chat(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]],
        stop: Sequence[str] = (),
        context: ScoringContext | None = None,
    ) -> list[str]:
        """Greedy replies to ``conversations`` from the configured backend.

        ``context``: the evaluator's (a fresh one when scored by hand, which holds no
        tokenizer).
        """
        if not conversations:
            return []
        context = context if context is not None else ScoringContext()
        backend = (
            backend_for(context, self.backend, **self.backend_params)
            if isinstance(self.backend, str)
            else self.backend
        )
        extra: dict[str, Any] = {"chat_template": self.chat_template} if self.chat_template else {}
        if getattr(backend, "takes_context", False):
            extra["context"] = context
        replies = backend.chat(
            model, conversations, max_new_tokens=self.max_new_tokens, stop=stop, **extra
        )
        if len(replies) != len(conversations):
            raise CycleQDError(
                f"the generation backend answered {len(replies)} of {len(conversations)} "
                "conversations"
            )
        return list(replies)


def check_split(split: str, what: str) -> None:
    """Raise a clear error for a split other than val and test."""
    if split not in SPLITS:
        raise CycleQDError(f"{what}: unknown split {split!r}; use val or test")


def data_shape(
    params: Any,
    problems: int,
    *,
    turns: int = 1,
    turns_param: str | None = None,
    prompt_tokens: int,
    new_tokens: int,
    count: Any = None,
) -> TaskShape:
    """The planner's shape of a scorer that reads its problems from ``params["val"]``.

    ``count(source)``: how many problems the val data holds (``None``: not on this machine);
    default: the records of a data file. ``problems`` is assumed where it cannot count.
    """
    source = params.get("val")
    counted = (count or count_records)(source)
    assumed = [] if counted is not None else [f"{problems} problems (val data not on this machine)"]
    return TaskShape(
        problems=problems if counted is None else counted,
        turns=int(params.get(turns_param, turns)) if turns_param else turns,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        assumed=assumed,
    )


def count_records(source: Any) -> int | None:
    """The records of a data file, ``None`` when ``source`` is not a file on this machine."""
    if isinstance(source, str) and Path(source).expanduser().is_file():
        return len(read_records(source, what="cycleqd plan"))
    return None


class RunMemo:
    """Sandbox results by what ran: a run asked for before is not run again.

    A run is its kind, the problem (its code and files: for a multi-turn episode, the script that
    replays the whole transcript so far), the batch's files and the limits; runs with equal
    inputs in one batch run once. For deterministic programs only: a run cut by its own limit
    keeps its first result, and a command that reads the clock keeps its first output; a run the
    sandbox failed (``SandboxResult.settled`` false) is not kept.

    Attributes:
        hits: runs whose result was known.
        lookups: runs asked for.
    """

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.hits = self.lookups = 0

    def run(
        self,
        sandbox: Any,
        kind: str,
        problems: Sequence[dict[str, Any]],
        *,
        files: dict[str, str] | None = None,
        limits: Any = None,
    ) -> list[Any]:
        """``sandbox.run(kind, problems, files=..., limits=...)``; known runs from the memo."""
        shared = json.dumps([kind, files, repr(limits)], sort_keys=True)
        keys = [
            hashlib.sha256((shared + json.dumps(p, sort_keys=True)).encode()).hexdigest()
            for p in problems
        ]
        todo = {key: i for i, key in reversed(list(enumerate(keys))) if key not in self.results}
        firsts = sorted(todo.values())
        known = dict.fromkeys(keys)
        if firsts:
            ran = sandbox.run(kind, [problems[i] for i in firsts], files=files, limits=limits)
            for i, result in zip(firsts, ran, strict=True):
                known[keys[i]] = result
                if result.settled:  # a sandbox failure is not the run's result: not kept
                    self.results[keys[i]] = result
        self.lookups += len(keys)
        self.hits += len(keys) - len(firsts)
        return [self.results.get(key, known[key]) for key in keys]
