"""The sandbox: where model-written Python, SQL and shell commands run. They are hostile input.

Isolation is real, not a timeout: every pool worker is a bubblewrap (``bwrap``) container running
as an unprivileged user (``nobody`` when cycleqd runs as root) with

* no network (its own, empty network namespace), its own PID, IPC and UTS namespaces;
* no host files but ``/usr`` read-only (and ``/etc/alternatives``, the symlinks by which Debian
  names ``awk`` and friends) — not the home directory, not the project, not the rest of ``/etc``
  — a read-only root, and a throw-away ``/tmp`` (tmpfs) as the only writable place, wiped (with
  ``/dev/shm``) before every problem, so nothing one problem writes reaches the next;
* per problem: a fresh working directory (a fresh copy of the fixture for shell commands), and
  rlimits on CPU time, address space, processes and file size, a wall-clock limit and an output
  cap enforced by the worker; afterwards every process left in the container is killed;
* SQLite opened read-only and immutable, ``ATTACH`` disabled, every statement but reads denied by
  an authoriser, and a time limit on the query.

Workers are persistent: a request carries a whole batch of problems, each run in a forked child,
so scoring a candidate costs a fork per problem, not a container per snippet.

Missing ``bwrap`` is an error with the install hint (``apt-get install bubblewrap``); the project's
set-up (``make setup``) installs it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import select
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "SandboxResult", "shared_sandbox"]

_WORKER = Path(__file__).with_name("_worker.py")
_PYTHON = "/usr/bin/python3"
_NOBODY = 65534


class SandboxUnavailable(CycleQDError):
    """The isolation mechanism is missing on this machine."""


@dataclass(frozen=True)
class Limits:
    """Per-problem limits.

    Attributes:
        wall_s: wall-clock seconds before the problem's processes are killed.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: address space (RLIMIT_AS).
        nproc: processes of the sandbox user, on top of those it already has (RLIMIT_NPROC).
        file_mb: largest file a problem may write (RLIMIT_FSIZE).
        max_output: bytes of stdout (and of stderr) kept; more kills the problem.
    """

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    nproc: int = 64
    file_mb: int = 16
    max_output: int = 65536


@dataclass
class SandboxResult:
    """What one problem did.

    Attributes:
        stdout: its standard output (at most ``max_output`` bytes, decoded).
        stderr: its standard error (truncated).
        returncode: exit status, ``None`` if it was killed.
        error: ``"timeout"`` or ``"output limit"`` when the sandbox stopped it.
    """

    stdout: str
    stderr: str
    returncode: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Exited 0 within its limits."""
        return self.error is None and self.returncode == 0

    def json(self) -> Any:
        """Its stdout parsed as JSON (``None`` if it failed or is not JSON)."""
        if not self.ok:
            return None
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


