"""OS interaction: a model solves shell tasks over several turns in the sandbox (AgentBench OS).

The protocol is AgentBench's. A system prompt explains three actions; each reply takes one:

* ``Act: bash`` followed by a fenced ```` ```bash ```` block: the block runs in the task's working
  directory and its output (stdout and stderr together, cut to ``max_output`` characters, with a
  note when it was stopped for running too long) comes back as the next user message,
  ``The output of the OS:`` and the output;
* ``Act: answer(<answer>)``: the answer, on one line; the episode ends;
* ``Act: finish``: the task asked for changes and needs no answer; the episode ends.

A reply with none of the actions (its first well-formed ``Act:`` line counts: what follows is the
model imagining the next turns) ends the episode as failed, and so does running out of
``max_turns``. Replies are generated for all unfinished episodes of a split at once, and their
commands run as one sandbox batch per turn.

State across turns: the sandbox is stateless per problem (each run gets a fresh copy of the
task's files), so every turn runs a bash script that replays the episode so far: the task's
``init`` (in a subshell, like AgentBench's independent set-up), then every earlier command in the
same shell with its output discarded (``eval '<command>' >/dev/null 2>&1``: the current shell, not
a subshell, so ``cd``, variables and functions persist; ``eval`` keeps a command with a syntax
error from ending the replay), then the new command. Consequences worth knowing: a
non-deterministic command (``date``, ``$RANDOM``, ``mktemp``) may replay differently from what the
model saw; a command that was stopped (it ran past ``command_timeout_s`` or wrote more than the
sandbox's output cap) is not replayed, so its partial effects are lost; a command that ends the
shell (``exit``, a failure under ``set -e``) also ends every later replay before the new command.
The new command gets ``command_timeout_s`` seconds; the turn as a whole (replays included) is
bounded by the sandbox's wall-clock limit. Commands run under bash (``/usr/bin/bash``), as in
AgentBench, inside the sandbox only (:mod:`cycleqd.sandbox.box`): model-written commands are hostile
input and never run on the host. The sandbox sees the host's ``/usr`` (and the
``/etc/alternatives`` links that name ``awk`` on Debian), nothing else of ``/etc``.

The verdict: an ``answer`` task passes when the model's answer, stripped, equals the record's
``answer``, stripped. A ``check`` task passes when, after the model answered or finished, its check
script exits 0: it runs in a fresh bash, in the task's working directory, after a silent replay of
``init`` and every command of the episode, with the model's answer (empty after ``finish``) in the
environment variable ``ANSWER`` and as ``$1`` (as AgentBench passes it). The answer reaches the
check as a file read by the sandbox's own script (``ANSWER=$(cat …)``), never pasted into a
script, since it is model text.

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

import math
import re
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.generation.backends import Backend, Message
from cycleqd.sandbox.box import Limits, SandboxResult
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import (
    GenerationSettings,
    check_split,
    code_block,
    data_shape,
    read_records,
    require,
)

__all__ = ["Episode", "OSInteraction", "OSTask", "load_tasks", "parse_action"]

WHAT = "os_interaction"
BASH = "/usr/bin/bash"
#: The per-problem folder that carries the scripts into the sandbox; removed before they run.
_RESERVED = ".cycleqd"
_TIMEOUT_MARK = "cycleqd: the command timed out"
OBSERVATION = "The output of the OS:\n"
EMPTY_OBSERVATION = "The output of the OS is empty."
TRUNCATED = "\n[truncated because the output is too long]"
NEW_PROBLEM = "Now, I will start a new problem in a new OS. My problem is:\n\n"
#: A base model tends to write the next turn itself: the reply ends there.
STOP = ("\nThe output of the OS", "\nuser:")

SYSTEM_PROMPT = """\
You are an assistant that works in a Linux shell (bash) to solve the user's problem. You start \
in the problem's working directory. In each turn, first think about what to do, then take \
exactly one of three actions: "bash", "answer" or "finish".

1. To run bash commands, reply like this (the output comes back to you):

Think: your thought here.

Act: bash

```bash
# your commands here
```

