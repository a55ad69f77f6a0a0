"""OS interaction's episodes: the prompts, the actions of a reply and the scripts of a turn.

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

The scorer (:mod:`cycleqd.scorers.os_interaction.scorer`) plays the episodes and judges them.
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from cycleqd.generation.backends import Message
from cycleqd.sandbox.box import SandboxResult
from cycleqd.scorers._common import code_block
from cycleqd.scorers.os_interaction.tasks import _RESERVED, OSTask

__all__ = ["Episode", "parse_action"]

BASH = "/usr/bin/bash"
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
