"""The sandbox: where model-written Python, SQL and shell commands run. They are hostile input.

Isolation is real, not a timeout: every pool worker is a bubblewrap (``bwrap``) container running
as an unprivileged user (``nobody`` when cycleqd runs as root) with

* no network (its own, empty network namespace), its own PID, IPC and UTS namespaces;
* no host files but ``/usr`` read-only (and ``/etc/alternatives``, the symlinks by which Debian
  names ``awk`` and friends) — not the home directory, not the project, not the rest of ``/etc``
  — and a read-only root;
* per problem: fresh ``/tmp`` and ``/dev/shm`` (tmpfs of its own, the size of its memory budget,
  gone with it: nothing one problem writes, no mode, time or attribute it sets, reaches the next)
  holding its working directory (a fresh copy of the fixture for shell commands; the worker's
  copy of the fixture is covered); user,
  PID, mount and IPC namespaces of its own, of which it is the init, with a ``/proc`` that shows
  only its processes and no capabilities, so that it can neither see nor signal nor ptrace the
  (non-dumpable) worker nor reach its pipes, and killing its init kills all it started; a cgroup
  of its own that limits its memory (swap included) and its processes as a whole; rlimits on CPU
  time, address space, processes and file size; a wall-clock limit and an output cap enforced by
  the worker; afterwards every process left in the container is killed;
* SQLite opened read-only and immutable, ``ATTACH`` disabled, every statement but reads denied by
  an authoriser (and ``fts3_tokenizer``, which hands out function pointers), and a time limit on
  the query.

Workers are persistent: a request carries a whole batch of problems, each run in a forked child,
so scoring a candidate costs a fork per problem, not a container per snippet. Verdicts come back
one per problem, each only after the problem's processes are gone and carrying a secret the host
sends then: a worker that stalls, dies, or answers out of turn costs the problem in flight (scored
as failed, with the reason), is logged and replaced, and the rest of the batch goes on on a fresh
worker. Every wait has its limit (a request's delivery 10 s; a problem's end ``wall_s`` + 10 s,
10 s more for a request's first; its verdict 10 s after its secret), so a batch of ``n`` problems
ends within ``20 + n * (wall_s + 30)`` seconds plus a worker's start (at most 30 s) for each worker
replaced; beyond ``wall_s`` the waits take milliseconds unless a worker fails.

Where the host cannot make cgroups (cgroup-v1 ``memory`` and ``pids`` under ``/sys/fs/cgroup``,
writable: run as root) or refuses nested user namespaces, the sandbox refuses to start and says
why, unless the user opts in to weaker limits (``Sandbox(weaker=True)`` or
``CYCLEQD_SANDBOX_WEAKER=1``): then a problem's processes are capped so that their number times
each one's address space fits the memory budget.

Missing ``bwrap`` is an error with the install hint (``apt-get install bubblewrap``); the project's
set-up (``make setup``) installs it.
"""

from __future__ import annotations

import atexit
import hmac
import itertools
import json
import logging
import os
import queue
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox import cgroups
from cycleqd.sandbox.container import (
    Container,
    ContainerError,
    SandboxUnavailable,
    container_command,
    user_processes,
)

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "SandboxResult", "shared_sandbox"]

log = logging.getLogger("cycleqd.sandbox")

#: Seconds a problem may take beyond its wall-clock limit (forking, mounting, the sweep), and the
#: limit of every other wait on a worker (a request's delivery, a verdict after its secret).
SLACK_S = 10.0
#: Extra seconds for a request's first problem (building the fixture).
FIRST_S = 10.0
#: Per-process address space under ``weaker`` limits is at least this many MiB.
_WEAK_PROCESS_MB = 64


