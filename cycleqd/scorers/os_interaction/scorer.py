"""OS interaction: a model solves shell tasks over several turns in the sandbox (AgentBench OS).

The protocol, the replay of an episode's commands and the sandbox's scripts are described in
:mod:`cycleqd.scorers.os_interaction.episode`; the task files in
:mod:`cycleqd.scorers.os_interaction.tasks`.

The verdict: an ``answer`` task passes when the model's answer, stripped, equals the record's
``answer``, stripped. A ``check`` task passes when, after the model answered or finished, its check
script exits 0: it runs in a fresh bash, in the task's working directory, after a silent replay of
``init`` and every command of the episode, with the model's answer (empty after ``finish``) in the
environment variable ``ANSWER`` and as ``$1`` (as AgentBench passes it). The answer reaches the
check as a file read by the sandbox's own script (``ANSWER=$(cat …)``), never pasted into a
script, since it is model text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.generation.backends import Backend, Message
from cycleqd.models.context import ScoringContext
from cycleqd.sandbox.box import Limits
from cycleqd.scorers import TaskShape
from cycleqd.scorers._common import GenerationSettings, RunMemo, check_split, data_shape
from cycleqd.scorers.os_interaction.episode import (
    _CHECK_CODE,
    _TURN_CODE,
    BASH,
    NEW_PROBLEM,
    ONE_SHOT,
    STOP,
    SYSTEM_PROMPT,
    Episode,
    _replay,
    observation,
    parse_action,
    turn_script,
)
from cycleqd.scorers.os_interaction.tasks import _RESERVED, WHAT, OSTask, load_tasks

__all__ = ["OSInteraction"]


class OSInteraction:
    """Scorer: the share of OS-interaction tasks a language model solves in the sandbox.

    Args:
        val: the val tasks' file (JSON list or JSONL; see
            :mod:`cycleqd.scorers.os_interaction.tasks`).
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
        memoize: keep every sandbox run by what it ran (a turn: the task and the whole
            transcript of commands so far; a check: the task, the commands and the answer) and
            never run one again (:class:`~cycleqd.scorers._common.RunMemo`: for deterministic
            commands; a run cut by a limit keeps its first result).

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
        memoize: bool = True,
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
        self.memo = RunMemo() if memoize else None
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

    def _run(self, sandbox: Any, problems: list[dict[str, Any]], limits: Limits) -> list[Any]:
        if self.memo is None:
            return sandbox.run("shell", problems, limits=limits)
        return self.memo.run(sandbox, "shell", problems, limits=limits)

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

    def play(self, model: Any, split: str, context: ScoringContext | None = None) -> list[Episode]:
        """Run every task of ``split`` as an episode; their transcripts and verdicts."""
        from cycleqd.sandbox.box import shared_sandbox

        check_split(split, WHAT)
        sandbox = shared_sandbox()
        episodes = [Episode(task, self._messages(task)) for task in self.tasks[split]]
        for turn in range(self.max_turns):
            active = [e for e in episodes if e.action is None]
            if not active:
                break
            conversations = [e.messages for e in active]
            replies = self.generation.chat(model, conversations, stop=STOP, context=context)
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
            results = self._run(sandbox, problems, self._limits(scripts))
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
        results = self._run(sandbox, problems, self._limits(scripts))
        for episode, result in zip(checks, results, strict=True):
            episode.passed = result.ok

    takes_context = True

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> float:
        """The share of ``split``'s tasks passed (``context``: see :mod:`cycleqd.scorers`)."""
        episodes = self.play(model, split, context)
        return sum(e.passed for e in episodes) / len(episodes)
