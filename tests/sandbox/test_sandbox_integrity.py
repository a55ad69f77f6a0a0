"""The sandbox's verdicts cannot be forged, and no answer reaches its worker, its neighbours or
the host's memory: the holes an attacker found, each tried again here."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cycleqd.sandbox import cgroups
from cycleqd.sandbox.box import SLACK_S, Limits, Sandbox, SandboxUnavailable

# A one-line answer in the code skill's format that tries to take over its worker: find every
# process it can see (its parent first), stop it, take its descriptors 0 and 1 (the worker's
# request and reply pipes) with pidfd_getfd, and answer the worker's later requests itself.
TAKEOVER = r"""
import ctypes, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
pids = {os.getppid(), *(int(p) for p in os.listdir("/proc") if p.isdigit())}
seen = sorted(pids - {0, os.getpid()})
report = {"ppid": os.getppid(), "seen": seen, "stopped": [], "stolen": [], "signalled": []}
for pid in seen:
    try:
        os.kill(pid, signal.SIGSTOP)
        report["stopped"].append(pid)
    except OSError:
        pass
    pidfd = libc.syscall(434, pid, 0)
    for fd in (0, 1):
        got = libc.syscall(438, pidfd, fd, 0) if pidfd >= 0 else -1
        if got >= 0:
            report["stolen"].append([pid, fd])
            if fd == 1:
                os.write(got, b'{"done": 0}\n{"i": 0, "secret": "x", "result": {}}\n')
for name in os.listdir("/proc"):
    if name.isdigit() and int(name) != os.getpid():
        try:
            fd = os.open(f"/proc/{name}", os.O_DIRECTORY)
            if libc.syscall(424, fd, signal.SIGSTOP, None, 0) == 0:
                report["signalled"].append(int(name))
        except OSError:
            pass
sys.stderr.write(json.dumps(report))
"""


def _code(source: str) -> str:
    return f"exec({source!r})"


def _processes_with(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc's parent links)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


def test_a_takeover_attempt_sees_nothing_and_every_later_verdict_is_right():
    with Sandbox(workers=1, limits=Limits(wall_s=3)) as box:
        attack, *rest = box.run(
            "python",
            [
                {"code": _code(TAKEOVER), "cases": [{}]},
                {"code": "x * 2", "cases": [{"x": 21}]},
                {"code": "1 / 0", "cases": [{}]},
            ],
        )
        report = json.loads(attack.stderr)
        # its own PID namespace: no parent in sight, no process but its own
        assert report["ppid"] == 0 and report["seen"] == []
        assert report["stopped"] == report["stolen"] == report["signalled"] == []
        assert [r.json() for r in rest] == [
            [{"ok": True, "value": "42"}],
            [{"ok": False, "error": "ZeroDivisionError: division by zero"}],
        ]
        later = box.run("python", [{"code": f"{i} + 1", "cases": [{}]} for i in range(20)])
        assert [r.json()[0]["value"] for r in later] == [str(i + 1) for i in range(20)]
        wrong = box.run("python", [{"code": "undefined_name", "cases": [{}]}])[0]
        assert wrong.json()[0]["ok"] is False  # a wrong answer is still judged wrong
        assert box.incidents == []


def test_a_forged_or_stale_reply_is_detected_logged_and_its_worker_replaced(caplog):
    with Sandbox(workers=1) as box:
        worker = box._all[0]
        # what a process that reached the reply pipe would write: a verdict before its secret
        worker._buffer = b'{"i": 0, "secret": "guess", "result": {}}\n'
        with caplog.at_level("WARNING", logger="cycleqd.sandbox"):
            first, second = box.run(
                "python", [{"code": "1", "cases": [{}]}, {"code": "2", "cases": [{}]}]
            )
        assert first.error == "worker forged" and not first.ok
        assert second.json() == [{"ok": True, "value": "2"}]  # its neighbour is unharmed
        assert [kind for kind, _ in box.incidents] == ["forged"]
        assert "replaced (forged)" in caplog.text
        assert box._all[0] is not worker and worker.process.poll() is not None


def test_a_fork_hopping_program_leaves_no_process_and_no_file_behind():
    marker = "hop-marker-7d1f"
    hop = f"h() {{ echo x >> /tmp/{marker}; h & exit; }}; h & sleep 0.2; echo started"
    with Sandbox(workers=1, limits=Limits(wall_s=2)) as box:
        first = box.run("shell", [{"code": hop}])[0]
        assert first.stdout == "started\n"
        assert _processes_with(marker) == []  # gone on the host too
        later = box.run(
            "shell", [{"code": "sleep 0.5; ls -a /tmp /dev/shm; ls /proc | grep -c '^[0-9]'"}]
        )
        assert marker not in later[0].stdout
        assert later[0].stdout.split()[-1] == "3"  # sh, its sleep or ls, and grep: nothing else


HOLD = r"""
import os, sys, time
children, granted = [], 0
for i in range(8):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        block = bytearray(b"x") * (48 << 20)  # touched: resident, not only reserved
        os.write(w, b"1")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    children.append((pid, r))