@dataclass(frozen=True)
class Limits:
    """Per-problem limits.

    Attributes:
        wall_s: wall-clock seconds before the problem's processes are killed.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: memory of the problem as a whole, all its processes together (a cgroup).
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
        error: ``"timeout"`` or ``"output limit"`` when the sandbox stopped it; ``"sandbox
            error"``, ``"worker stalled"``, ``"worker died"`` or ``"worker forged"`` when the
            sandbox failed it.
    """

    stdout: str
    stderr: str
    returncode: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Exited 0 within its limits."""
        return self.error is None and self.returncode == 0

    @property
    def settled(self) -> bool:
        """Whether this is the program's own outcome: it ended, or met one of its limits.

        Not so for a sandbox failure (a stalled, dead or forging worker, a sandbox error), which
        another run may not repeat: memos keep settled results only.
        """
        return self.error in (None, "timeout", "output limit", "memory limit")

    def json(self) -> Any:
        """Its stdout parsed as JSON (``None`` if it failed or is not JSON)."""
        if not self.ok:
            return None
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


_RESULT_TYPES = {
    "stdout": str,
    "stderr": str,
    "returncode": (int, type(None)),
    "error": (str, type(None)),
}


def _result(data: Any) -> SandboxResult:
    """A verdict from the worker's reply, every field checked."""
    if not isinstance(data, dict) or set(data) != set(_RESULT_TYPES):
        raise ContainerError("forged", f"a sandbox worker sent the verdict {str(data)[:200]}")
    if not all(isinstance(data[k], t) for k, t in _RESULT_TYPES.items()):
        raise ContainerError("forged", f"a sandbox worker sent the verdict {str(data)[:200]}")
    return SandboxResult(**data)


class _Retry(CycleQDError):
    """A worker could not take a batch before any of it ran."""


