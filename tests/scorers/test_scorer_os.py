"""The OS-interaction scorer: shell episodes in the sandbox, scored by answer or check."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import REPO

from cycleqd.errors import CycleQDError
from cycleqd.scorers.os_interaction.episode import (
    EMPTY_OBSERVATION,
    NEW_PROBLEM,
    OBSERVATION,
    parse_action,
)
from cycleqd.scorers.os_interaction.scorer import OSInteraction
from cycleqd.scorers.os_interaction.tasks import load_tasks

SAMPLE = REPO / "experiments" / "data" / "os_sample.json"


def _tasks() -> list[dict]:
    return [
        {
            "id": "count",
            "description": "How many .txt files are in the current directory?",
            "files": {"a.txt": "1\n", "b.txt": "2\n", "c.md": "3\n", "sub/d.txt": "4\n"},
            "answer": "2",
            "example": "ls *.txt | wc -l",
        },
        {
            "id": "init-file",
            "description": "What is the secret word in secret/word.txt?",
            "init": "mkdir secret && echo swordfish > secret/word.txt",
            "answer": "swordfish",
            "example": "cat secret/word.txt",
        },
        {
            # the oracle runs each line of the example as its own turn: cd persists across turns
            "id": "cd",
            "description": "Change into deep/inner and list what is there.",
            "files": {"deep/inner/only-file": "x\n", "deep/other": "y\n"},
            "answer": "only-file",
            "example": "cd deep/inner\nls",
        },
        {
            "id": "hello",
            "description": "Create a file hello.txt containing hi.",
            "check": 'test "$(cat hello.txt)" = hi',
            "example": "echo hi > hello.txt",
        },
    ]


def _write(path: Path, records: list[dict], *, jsonl: bool = False) -> str:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture
def tasks_file(tmp_path):
    return _write(tmp_path / "os.json", _tasks())


class Oracle:
    """Runs each line of the task's example as one turn, then answers what it saw last.

    Check tasks: ``Act: finish`` when the last output was empty, else the output as the answer.
    """

    def __init__(self, path):
        self.tasks = load_tasks(path)
        self.calls = 0

    def _task(self, conversation):
        for message in conversation:
            if message["role"] == "user" and message["content"].startswith(NEW_PROBLEM):
                description = message["content"][len(NEW_PROBLEM) :]
                return next(t for t in self.tasks if t.description == description), message
        raise AssertionError("no problem in the conversation")

    def chat(self, model, conversations, *, max_new_tokens, stop=()):
        self.calls += 1
        replies = []
        for conversation in conversations:
            task, intro = self._task(conversation)
            turns = conversation[conversation.index(intro) + 1 :]
            steps = task.example.split("\n")
            done = sum(m["role"] == "assistant" for m in turns)
            if done < len(steps):
                replies.append(f"Think: step {done}.\n\nAct: bash\n\n```bash\n{steps[done]}\n```")
                continue
            last = turns[-1]["content"]
            output = "" if last == EMPTY_OBSERVATION else last.removeprefix(OBSERVATION).strip()
            if task.check is not None and not output:
                replies.append("Think: done.\n\nAct: finish")
            else:
                replies.append(f"Think: got it.\n\nAct: answer({output})")
        return replies


class Scripted:
    """Replies with the same scripted sequence in every episode (the last one repeated)."""

    def __init__(self, *replies):
        self.replies = replies

    def chat(self, model, conversations, *, max_new_tokens, stop=()):
        out = []
        for conversation in conversations:
            turn = sum(m["role"] == "assistant" for m in conversation) - 2  # minus the one-shot
            out.append(self.replies[min(turn, len(self.replies) - 1)])
        return out


def bash(command: str) -> str:
    return f"Think: try.\n\nAct: bash\n\n```bash\n{command}\n```"


def test_oracle_scores_one_on_every_task(tasks_file):
    oracle = Oracle(tasks_file)
    scorer = OSInteraction(val=tasks_file, backend=oracle, command_timeout_s=3)
    episodes = scorer.play(None, "val")
    assert [e.passed for e in episodes] == [True] * 4, [e.messages[-2:] for e in episodes]
    assert scorer(None, "test") == 1.0  # test defaults to val
    # one batched generation per turn, not per task: the cd task takes three replies
    assert oracle.calls == 2 * 3


def test_wrong_backend_scores_zero(tasks_file):
    scorer = OSInteraction(val=tasks_file, backend=Scripted("Think: hm.\n\nAct: answer(wrong)"))
    assert scorer(None, "val") == 0.0
    lazy = OSInteraction(val=tasks_file, backend=Scripted("Think: done.\n\nAct: finish"))
    episodes = lazy.play(None, "val")
    assert [e.action for e in episodes] == ["finish"] * 4
    assert not any(e.passed for e in episodes)  # finish is no answer, and hello.txt is missing


def test_state_persists_across_turns(tmp_path, tasks_file):
    cd_only = _write(tmp_path / "cd.jsonl", [_tasks()[2]], jsonl=True)
    episode = OSInteraction(val=cd_only, backend=Oracle(cd_only)).play(None, "val")[0]
    assert episode.passed and episode.commands == ["cd deep/inner", "ls"]
    assert episode.messages[-2]["content"] == OBSERVATION + "only-file"
    # without the replay of the first turn's cd, ls shows the top of the tree
    fresh = OSInteraction(val=cd_only, backend=Scripted(bash("ls"), "Act: answer(deep)"))
    assert fresh.play(None, "val")[0].messages[-2]["content"] == OBSERVATION + "deep"


def test_out_of_turns_and_no_action_fail(tasks_file):
    looping = OSInteraction(val=tasks_file, backend=Scripted(bash("echo 2")), max_turns=3)
    episodes = looping.play(None, "val")
    assert [e.action for e in episodes] == ["turns"] * 4 and looping(None, "val") == 0.0
    assert len(episodes[0].commands) == 2  # the last turn's command is never run
    mute = OSInteraction(val=tasks_file, backend=Scripted("I think the answer is 2."))
    assert [e.action for e in mute.play(None, "val")] == ["invalid"] * 4


def test_parse_action():
    assert parse_action("Think: x\nAct: bash\n```bash\nls -l\n```") == ("bash", "ls -l")
    assert parse_action("Act: answer(f(3))") == ("answer", "f(3)")
    assert parse_action("Act: finish") == ("finish", "")
    assert parse_action("Act: bash\nno block") == (None, "")
    # the first action counts: the rest is the model imagining the next turns
    assert parse_action("Act: answer(1)\nThe output of the OS:\nAct: answer(2)") == ("answer", "1")


def test_output_is_truncated_and_stderr_shown(tmp_path, tasks_file):
    scorer = OSInteraction(
        val=tasks_file,
        backend=Scripted(bash("seq 1 1000; ls missing-file"), "Act: answer(x)"),
        max_output=50,
    )
    shown = scorer.play(None, "val")[0].messages[-2]["content"]
    assert shown.startswith(OBSERVATION + "1\n2\n3\n") and "truncated" in shown
    assert len(shown) < 150
    short = OSInteraction(
        val=tasks_file, backend=Scripted(bash("ls missing-file"), "Act: answer(x)")
    )
    assert "missing-file" in short.play(None, "val")[0].messages[-2]["content"]


def test_tiny_model_runs(tasks_file, tiny_lm, tiny_ctx):
    scorer = OSInteraction(val=tasks_file, max_new_tokens=16, max_turns=2)
    score = scorer(tiny_lm, "val", tiny_ctx)
    assert 0.0 <= score <= 1.0


def test_hostile_model_stays_inside_and_scores_zero(tmp_path, tasks_file):
    outside = tmp_path / "escaped.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    hostile = Scripted(
        bash("cat /etc/shadow; cat /etc/passwd; ls /root /home"),
        bash(f"echo pwned > {outside}; echo pwned > ../../escaped.txt; ls {tmp_path}"),
        bash(
            f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected; "
            "curl -s http://example.com && echo fetched"
        ),
        bash("sleep 100"),
        bash("echo after"),
        "Act: answer(wrong)",
    )
    scorer = OSInteraction(val=tasks_file, backend=hostile, command_timeout_s=1, max_turns=6)
    episodes = scorer.play(None, "val")
    try:
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the host's network
    finally:
        server.close()
    assert not outside.exists()
    assert not (tmp_path.parent.parent / "escaped.txt").exists()
    assert not any(e.passed for e in episodes)
    shown = [m["content"] for m in episodes[0].messages if m["role"] == "user"][-5:]
    assert "root:" not in shown[0] and "No such file" in shown[0]
    assert "os.json" not in shown[1]  # the host's tmp directory is not there
    assert "connected" not in shown[2] and "fetched" not in shown[2]
    assert "ran past 1 seconds" in shown[3]
    assert shown[4] == OBSERVATION + "after"  # the sleep is not replayed: the next turn runs
    assert episodes[0].commands == [
        c.split("```bash\n")[1].split("\n```")[0]
        for c in hostile.replies[:3] + hostile.replies[4:5]
    ]


def test_an_agentbench_check_reads_the_answer_as_its_first_argument(tmp_path):
    """AgentBench runs ``bash -c check -- answer``: its checks compare ``$1``."""
    records = [
        {
            "description": "How many lines has notes.txt?",
            "files": {"notes.txt": "a\nb\nc\n"},
            "evaluation": {"check": {"code": 'test "$1" = "$(wc -l < notes.txt)"'}},
        }
    ]
    path = _write(tmp_path / "dollar1.json", records)
    right = OSInteraction(val=path, backend=Scripted("Act: answer(3)"))
    assert right(None, "val") == 1.0
    wrong = OSInteraction(val=path, backend=Scripted("Act: answer(4)"))
    assert wrong(None, "val") == 0.0


def test_answer_with_shell_metacharacters_is_never_executed(tmp_path):
    records = [
        {
            "description": "Give the literal text of a command substitution.",
            "files": {"keep.txt": "k\n"},
            "check": "test ! -e pwned && test -e keep.txt && test \"$ANSWER\" = '$(touch pwned)'",
        },
        {
            "description": "Give a text with quotes.",
            "files": {"keep.txt": "k\n"},
            "check": 'test -e keep.txt && test "$ANSWER" = "\'; rm -rf ~ ; touch pwned; \'"',
        },
    ]
    path = _write(tmp_path / "meta.json", records)

    class Literal:
        def chat(self, model, conversations, *, max_new_tokens, stop=()):
            answers = ["$(touch pwned)", "'; rm -rf ~ ; touch pwned; '"]
            return [
                f"Act: answer({answers[0] if 'substitution' in c[-1]['content'] else answers[1]})"
                for c in conversations
            ]

    episodes = OSInteraction(val=path, backend=Literal()).play(None, "val")
    assert [e.answer for e in episodes] == ["$(touch pwned)", "'; rm -rf ~ ; touch pwned; '"]
    assert [e.passed for e in episodes] == [True, True]
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"description": "d"}, "neither answer nor check"),
        ({"description": "d", "answer": "1", "check": "true"}, "both answer and check"),
        ({"answer": "1"}, "lacks field(s) ['description']"),
        ({"description": "d", "answer": "1", "files": ["a"]}, "files must be an object"),
        ({"description": "d", "answer": "1", "files": {"../x": ""}}, "must be relative"),
        ({"description": "d", "answer": "1", "files": {".cycleqd/x": ""}}, "reserved"),
        (
            {
                "description": "d",
                "evaluation": {"check": [None, {"language": "python", "file": "check/m.py"}]},
            },
            "inline it as a shell `check`",
        ),
        (
            {"description": "d", "create": {"init": {"file": "init/x.sh"}}, "answer": "1"},
            "paste its text",
        ),
        (
            {"description": "d", "evaluation": {"check": {"language": "python", "code": "1"}}},
            "only shell scripts",
        ),
        ({"description": "d", "answer": "1", "evaluation": {"match": "2"}}, "keep one"),
        ({"description": "d", "answer": ["1"]}, "answer must be a string"),
    ],
)
def test_bad_records_are_named(tmp_path, record, message):
    path = _write(tmp_path / "bad.json", [_tasks()[0], record])
    with pytest.raises(CycleQDError, match="record 1") as info:
        OSInteraction(val=path)
    assert message in str(info.value) and "bad.json" in str(info.value)


def test_bad_parameters_and_files(tmp_path, tasks_file):
    with pytest.raises(CycleQDError, match="does not exist"):
        OSInteraction(val=str(tmp_path / "missing.json"))
    with pytest.raises(CycleQDError, match="max_turns"):
        OSInteraction(val=tasks_file, max_turns=0)
    with pytest.raises(CycleQDError, match="unknown split"):
        OSInteraction(val=tasks_file, backend=Scripted("Act: finish"))(None, "train")


def test_limit_and_separate_test_split(tmp_path, tasks_file):
    test = _write(tmp_path / "test.jsonl", _tasks()[1:], jsonl=True)
    scorer = OSInteraction(val=tasks_file, test=test, limit=2, backend=Oracle(tasks_file))
    assert [t.id for t in scorer.tasks["val"]] == ["count", "init-file"]
    assert [t.id for t in scorer.tasks["test"]] == ["init-file", "cd"]
    assert scorer(None, "test") == 1.0


def test_shipped_sample_loads_and_the_oracle_solves_it():
    tasks = load_tasks(SAMPLE)
    assert len(tasks) >= 6
    assert {t.check is None for t in tasks} == {True, False}  # answer and check tasks
    assert all(t.example for t in tasks)
    scorer = OSInteraction(val=str(SAMPLE), backend=Oracle(SAMPLE), command_timeout_s=3)
    episodes = scorer.play(None, "val")
    assert [e.passed for e in episodes] == [True] * len(tasks), [
        (e.task.id, e.messages[-2:]) for e in episodes if not e.passed
    ]


def test_episodes_played_again_run_nothing_new_and_end_the_same(tasks_file):
    scorer = OSInteraction(val=tasks_file, backend=Oracle(tasks_file), command_timeout_s=3)
    first = scorer.play(None, "val")
    runs = scorer.memo.lookups - scorer.memo.hits
    assert runs > 0 and scorer.memo.hits == 0
    again = scorer.play(None, "val")  # the same transcripts: every run is known
    assert scorer.memo.lookups - scorer.memo.hits == runs and scorer.memo.hits == runs
    assert [e.messages for e in again] == [e.messages for e in first]
    assert [e.passed for e in again] == [e.passed for e in first] == [True] * 4
    plain = OSInteraction(val=tasks_file, backend=Oracle(tasks_file), memoize=False)
    assert plain.memo is None and [e.passed for e in plain.play(None, "val")] == [True] * 4
