"""Cgroups for the sandbox: one per worker, and inside it one for the problem that runs.

A problem's memory and its number of processes are limited for the problem as a whole, however
many processes it makes: the worker moves each problem's first process into the problem's cgroup
(``memory.limit_in_bytes`` with ``memory.memsw.limit_in_bytes``, and ``pids.max``) before it
starts anything, and everything it starts inherits it. The worker's own cgroup holds the whole
container (bubblewrap, the worker, the problem), so closing a worker kills every process in it,
whenever the close comes.

Where cgroups come from: the cgroup-v1 ``memory`` and ``pids`` hierarchies under
``/sys/fs/cgroup``, writable by this process (root, or a delegated subtree). Where they are not,
:func:`available` says why and the sandbox refuses to start unless the user opts in to weaker
limits (see :class:`cycleqd.sandbox.box.Sandbox`).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

__all__ = ["CgroupUnavailable", "WorkerCgroup", "available"]

#: Where the cgroup-v1 hierarchies are mounted; tests point it elsewhere.
ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")
_GROUP = "cycleqd"
_COUNTER = itertools.count()


class CgroupUnavailable(OSError):
    """No cgroup can be made here; the message says why."""


def _base(controller: str) -> Path:
    return ROOT / controller / _GROUP


def available() -> str | None:
    """``None`` when this process can make the sandbox's cgroups; else why it cannot."""
    for controller in CONTROLLERS:
        mount = ROOT / controller
        if not (mount / "cgroup.procs").is_file():
            return f"no cgroup-v1 {controller!r} hierarchy at {mount}"
        try:
            _base(controller).mkdir(exist_ok=True)
            probe = _base(controller) / f".probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as exc:
            return f"cannot create cgroups under {mount} ({exc.strerror})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(path: Path) -> None:
    """SIGKILL every process in ``path`` and its children until none is left."""
    for _ in range(2000):
        pids = set()
        for procs in path.rglob("cgroup.procs"):
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except (OSError, ValueError):
                pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _remove(path: Path) -> None:
    if not path.is_dir():
        return
    _kill_all(path)
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def remove_stale() -> None:
    """Remove the cgroups of sandboxes whose process is gone (killed before it could close)."""
    for controller in CONTROLLERS:
        base = _base(controller)
        if not base.is_dir():
            continue
        for group in base.iterdir():
            owner = group.name.split("-")[0]
            if group.is_dir() and owner.isdigit() and not _alive(int(owner)):
                _remove(group)


class WorkerCgroup:
    """One worker's cgroup (in each controller) and its ``problem`` child.

    Args:
        uid: the sandbox user, who may move processes into the problem's cgroup.

    Raises:
        CgroupUnavailable: the cgroups cannot be created (the message says why).
    """

    def __init__(self, uid: int) -> None:
        name = f"{os.getpid()}-{next(_COUNTER)}"
        self.paths = {c: _base(c) / name for c in CONTROLLERS}
        try:
            for path in self.paths.values():
                (path / "problem").mkdir(parents=True)
                for entry in ("cgroup.procs", "tasks"):
                    os.chown(path / "problem" / entry, uid, -1)
        except OSError as exc:
            self.remove()
            raise CgroupUnavailable(f"cannot create the sandbox's cgroups: {exc}") from exc
        self._memory: int | None = None

    @property
    def worker_procs(self) -> list[Path]:
        """The files the worker's first process writes its PID into."""
        return [path / "cgroup.procs" for path in self.paths.values()]

    @property
    def problem_dirs(self) -> dict[str, Path]:
        """The problem's cgroup directory in each controller (bound into the sandbox)."""
        return {c: path / "problem" for c, path in self.paths.items()}

    def set_limits(self, memory_mb: int, nproc: int) -> None:
        """The problem's limits: memory (swap included) in MiB and processes."""
        memory = self.paths["memory"] / "problem"
        value = memory_mb << 20
        if value != self._memory:
            files = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            files = [f for f in files if (memory / f).is_file()]
            # the swap-included limit may never be below the memory limit: raise it first, or
            # lower the memory limit first
            if self._memory is not None and value > self._memory:
                files.reverse()
            for name in files:
                (memory / name).write_text(str(value))
            self._memory = value
        (self.paths["pids"] / "problem" / "pids.max").write_text(str(nproc))

    def remove(self) -> None:
        """Kill everything in the cgroups and remove them."""
        for path in self.paths.values():
            _remove(path)