class Sandbox:
    """A pool of persistent sandboxed workers.

    Args:
        workers: pool size (requests run concurrently across workers).
        limits: default per-problem limits.
        weaker: run where cgroups cannot be made, with per-process limits whose product fits the
            memory budget (default: the ``CYCLEQD_SANDBOX_WEAKER`` environment variable, ``1``).

    Attributes:
        mechanism: how a problem's memory and processes are limited here, in words.
        incidents: ``(kind, message)`` of every worker that stalled, died or broke the protocol.

    Raises:
        SandboxUnavailable: bubblewrap (or the system Python) is missing, or the machine offers
            no cgroups or no nested user namespaces; the message says how to fix it.
    """

    def __init__(
        self, *, workers: int = 2, limits: Limits | None = None, weaker: bool | None = None
    ) -> None:
        self.limits = limits or Limits()
        self._command, self._uid = container_command()
        if weaker is None:
            weaker = os.environ.get("CYCLEQD_SANDBOX_WEAKER") == "1"
        why = cgroups.available()
        if why is not None and not weaker:
            raise SandboxUnavailable(
                "the sandbox limits each problem's memory and processes as a whole with a cgroup, "
                f"and cannot make one here: {why}. Run cycleqd as root (or with write access to "
                "the cgroup-v1 memory and pids hierarchies), or opt in to weaker per-process "
                "limits with Sandbox(weaker=True) or CYCLEQD_SANDBOX_WEAKER=1"
            )
        self.cgroups = why is None
        if self.cgroups:
            cgroups.remove_stale()
            self.mechanism = "a cgroup per problem: memory (swap included) and pids limits"
        else:
            self.mechanism = f"rlimits only ({why}): processes x address space <= the budget"
        self.incidents: list[tuple[str, str]] = []
        self._idle: queue.Queue[Container] = queue.Queue()
        self._all: list[Container] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count()
        try:
            for _ in range(workers):
                self._add()
        except BaseException:
            self.close()
            raise

    def _add(self) -> None:
        group = cgroups.WorkerCgroup(self._uid) if self.cgroups else None
        try:
            worker = Container(self._command, group)
        except BaseException:
            if group is not None:
                group.remove()
            raise
        with self._lock:
            if self._closed:
                worker.close()
                return
            self._all.append(worker)
        self._idle.put(worker)

    def _limits(self, limits: Limits | None) -> dict[str, Any]:
        chosen = asdict(limits or self.limits)
        processes = chosen["nproc"]
        chosen["process_memory_mb"] = chosen["memory_mb"]
        chosen["cgroup"] = self.cgroups
        if not self.cgroups:  # no cgroup: processes x address space must fit the budget
            processes = max(1, min(processes, chosen["memory_mb"] // _WEAK_PROCESS_MB))
            chosen["process_memory_mb"] = chosen["memory_mb"] // processes
        chosen["problem_processes"] = processes
        # RLIMIT_NPROC counts every process of the user: leave room for those it already has
        chosen["nproc"] = processes + user_processes(self._uid)
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
        shares = min(len(self._all), len(problems) // 2)  # a batch runs on every worker
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
        results: list[SandboxResult] = []
        while len(results) < len(problems):
            worker = self._take()
            try:
                self._stream(worker, kind, problems[len(results) :], files, sqlite, limits, results)
            except _Retry as exc:  # nothing ran: a fresh worker takes the batch
                self._incident("retry", str(exc), worker)
                continue
            except ContainerError as exc:  # costs the problem in flight, not its neighbours
                self._incident(exc.kind, str(exc), worker)
                results.append(SandboxResult("", str(exc), None, f"worker {exc.kind}"))
                continue
            except BaseException:
                # interrupted mid-request (a candidate's time limit): its pipe may still carry
                # a reply, which the next request would read as its own
                self._replace(worker)
                raise
            self._idle.put(worker)
        return results

    def _stream(
        self,
        worker: Container,
        kind: str,
        problems: list[dict[str, Any]],
        files: dict[str, str] | None,
        sqlite: str | None,
        limits: Limits | None,
        results: list[SandboxResult],
    ) -> None:
        """Run ``problems`` on ``worker``, appending each verdict to ``results`` as it comes."""
        chosen = self._limits(limits)
        if worker.cgroup is not None:
            try:  # the problem's first process (it forks the problem) counts too
                worker.cgroup.set_limits(chosen["memory_mb"], chosen["problem_processes"] + 1)
            except OSError as exc:
                raise _Retry(f"the worker's cgroup refused its limits ({exc})") from None
        request = {"id": next(self._ids), "kind": kind, "problems": problems}
        worker.send(request | {"files": files or {}, "sqlite": sqlite, "limits": chosen}, SLACK_S)
        for i in range(len(problems)):
            done = worker.read(chosen["wall_s"] + SLACK_S + (FIRST_S if i == 0 else 0.0))
            if done != {"done": i}:
                got = repr(done)[:200]
                raise ContainerError("forged", f"expected the end of problem {i}, got {got}")
            secret = secrets.token_hex(16)
            worker.send({"secret": secret}, SLACK_S)
            reply = worker.read(SLACK_S)
            if reply.get("i") != i or not hmac.compare_digest(str(reply.get("secret")), secret):
                raise ContainerError("forged", f"a verdict without its secret: {repr(reply)[:200]}")
            results.append(_result(reply.get("result")))

    def _incident(self, kind: str, message: str, worker: Container) -> None:
        self.incidents.append((kind, message))
        log.warning("sandbox worker replaced (%s): %s", kind, message)
        self._replace(worker)

    def _take(self) -> Container:
        while True:
            if self._closed:
                raise CycleQDError("the sandbox is closed")
            if not self._all:
                raise CycleQDError("the sandbox has no worker left: none could be started")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _replace(self, worker: Container) -> None:
        worker.close()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            if self._closed:
                return
        try:
            self._add()
        except Exception as exc:  # noqa: BLE001 - the pool goes on with one worker fewer
            self.incidents.append(("start", str(exc)))
            log.warning("a sandbox worker could not be started: %s", exc)

    def close(self) -> None:
        """Stop every worker and everything it started."""
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SANDBOX: Sandbox | None = None


def shared_sandbox() -> Sandbox:
    """The process's sandbox pool, started on first use (scorers share it; closed at exit).

    It has as many workers as torch has threads here (at most 4): the CPUs this process may use.
    A Ray worker that reserved one CPU therefore runs one sandboxed process at a time, and does
    not take the CPU of the worker beside it.
    """
    global _SANDBOX
    if _SANDBOX is None:
        import torch

        _SANDBOX = Sandbox(workers=max(1, min(4, torch.get_num_threads())))
        atexit.register(_SANDBOX.close)
    return _SANDBOX
