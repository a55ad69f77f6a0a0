"""One sandbox worker as the host sees it: its bubblewrap command, its pipes, its end.

The worker program (``_worker.py``) is bound read-only into a container that has nothing else of
the host's but ``/usr``. The host talks to it in JSON lines over its stdin and stdout, read here
with a deadline per line, so that a worker that stalls, dies or says something it should not
costs one problem, never a batch.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.sandbox.cgroups import WorkerCgroup

__all__ = [
    "NOBODY",
    "Container",
    "ContainerError",
    "SandboxUnavailable",
    "container_command",
    "user_processes",
]

_WORKER = Path(__file__).with_name("_worker.py")
_PYTHON = "/usr/bin/python3"
NOBODY = 65534


class SandboxUnavailable(CycleQDError):
    """The isolation mechanism is missing on this machine."""


class ContainerError(CycleQDError):
    """A worker stalled, died or broke the protocol; ``kind``: "stalled", "died" or "forged"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def user_processes(uid: int) -> int:
    """How many processes ``uid`` has (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += 1
        except OSError:
            pass
    return count


def container_command() -> tuple[list[str], int]:
    """The command that starts a worker, and the user it runs as.

    Raises:
        SandboxUnavailable: bubblewrap, setpriv (as root) or the system Python is missing.
    """
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
        prefix, uid = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], NOBODY
    mounts = [
        *("--ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64".split()),
        *("--symlink usr/bin /bin".split()),
        # Debian reaches awk, editor and friends through these symlinks into /usr
        *("--ro-bind-try /etc/alternatives /etc/alternatives".split()),
        *("--ro-bind", str(_WORKER), "/worker.py"),
        # /fixture: the worker's copy of a request's files, which problems never see; /tmp and
        # /dev/shm: each problem mounts fresh ones of its own
        *("--tmpfs /fixture --tmpfs /tmp --proc /proc --dev /dev".split()),
        # /dev is a tmpfs of the sandbox user's: only its shared-memory folder stays writable
        *("--tmpfs /dev/shm --remount-ro /dev".split()),
    ]
    command = [
        *prefix,
        bwrap,
        *mounts,
        "{cgroups}",  # replaced per worker by the binds of its problem cgroup
        # nothing outside /tmp (and /dev's own tmpfs) is writable: a problem's files cannot
        # outlive it in the persistent worker (the worker wipes /tmp and /dev/shm in between)
        *("--remount-ro / --unshare-all --die-with-parent --new-session --chdir /tmp".split()),
        *("--clearenv --setenv PATH /usr/bin:/bin --setenv LANG C.UTF-8".split()),
        *(_PYTHON, "-I", "-S", "/worker.py"),
    ]
    return command, uid


class Container:
    """A started worker: its process, its cgroup (``None``: none), and its line channel.

    Waits for the worker's hello. Raises :class:`ContainerError` if it never comes, and
    :class:`SandboxUnavailable` with the fix if problems cannot have namespaces of their own.
    """

    def __init__(
        self,
        command: list[str],
        cgroup: WorkerCgroup | None,
        timeout: float = 30.0,
    ) -> None:
        self.cgroup = cgroup
        binds: list[str] = []
        prefix: list[str] = []
        if cgroup is not None:
            for controller, path in cgroup.problem_dirs.items():
                binds += ["--bind", str(path), f"/cg/{controller}"]
            # the first process joins the worker's cgroups before anything else starts
            files = [str(p) for p in cgroup.worker_procs]
            script = 'for f in {}; do echo $$ > "$f" || exit 97; done; exec "$@"'.format(
                " ".join(f"'{f}'" for f in files)
            )
            prefix = ["/bin/sh", "-c", script, "sh"]
        i = command.index("{cgroups}")
        full = [*prefix, *command[:i], *binds, *command[i + 1 :]]
        self.process = subprocess.Popen(
            full,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )
        self._buffer = b""
        assert self.process.stdin is not None
        os.set_blocking(self.process.stdin.fileno(), False)  # writes wait in select, bounded
        try:
            hello = self.read(timeout)
        except ContainerError:
            self.close()
            raise
        if hello.get("hello") is not True:
            self.close()
            raise ContainerError("forged", f"a sandbox worker started with {hello!r}")
        if hello.get("namespaces") is not None:
            self.close()
            raise SandboxUnavailable(
                "the sandbox gives every problem user, PID and mount namespaces of its own, and "
                f"this machine refuses them ({hello['namespaces']}): allow unprivileged user "
                "namespaces (`sysctl -w user.max_user_namespaces=10000`, and on Debian/Ubuntu "
                "`sysctl -w kernel.unprivileged_userns_clone=1` or the AppArmor userns switch)"
            )

    def send(self, message: dict[str, Any], timeout: float = 30.0) -> None:
        """One JSON line to the worker, within ``timeout`` seconds (a stalled worker reads none)."""
        assert self.process.stdin is not None
        fd = self.process.stdin.fileno()
        data = memoryview(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                why = f"a sandbox worker read nothing for {timeout:.0f} s"
                raise ContainerError("stalled", why)
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ContainerError("died", f"a sandbox worker died: {exc}") from None

    def read(self, timeout: float) -> dict[str, Any]:
        """The worker's next JSON line, within ``timeout`` seconds."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ContainerError("stalled", f"a sandbox worker stalled for {timeout:.0f} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                error = self._stderr()
                raise ContainerError("died", f"a sandbox worker died: {error or 'no message'}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise ContainerError("forged", f"a sandbox worker wrote {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise ContainerError("forged", f"a sandbox worker wrote {line[:200]!r}")
        return message

    def _stderr(self) -> str:
        """What the dead worker wrote to stderr, as far as it is there now (never waits)."""
        stderr = self.process.stderr
        if stderr is None:
            return ""
        fd, text = stderr.fileno(), b""
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 1 << 16):
                text = (text + chunk)[-2000:]
        except OSError:  # nothing more for now (a container process may still hold it)
            pass
        return text.decode(errors="replace").strip()

    def close(self) -> None:
        """Kill the worker and everything it started, whenever this comes."""
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.wait()
        if self.cgroup is not None:
            self.cgroup.remove()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
