"""The sandbox against a hostile corpus: every attack fails inside it and the host is unchanged."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from cycleqd.sandbox.box import Limits, Sandbox, SandboxUnavailable


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, limits=Limits(wall_s=3, cpu_s=2)) as box:
        yield box


@pytest.fixture
def host_file(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    return path


def _host_processes_running(needle: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                found.append(cmdline)
    return found


def test_sandbox_runs_python_sql_and_shell(sandbox):
    python = sandbox.run(
        "python",
        [
            {"code": "sorted(xs)[-k:]", "cases": [{"xs": [3, 1, 2], "k": 2}]},
            {
                "code": "total = sum(xs)\nreturn total * 2",
                "args": ["xs"],
                "cases": [{"xs": [1, 2]}],
            },
        ],
    )
    assert [r.json() for r in python] == [
        [{"ok": True, "value": "[2, 3]"}],
        [{"ok": True, "value": "6"}],
    ]
    sql = sandbox.run(
        "sql",
        [{"code": "SELECT a, COUNT(*) FROM t GROUP BY a ORDER BY a"}],
        sqlite="CREATE TABLE t(a TEXT); INSERT INTO t VALUES ('x'), ('y'), ('x');",
    )
    assert sql[0].json() == {"columns": 2, "rows": [["'x'", "2"], ["'y'", "1"]]}
    shell = sandbox.run(
        "shell",
        [{"code": "grep -c b notes/*.txt | sort"}],
        files={"notes/a.txt": "b\nb\n", "notes/c.txt": "a\n"},
    )
    assert shell[0].ok and shell[0].stdout == "notes/a.txt:2\nnotes/c.txt:0\n"


def test_a_hundred_problems_run_in_one_batch(sandbox):
    problems = [{"code": f"x + {i}", "cases": [{"x": 1}]} for i in range(100)]
    results = sandbox.run("python", problems)
    assert [r.json()[0]["value"] for r in results] == [str(1 + i) for i in range(100)]


def test_fork_bomb_fails_and_the_sandbox_survives(sandbox):
    result = sandbox.run("shell", [{"code": ":(){ :|:& };:"}])[0]
    assert not result.ok
    assert sandbox.run("shell", [{"code": "echo alive"}])[0].stdout == "alive\n"
    assert os.fork() or os._exit(0)  # the host can still fork


def test_infinite_loops_and_memory_bombs_are_stopped(sandbox):
    results = sandbox.run(
        "python",
        [
            {"code": "sum(1 for _ in iter(int, 1))", "cases": [{}]},
            {"code": "'x' * (8 * 10**9)", "cases": [{}]},
            {"code": "bytearray(4 * 10**9)", "cases": [{}]},
        ],
    )
    stopped = results[0]  # by the wall clock, or by RLIMIT_CPU's SIGXCPU
    assert stopped.error == "timeout" or (stopped.returncode or 0) < 0, stopped
    for r in results[1:]:
        assert r.json() is None or r.json()[0]["ok"] is False, r
    shell = sandbox.run("shell", [{"code": "while :; do :; done"}])[0]
    assert shell.error == "timeout" or shell.returncode != 0


def test_destruction_and_escape_attempts_leave_the_host_unchanged(sandbox, host_file):
    commands = [
        "rm -rf ~",
        "rm -rf / 2>/dev/null; echo done",
        f"rm -f {host_file}",
        f"echo pwned > {host_file}",
        f"echo pwned > {REPO}/pwned.txt",
        f"cat {REPO}/pyproject.toml",
        "cat /etc/shadow",
        "cat /etc/passwd",
        f"ls {Path.home()}",
    ]
    results = sandbox.run("shell", [{"code": c} for c in commands])
    assert host_file.read_text() == "keep me"
    assert not (REPO / "pwned.txt").exists()
    for command, result in zip(commands[5:], results[5:], strict=True):
        assert not result.ok or result.stdout.strip() == "", (command, result)
    assert "cycleqd" not in "".join(r.stdout for r in results)
    python = sandbox.run(
        "python",
        [
            {"code": f"open({str(host_file)!r}, 'w').write('x')", "cases": [{}]},
            {"code": f"open({str(REPO / 'README.md')!r}).read()", "cases": [{}]},
        ],
    )
    assert all(not r.json()[0]["ok"] for r in python)
    assert host_file.read_text() == "keep me"
    assert sandbox.run("shell", [{"code": "ls"}])[0].stdout == ""  # fresh working directory


def test_no_network_even_to_the_hosts_loopback(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:  # the socket closed at the test's end: nobody connected
            pass

    threading.Thread(target=accept, daemon=True).start()
    result = sandbox.run(
        "python",
        [
            {
                "code": f"__import__('socket').create_connection(('127.0.0.1', {port}), timeout=1)",
                "cases": [{}],
            }
        ],
    )[0]
    assert result.json()[0]["ok"] is False
    out = sandbox.run("shell", [{"code": f"exec 3<>/dev/tcp/127.0.0.1/{port} || echo refused"}])
    assert not accepted
    server.close()
    assert out[0].stdout.strip() in ("", "refused") or not out[0].ok


def test_gigabytes_of_output_are_cut(sandbox):
    result = sandbox.run("shell", [{"code": "yes spam"}])[0]
    assert result.error == "output limit" and len(result.stdout) <= 65536


def test_sql_cannot_write_or_attach(sandbox):
    schema = "CREATE TABLE t(a INTEGER); INSERT INTO t VALUES (1);"
    attacks = [
        "INSERT INTO t VALUES (2)",
        "DROP TABLE t",
        "UPDATE t SET a = 5",
        "ATTACH DATABASE '/tmp/other.db' AS o",
        "PRAGMA query_only = OFF",
        "CREATE TABLE u(b)",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) FROM c",
    ]
    results = sandbox.run(
        "sql", [{"code": q} for q in attacks] + [{"code": "SELECT * FROM t"}], sqlite=schema
    )
    for query, result in zip(attacks, results, strict=False):
        assert not result.ok, query
    assert results[-1].json() == {"columns": 1, "rows": [["1"]]}


def test_background_processes_do_not_outlive_their_command(sandbox):
    result = sandbox.run(
        "shell",
        [
            {
                "code": "sleep 1234 & nohup sleep 1235 >/dev/null 2>&1 & "
                "setsid sleep 1236 & echo started"
            }
        ],
    )[0]
    assert result.stdout == "started\n"
    time.sleep(0.2)
    assert not _host_processes_running("sleep 123")


def test_a_command_reading_stdin_gets_nothing_and_cannot_eat_the_next_request():
    with Sandbox(workers=1) as box:  # one worker: every request goes through the same pipe
        first = box.run("shell", [{"code": "cat; grep x; echo done"}])[0]
        second = box.run("python", [{"code": "k + 1", "cases": [{"k": 1}]}])[0]
        assert first.error is None  # not "timeout": cat read an empty stdin and ended
        assert first.stdout == "done\n"
        assert second.ok and second.json() == [{"ok": True, "value": "2"}]


def test_missing_bubblewrap_is_explained(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(workers=1)


def test_nothing_a_problem_writes_outlives_it():
    """Workers are reused: files outside the job folder would leak into the next problems."""
    with Sandbox(workers=1) as box:  # one worker: every problem runs in the same container
        first = box.run(
            "shell",
            [
                {
                    "code": "echo x > /planted; mkdir /home; echo y > /tmp/planted; "
                    "echo z > /dev/shm/planted; echo w > ~/planted; echo done"
                }
            ],
        )[0]
        assert first.stdout.endswith("done\n")
        assert "Read-only file system" in first.stderr  # / and /home cannot be written
        second = box.run(
            "shell", [{"code": "ls -a / /tmp /dev/shm; find / -name planted 2>/dev/null; true"}]
        )[0]
        assert "planted" not in second.stdout and "home" not in second.stdout
        # within one request: /dev, unremovable folders, the shared fixture, planted links
        tamper = (
            "echo a > /dev/planted; rm -f /dev/stdout; mkdir -p /tmp/keep/d; "
            "echo secret > /tmp/keep/d/s; chmod 000 /tmp/keep/d /tmp/keep; mkdir sub; "
            "chmod 000 sub; echo changed > /tmp/fixture/f.txt; echo changed > /fixture/f.txt; "
            "ln -s /tmp/fixture/stash /tmp/fixture/given.txt; echo done"
        )
        look = (
            "cat /dev/planted /tmp/keep/d/s /tmp/fixture/stash 2>&1; ls /tmp; cat f.txt "
            "given.txt; echo out > /dev/stdout"
        )
        first, second = box.run(
            "shell",
            [{"code": tamper}, {"code": look, "files": {"given.txt": "mine\n"}}],
            files={"f.txt": "original\n"},
        )
        assert first.stdout == "done\n" and "Read-only file system" in first.stderr
        assert second.error is None
        # /tmp is the problem's own: its job folder only (the fixture is the worker's, covered)
        assert second.stdout.endswith("No such file or directory\njob\noriginal\nmine\nout\n")
        assert "secret" not in second.stdout and "No such file" in second.stdout


def test_each_shell_problem_gets_a_fresh_copy_of_the_fixture_as_it_was_built():
    """The per-problem copy keeps the fixture's bytes, modes and times; what a problem changes
    (contents, times, modes, new files) never reaches the next problem nor the next request on
    the same worker (which keeps the fixture); a request with other files gets those files."""
    files = {"a/x.txt": "one\n", "a/b/y.txt": "two\n", "z.txt": "three\n"}
    probe = "stat -c '%n %a %s %Y' z.txt a a/x.txt a/b a/b/y.txt; cat a/x.txt"
    vandal = "echo gone > a/x.txt; touch -d 2001-01-01 z.txt; chmod 700 a; echo new > a/n.txt"
    with Sandbox(workers=1) as box:  # one worker: every problem and request meets its fixture
        first = box.run("shell", [{"code": probe}, {"code": vandal}, {"code": probe}], files=files)
        assert all(r.ok for r in first), [r.stderr for r in first]
        assert first[0].stdout == first[2].stdout and first[0].stdout.endswith("one\n")
        again = box.run("shell", [{"code": probe}, {"code": "ls a"}], files=files)
        assert again[0].stdout == first[0].stdout  # the kept fixture, untouched, same times
        assert again[1].stdout == "b\nx.txt\n"
        other = box.run("shell", [{"code": "cat a/x.txt; ls"}], files={"a/x.txt": "other\n"})
        assert other[0].stdout == "other\na\n"  # not the previous request's fixture
        python = box.run("python", [{"code": "1", "cases": [{}]}], files=files)
        shell = box.run("shell", [{"code": "cat a/x.txt"}], files=files)
        assert python[0].ok and shell[0].stdout == "one\n"  # a kind switch rebuilds it