def _user_processes(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += 1
        except OSError:
            pass
    return count


def _command() -> tuple[list[str], int]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, and model-written code never runs outside a "
            "sandbox: install it with `apt-get install bubblewrap` (`make setup` does)"
        )
    if not Path(_PYTHON).is_file():
        raise SandboxUnavailable(
            f"the sandbox runs {_PYTHON}, which is missing: install it with "
            "`apt-get install python3`"
        )
    prefix, uid = [], os.getuid()
    if uid == 0:  # root is exempt from RLIMIT_NPROC: drop to nobody before entering
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxUnavailable(
                "running as root needs setpriv (util-linux) to drop to an "
                "unprivileged user: `apt-get install util-linux`"
            )
        prefix, uid = (
            [setpriv, f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups"],
            _NOBODY,
        )
    command = [
        *prefix,
        bwrap,
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        # Debian reaches awk, editor and friends through these symlinks into /usr
        "--ro-bind-try",
        "/etc/alternatives",
        "/etc/alternatives",
        "--tmpfs",
        "/tmp",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # /dev is a tmpfs of the sandbox user's: only its shared-memory folder stays writable
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        # nothing outside /tmp (and /dev's own tmpfs) is writable: a problem's files cannot
        # outlive it in the persistent worker (the worker wipes /tmp and /dev/shm in between)
        "--remount-ro",
        "/",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--chdir",
        "/tmp",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        _PYTHON,
        "-I",
        "-S",
        "-c",
        _WORKER.read_text(),
    ]
    return command, uid


class _Worker:
    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        # the worker enforces every problem's limits; this is the backstop if it hangs itself
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise CycleQDError(f"a sandbox worker did not answer within {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            error = self.process.stderr.read()[-2000:] if self.process.stderr else ""
            raise CycleQDError(f"a sandbox worker died: {error.strip() or 'no message'}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class Sandbox:
    """A pool of persistent sandboxed workers.

    Args:
        workers: pool size (requests run concurrently across workers).
        limits: default per-problem limits.

    Raises:
        SandboxUnavailable: bubblewrap (or the system Python) is missing; the message says how to
            install it.
    """

    def __init__(self, *, workers: int = 2, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._command, self._uid = _command()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()
        for _ in range(workers):
            self._add()

    def _add(self) -> None:
        worker = _Worker(self._command)
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _limits(self, limits: Limits | None) -> dict[str, Any]:
        chosen = asdict(limits or self.limits)
        # RLIMIT_NPROC counts every process of the user: leave room for those it already has
        chosen["nproc"] += _user_processes(self._uid)
        return chosen

    def run(
        self,
        kind: str,
        problems: Sequence[dict[str, Any]],
        *,
        files: dict[str, str] | None = None,
        sqlite: str | None = None,
        limits: Limits | None = None,
    ) -> list[SandboxResult]:
        """Run a batch of problems of one kind (a big batch split across the workers).

        Args:
            kind: ``"python"`` (``code``: an expression, or a function body taking ``args``,
                evaluated on each of ``cases``, a list of keyword dicts; stdout: a JSON list of
                ``{"ok", "value"}`` with ``repr`` values), ``"sql"`` (``code``: a query on the
                ``sqlite`` database; stdout: JSON ``{"columns", "rows"}``) or ``"shell"``
                (``code``: a ``/bin/sh`` command run in a fresh copy of ``files`` (with the
                database as ``db.sqlite``, writable, when ``sqlite`` is given), to which a
                problem's own ``files`` (path → UTF-8 text) are added).
            problems: one dict per problem.
            files: fixture files, relative path → text.
            sqlite: an SQL script that builds the database the queries read.
            limits: per-problem limits (default: the sandbox's).

        Returns:
            One result per problem, in order.
        """
        if kind not in ("python", "sql", "shell"):
            raise CycleQDError(f"unknown sandbox kind {kind!r}; use python, sql or shell")
        problems = list(problems)
        shares = min(len(self._all), len(problems) // 8)  # a big batch runs on every worker
        if shares > 1:
            chunks = [problems[i::shares] for i in range(shares)]
            with ThreadPoolExecutor(shares) as pool:
                parts = list(
                    pool.map(
                        lambda chunk: self._run_one(kind, chunk, files, sqlite, limits), chunks
                    )
                )
            results: list[SandboxResult] = [None] * len(problems)  # type: ignore[list-item]
            for i, part in enumerate(parts):
                results[i::shares] = part
            return results
        return self._run_one(kind, problems, files, sqlite, limits)

    def _run_one(
        self,
        kind: str,
        problems: list[dict[str, Any]],
        files: dict[str, str] | None,
        sqlite: str | None,
        limits: Limits | None,
    ) -> list[SandboxResult]:
        request = {
            "id": next(self._ids),
            "kind": kind,
            "problems": problems,
            "files": files or {},
            "sqlite": sqlite,
            "limits": self._limits(limits),
        }
        worker = self._idle.get()
        timeout = 10.0 + len(problems) * (request["limits"]["wall_s"] + 1.0)
        try:
            answer = worker.ask(request, timeout)
        except (CycleQDError, OSError, ValueError):
            self._replace(worker)  # the dead worker; this batch is reported as failed
            return [SandboxResult("", "sandbox worker died", None, "worker died") for _ in problems]
        except BaseException:
            # interrupted mid-request (a candidate's time limit): its pipe may still carry the
            # answer, which the next request would read as its own
            self._replace(worker)
            raise
        self._idle.put(worker)
        return [SandboxResult(**r) for r in answer["results"]]

    def _replace(self, worker: _Worker) -> None:
        worker.close()
        with self._lock:
            self._all.remove(worker)
        self._add()

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            for worker in self._all:
                worker.close()
            self._all.clear()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SANDBOX: Sandbox | None = None


def shared_sandbox() -> Sandbox:
    """The process's sandbox pool, started on first use (scorers share it).

    It has as many workers as torch has threads here (at most 4): the CPUs this process may use.
    A Ray worker that reserved one CPU therefore runs one sandboxed process at a time, and does
    not take the CPU of the worker beside it.
    """
    global _SANDBOX
    if _SANDBOX is None:
        import torch

        _SANDBOX = Sandbox(workers=max(1, min(4, torch.get_num_threads())))
    return _SANDBOX