for pid, r in children:
    granted += len(os.read(r, 1))
time.sleep(0.5)
holding = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid, _ in children)
sys.stderr.write(f"{granted} {holding}")
"""


def test_processes_of_one_problem_cannot_together_hold_more_than_its_memory_limit():
    with Sandbox(workers=1, limits=Limits(wall_s=10, memory_mb=160)) as box:
        result = box.run("python", [{"code": _code(HOLD), "cases": [{}]}])[0]
        granted, holding = map(int, result.stderr.split())
        assert granted >= 1 and holding >= 1  # one process alone may use the problem's budget
        assert holding * 48 <= 160  # eight asked for 48 MiB each; at most three hold it at once


def test_a_stopped_worker_fails_only_its_own_answer_within_the_stated_bound():
    wall = 1.0
    problems = [{"code": f"echo {i}"} for i in range(20)]
    problems[3] = {"code": "kill -STOP $PPID; kill -STOP 1; kill -STOP 0; echo after"}
    with Sandbox(workers=1, limits=Limits(wall_s=wall)) as box:
        start = time.monotonic()
        results = box.run("shell", problems)
        took = time.monotonic() - start
        assert [r.stdout for i, r in enumerate(results) if i != 3] == [
            f"{i}\n" for i in range(20) if i != 3
        ]
        assert results[3].error in (None, "timeout")  # it stops itself at most
        # the worker itself stopped (as a worker that hangs would be): the problem in flight
        # fails, the rest go on on a fresh worker
        for pid in _descendants(box._all[0].process.pid):
            os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        results = box.run("shell", [{"code": f"echo {i}"} for i in range(5)])
        took = time.monotonic() - start
        assert results[0].error == "worker stalled"
        assert [r.stdout for r in results[1:]] == [f"{i}\n" for i in range(1, 5)]
        assert [kind for kind, _ in box.incidents] == ["stalled"]
        bound = 2 * SLACK_S + 5 * (wall + 3 * SLACK_S) + 30  # the stated bound, one replaced
        assert took <= bound


def _my_cgroups() -> set[Path]:
    return {
        p for c in cgroups.CONTROLLERS for p in cgroups.ROOT.glob(f"{c}/cycleqd/{os.getpid()}-*")
    }


def _my_workers() -> set[int]:
    """Processes in this process's sandbox cgroups (other test runs have their own).

    A leaked container process keeps its cgroup, even when its parent is gone.
    """
    mine = f"/cycleqd/{os.getpid()}-"
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mine in (entry / "cgroup").read_text():
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def test_opening_and_closing_at_once_leaves_no_process_and_no_cgroup():
    before, groups = _my_workers(), _my_cgroups()
    for _ in range(30):
        Sandbox(workers=2).close()
    assert _my_workers() <= before
    assert _my_cgroups() <= groups


def test_without_cgroups_the_sandbox_refuses_unless_told_and_then_fits_the_budget(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)  # a machine without cgroup hierarchies
    with pytest.raises(SandboxUnavailable, match="CYCLEQD_SANDBOX_WEAKER=1"):
        Sandbox(workers=1)
    monkeypatch.setenv("CYCLEQD_SANDBOX_WEAKER", "1")
    with Sandbox(workers=1, limits=Limits(memory_mb=256, nproc=64)) as box:
        assert "rlimits only" in box.mechanism and "no cgroup-v1 'memory'" in box.mechanism
        chosen = box._limits(None)
        assert chosen["problem_processes"] * chosen["process_memory_mb"] <= 256
        ok = box.run("python", [{"code": "sum(range(10))", "cases": [{}]}])[0]
        assert ok.json() == [{"ok": True, "value": "45"}]


POISONS = [
    "chmod 000 /dev/shm; chmod 000 /tmp",
    "chmod 555 /tmp; chmod 555 /tmp/job",
    "mkdir -p d; cd d; for i in $(seq 12); do mkdir d; chmod 000 .; cd d 2>/dev/null; done",
    "for i in $(seq 3000); do mkdir d && cd d || break; done; echo deep",
    "touch -d 2030-01-01 a.txt /tmp /tmp/job; setfattr -n user.x -v 1 a.txt 2>/dev/null; true",
    "printf 'b.txt:33188\\0bee' >> a.txt; rm -f b.txt",  # a digest collision, once
    "echo X > /fixture/m; echo Y > /tmp/fixture/m; true",
]


def test_nothing_a_problem_does_to_its_files_reaches_the_next_problem():
    """Each problem gets fresh /tmp and /dev/shm of its own; the worker's fixture is covered."""
    innocent = {"code": "ls -la --time-style=+ . | tail -n +2; cat a.txt b.txt; ls -A /dev/shm"}
    files = {"a.txt": "ay\n", "b.txt": "bee\n"}
    with Sandbox(workers=1, limits=Limits(wall_s=5)) as box:
        baseline = box.run("shell", [innocent], files=files)[0]
        assert baseline.ok and baseline.stdout.endswith("ay\nbee\n")
        for poison in POISONS:
            _, after = box.run("shell", [{"code": poison}, innocent], files=files)
            assert after.ok and after.stdout == baseline.stdout, poison
        assert box.incidents == []