2. When you know the answer to the question, reply like this:

Think: your thought here.

Act: answer(the answer, on one line, inside these parentheses)

3. When the problem asked you to change something and you are done, reply like this:

Think: your thought here.

Act: finish

Long outputs are truncated: then get what you need with a narrower command. Commands must not \
read input, and each may run for at most {timeout:g} seconds. Take only one action per turn."""

#: The one-shot example that follows the system prompt (AgentBench's form, its own content).
ONE_SHOT: tuple[Message, ...] = (
    {"role": "user", "content": "How many lines does the file notes/todo.txt have?"},
    {
        "role": "assistant",
        "content": "Think: I count the lines of the file with wc.\n\nAct: bash\n\n"
        "```bash\nwc -l < notes/todo.txt\n```",
    },
    {"role": "user", "content": OBSERVATION + "14"},
    {"role": "assistant", "content": "Think: The file has 14 lines.\n\nAct: answer(14)"},
)


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


@dataclass
class Episode:
    """What happened on one task.

    Attributes:
        task: the task.
        messages: the conversation, system prompt first.
        commands: the commands of the episode that are replayed (those that were not stopped).
        action: how it ended: ``"answer"``, ``"finish"``, ``"invalid"`` (a reply with no action)
            or ``"turns"`` (out of turns).
        answer: the model's answer (``""`` after ``finish``), ``None`` if it never answered.
        passed: the verdict.
    """

    task: OSTask
    messages: list[Message]
    commands: list[str] = field(default_factory=list)
    action: str | None = None
    answer: str | None = None
    passed: bool = False


# --- reading tasks ---------------------------------------------------------------------------


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


# --- the protocol ----------------------------------------------------------------------------

_ACT = re.compile(r"Act:[ \t]*([^\n]*)")


def parse_action(reply: str) -> tuple[str | None, str]:
    """The action of a reply: ``("bash", commands)``, ``("answer", text)``, ``("finish", "")``.

    The reply's first ``Act:`` line that names a well-formed action counts (what follows is the
    model imagining the next turns); ``(None, "")`` when there is none. A bash action needs a
    non-empty fenced block (labelled bash, sh or shell, or unlabelled) after its ``Act:`` line;
    an answer is the text between the first ``(`` and the last ``)`` of its line.
    """
    for match in _ACT.finditer(reply):
        text = match.group(1).strip()
        name = text.lower()
        if name.startswith("bash"):
            block = code_block(reply[match.end() :], ("bash", "sh", "shell"))
            if block is not None and block.strip():
                return "bash", block.strip()
        elif name.startswith("finish"):
            return "finish", ""
        elif name.startswith("answer"):
            content = text[len("answer") :]
            left, right = content.find("("), content.rfind(")")
            if left != -1 and right > left:
                return "answer", content[left + 1 : right]
    return None, ""


def _replay(task: OSTask, commands: Sequence[str]) -> list[str]:
    """Script lines that rebuild an episode's state silently (see the module's docstring)."""
    lines = [f"rm -rf ./{_RESERVED}"]  # the scripts' folder: gone before anything else runs
    silent = ">/dev/null 2>&1 </dev/null"
    if task.init:
        lines.append(f"( eval {shlex.quote(task.init)} ) {silent}")
    if task.start:
        lines.append(f"eval {shlex.quote(task.start)} {silent}")
    lines += [f"eval {shlex.quote(command)} {silent}" for command in commands]
    return lines


def turn_script(task: OSTask, commands: Sequence[str], command: str, timeout_s: float) -> str:
    """The bash script of a turn: the replay, then ``command`` with its output kept.

    A watchdog kills the shell (and the worker then everything left) when ``command`` runs past
    ``timeout_s``, and says so on stderr.
    """
    lines = _replay(task, commands)
    lines.append(
        f"( sleep {timeout_s:g}; echo {shlex.quote(_TIMEOUT_MARK)} >&2; kill -KILL $$ ) "
        ">/dev/null </dev/null &"
    )
    lines.append(f"eval {shlex.quote(command)} 2>&1 </dev/null")
    return "\n".join(lines) + "\n"


#: Runs a turn: bash reads the script into memory (its first line removes the folder), and
#: reports errors as ``bash: line N: ...``, as an interactive shell would, not with a file name.
_TURN_CODE = f"exec {BASH} -c 'eval \"$(cat ./{_RESERVED}/episode)\"' bash"
#: Runs a check: the answer and the check are read before the episode's replay (which may do
#: anything to the tree), the replay runs in a child shell, the check in a fresh one.
_CHECK_CODE = (
    f"ANSWER=$(cat ./{_RESERVED}/answer) && CHECK=$(cat ./{_RESERVED}/check) || exit 125\n"
    f"{BASH} ./{_RESERVED}/episode >/dev/null 2>&1 </dev/null\n"
    "export ANSWER\n"
    f'exec {BASH} -c "$CHECK" check "$ANSWER" </dev/null\n'
)


def observation(result: SandboxResult, max_output: int, timeout_s: float) -> tuple[str, bool]:
    """The user message that reports a command's result, and whether the command was stopped."""
    stderr = result.stderr.replace(_TIMEOUT_MARK + "\n", "").replace(_TIMEOUT_MARK, "")
    output = result.stdout + stderr
    timed_out = (
        result.error == "timeout"
        or _TIMEOUT_MARK in result.stderr
        or result.returncode == -signal.SIGKILL
    )
    stopped = timed_out or result.error is not None
    if len(output) > max_output:
        output = output[:max_output] + TRUNCATED
    notes = []
    if timed_out:
        notes.append(f"[the command ran past {timeout_s:g} seconds and was stopped]")
    elif result.error == "output limit":
        notes.append("[the command wrote too much output and was stopped]")
    elif result.error:
        notes.append(f"[the command could not run: {result.error}]")
    if not output.strip() and not notes:
        return EMPTY_OBSERVATION, stopped
    text = OBSERVATION + output.rstrip("\n")
    if notes:
        text += ("\n" if output.strip() else "") + "\n".join(notes)
    return text, stopped