MEMORY = r"""
import gc, sys
def hit(value):
    return "".join(["MAR", "KED"]) in repr(value)[:100000]
found = []
frame = sys._getframe()
while frame is not None:
    found += [k for k, v in frame.f_locals.items() if hit(v)]
    frame = frame.f_back
found += [type(o).__name__ for o in gc.get_objects() if hit(o)]
sys.stderr.write(repr(found))
"""


def test_a_python_problem_cannot_read_the_rest_of_its_batch_from_the_workers_memory():
    with Sandbox(workers=1) as box:
        box.run("python", [{"code": "'MARK' + 'ED earlier'", "cases": [{}]}])
        got = box.run(
            "python",
            [
                {"code": "'MARK' + 'ED before'", "cases": [{"x": "MARK" + "ED case"}]},
                {"code": f"exec({MEMORY!r})", "cases": [{}]},
                {"code": "'MARK' + 'ED after'", "cases": [{"y": "MARK" + "ED case"}]},
            ],
        )
        assert got[1].ok and got[1].stderr == "[]"  # not the verdict before, nor the others


def test_the_memory_limit_is_named_and_a_big_request_does_not_block_the_next():
    fill = "for i in range(7):\n    open(f'/tmp/{i}', 'wb').write(b'x' * (15 << 20))\n"
    fill += "block = bytearray(b'y') * (90 << 20)\nprint('survived')"
    with Sandbox(workers=1, limits=Limits(wall_s=10, memory_mb=160)) as box:
        killed = box.run("python", [{"code": f"exec({fill!r})", "cases": [{}]}])[0]
        assert killed.error == "memory limit" and "survived" not in killed.stdout
        big = Limits(wall_s=10, memory_mb=1024, file_mb=512)
        hold = "head -c 700M /dev/zero > /tmp/big; echo held"  # left in /tmp as the request ends
        assert box.run("shell", [{"code": hold}], limits=big)[0].stdout == "held\n"
        after = box.run("python", [{"code": "1 + 1", "cases": [{}]}])[0]  # 160 MiB again
        assert after.json() == [{"ok": True, "value": "2"}]
        assert box.incidents == []


def test_sql_cannot_reach_function_pointers():
    with Sandbox(workers=1) as box:
        result = box.run(
            "sql", [{"code": "SELECT fts3_tokenizer('simple')"}], sqlite="CREATE TABLE t(a);"
        )[0]
        assert "not authorized" in result.stderr and result.json() is None


def test_a_big_request_to_a_stopped_worker_fails_in_bounded_time():
    """The host's write to a worker that reads nothing cannot block: a full pipe is a stall."""
    with Sandbox(workers=1) as box:
        for pid in _descendants(box._all[0].process.pid):
            os.kill(pid, signal.SIGSTOP)
        files = {f"f{i}.txt": "x" * 10000 for i in range(100)}  # a megabyte: more than a pipe
        results = box.run("shell", [{"code": "ls | wc -l"}, {"code": "echo two"}], files=files)
        assert results[0].error == "worker stalled"
        assert results[1].stdout == "two\n"
        assert [kind for kind, _ in box.incidents] == ["stalled"]


def test_a_dead_worker_costs_one_answer_and_is_replaced():
    with Sandbox(workers=1) as box:
        worker = _descendants(box._all[0].process.pid)[-1]  # the program inside the container
        os.kill(worker, signal.SIGKILL)
        results = box.run("shell", [{"code": "echo a"}, {"code": "echo b"}])
        assert results[0].error == "worker died" and results[1].stdout == "b\n"
        assert [kind for kind, _ in box.incidents] == ["died"]