# --- the scorer ------------------------------------------------------------------------------


class OSInteraction:
    """Scorer: the share of OS-interaction tasks a language model solves in the sandbox.

    Args:
        val: the val tasks' file (JSON list or JSONL; see the module's docstring).
        test: the test tasks' file; default: ``val``.
        limit: score only the first ``limit`` tasks of each split.
        max_turns: replies per episode; an episode that has not answered by then fails.
        max_output: characters of a command's output shown to the model.
        backend: the generation backend (a name, a dotted path or an object with ``chat``).
        backend_params: the backend's parameters.
        max_new_tokens: the longest reply.
        chat_template: a Jinja chat template instead of the tokenizer's (an expert trained with
            its own format).
        command_timeout_s: seconds a command may run before it is stopped.

    Raises:
        CycleQDError: a bad parameter or data file (named, with the fix); bash missing.
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs (the planning hook of :mod:`cycleqd.scorers`)."""
        return data_shape(
            params, 100, turns=8, turns_param="max_turns", prompt_tokens=600, new_tokens=256
        )

    def __init__(
        self,
        *,
        val: str,
        test: str | None = None,
        limit: int | None = None,
        max_turns: int = 8,
        max_output: int = 800,
        backend: str | Backend = "transformers",
        backend_params: dict[str, Any] | None = None,
        max_new_tokens: int = 256,
        chat_template: str | None = None,
        command_timeout_s: float = 5.0,
    ) -> None:
        if limit is not None and limit < 1:
            raise CycleQDError(f"{WHAT}: limit must be >= 1 (or unset for every task), got {limit}")
        if max_turns < 1:
            raise CycleQDError(f"{WHAT}: max_turns must be >= 1, got {max_turns}")
        if max_output < 1:
            raise CycleQDError(f"{WHAT}: max_output must be >= 1, got {max_output}")
        if not command_timeout_s > 0:
            raise CycleQDError(
                f"{WHAT}: command_timeout_s must be > 0 seconds, got {command_timeout_s}"
            )
        if not Path(BASH).is_file():
            raise CycleQDError(
                f"{WHAT}: the tasks' commands run under bash, and {BASH} is missing: install it "
                "with `apt-get install bash`"
            )
        self.max_turns, self.max_output = max_turns, max_output
        self.command_timeout_s = float(command_timeout_s)
        self.generation = GenerationSettings(
            backend=backend,
            backend_params=backend_params,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
        )
        self.tasks = {
            "val": load_tasks(val, limit=limit),
            "test": load_tasks(test if test is not None else val, limit=limit),
        }

    def _limits(self, scripts: int) -> Limits:
        """Limits of a run that executes ``scripts`` commands (replays, init, the new one)."""
        wall = self.command_timeout_s * scripts + 1.0
        return Limits(wall_s=wall, cpu_s=math.ceil(wall))

    def _messages(self, task: OSTask) -> list[Message]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT.format(timeout=self.command_timeout_s)},
            *(dict(m) for m in ONE_SHOT),
            {"role": "user", "content": NEW_PROBLEM + task.description},
        ]

    def play(self, model: Any, split: str) -> list[Episode]:
        """Run every task of ``split`` as an episode; their transcripts and verdicts."""
        from cycleqd.sandbox.box import shared_sandbox

        check_split(split, WHAT)
        sandbox = shared_sandbox()
        episodes = [Episode(task, self._messages(task)) for task in self.tasks[split]]
        for turn in range(self.max_turns):
            active = [e for e in episodes if e.action is None]
            if not active:
                break
            replies = self.generation.chat(model, [e.messages for e in active], stop=STOP)
            runs: list[tuple[Episode, str]] = []
            for episode, reply in zip(active, replies, strict=True):
                episode.messages.append({"role": "assistant", "content": reply})
                action, content = parse_action(reply)
                if action is None:
                    episode.action = "invalid"
                elif action != "bash":
                    episode.action, episode.answer = action, content
                elif turn == self.max_turns - 1:
                    episode.action = "turns"  # no turn left to use the output: save the run
                else:
                    runs.append((episode, content))
            if not runs:
                continue
            problems = [
                {
                    "code": _TURN_CODE,
                    "files": {
                        **e.task.files,
                        f"{_RESERVED}/episode": turn_script(
                            e.task, e.commands, command, self.command_timeout_s
                        ),
                    },
                }
                for e, command in runs
            ]
            scripts = 3 + max(len(e.commands) for e, _ in runs)
            results = sandbox.run("shell", problems, limits=self._limits(scripts))
            for (episode, command), result in zip(runs, results, strict=True):
                text, stopped = observation(result, self.max_output, self.command_timeout_s)
                if not stopped:
                    episode.commands.append(command)
                episode.messages.append({"role": "user", "content": text})
        for episode in episodes:
            if episode.action is None:
                episode.action = "turns"
        self._verdicts(sandbox, episodes)
        return episodes

    def _verdicts(self, sandbox: Any, episodes: Sequence[Episode]) -> None:
        checks: list[Episode] = []
        for episode in episodes:
            task = episode.task
            if episode.action not in ("answer", "finish"):
                continue
            if task.answer is not None:
                episode.passed = episode.action == "answer" and (
                    (episode.answer or "").strip() == task.answer.strip()
                )
            else:
                checks.append(episode)
        if not checks:
            return
        problems = [
            {
                "code": _CHECK_CODE,
                "files": {
                    **e.task.files,
                    f"{_RESERVED}/episode": "\n".join(_replay(e.task, e.commands)) + "\n",
                    f"{_RESERVED}/check": e.task.check or "",
                    f"{_RESERVED}/answer": (e.answer or "").strip(),
                },
            }
            for e in checks
        ]
        scripts = 3 + max(len(e.commands) for e in checks)
        results = sandbox.run("shell", problems, limits=self._limits(scripts))
        for episode, result in zip(checks, results, strict=True):
            episode.passed = result.ok

    def __call__(self, model: Any, split: str) -> float:
        """The share of ``split``'s tasks passed."""
        episodes = self.play(model, split)
        return sum(e.passed for e in episodes) / len(episodes)
