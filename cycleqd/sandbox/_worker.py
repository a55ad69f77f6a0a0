"""The program that runs inside the sandbox (bound in by :mod:`cycleqd.sandbox.container`).

Started once per pool slot by bubblewrap as an unprivileged user, with no network, no host files
but ``/usr``, in its own PID namespace. It makes itself non-dumpable
(nothing of its user may ptrace it, read its memory or take its descriptors), checks that problems
can have namespaces of their own, says hello, then reads one JSON request per line from stdin.

Each problem runs in a forked child that closes every descriptor but its output pipes, joins the
problem's cgroup (memory and processes limited for the problem as a whole) and enters user, PID,
mount and IPC namespaces of its own; the problem is the init of that PID namespace, with a fresh
``/proc`` showing only its processes and no capabilities: the worker and its pipes are out of its
sight and reach, and killing its init kills all it started, however fast it forks. rlimits apply
per process; the worker enforces the wall-clock limit and the output cap. A verdict goes out only
after every process of its problem is gone: ``{"done": i}``, then the host sends a fresh secret
and the worker answers ``{"i", "secret", "result"}``. Standard library only (``/usr/bin/python3``).
"""

import ctypes
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import sqlite3
import stat
import sys
import time
from pathlib import Path

JOB = "/tmp/job"
FIXTURE = "/fixture/files"  # the worker's own tmpfs: covered before a problem runs
CGROUPS = "/cg"  # the problem's cgroup directories, bound here by the host (one per controller)

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x4000, 0x40000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def check(result, what):
    """Raise OSError with errno's message when a libc call failed."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_namespaces():
    """Give the calling process's future children their own user, PID, mount and IPC namespace.

    The caller keeps its user id (mapped to itself) and is alone in the new user namespace.
    """
    uid, gid = os.getuid(), os.getgid()
    # the maps are written through /proc/self, which a non-dumpable process (the worker's fork)
    # does not own: dumpable while it writes them, with no descriptor of the worker's open
    check(LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    check(LIBC.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
    for name, text in maps:
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    check(LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def seal():
    """As the init of the new namespaces: a /proc of its own, then no capabilities at all."""
    check(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    check(LIBC.mount(b"proc", b"/proc", b"proc", flags, None), "mount /proc")
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    data = (CapData * 2)()
    check(LIBC.capset(ctypes.byref(CapHeader(0x20080522, 0)), data), "capset")


def probe():
    """Whether problems can get namespaces of their own here: ``None``, or why not."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            enter_namespaces()
            inner = os.fork()
            if inner == 0:
                try:
                    seal()
                    os._exit(0 if os.getpid() == 1 else 3)
                except BaseException as exc:  # noqa: BLE001
                    os.write(w, str(exc).encode()[:300])
                    os._exit(1)
            _, status = os.waitpid(inner, 0)
            os._exit(os.waitstatus_to_exitcode(status))
        except BaseException as exc:  # noqa: BLE001
            os.write(w, str(exc).encode()[:300])
            os._exit(1)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    message = os.read(r, 1000).decode(errors="replace")
    os.close(r)
    return None if os.waitstatus_to_exitcode(status) == 0 else (message or "exit status")


def sweep():
    """Kill every other process of the worker's namespace and wait until they are gone.

    A problem's init is among them, and the kernel kills every process of its namespace with
    it; nothing a problem started survives, and nothing of it runs once this returns.
    """
    deadline, me = time.monotonic() + 5.0, os.getpid()
    while True:  # every process of the namespace but its init (1) and the worker
        left = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in (1, me)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break
        if not left:
            return
        if time.monotonic() > deadline:
            raise OSError(f"processes {left[:5]} outlived their problem")
        time.sleep(0.0005)


def limit(limits):
    mem = limits["process_memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] << 20, limits["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def python_problem(problem):
    """Evaluate an expression (or a function body) once per case; print a JSON list."""
    code, cases = problem["code"], problem["cases"]
    try:
        compiled = compile(code, "<model>", "eval")
        mode = "eval"
    except SyntaxError:
        args = ", ".join(problem.get("args", []))
        body = "\n".join("    " + line for line in code.splitlines()) or "    pass"
        namespace = {}
        exec(compile(f"def solution({args}):\n{body}\n", "<model>", "exec"), namespace)
        mode = "body"
    out = []
    for case in cases:
        try:
            if mode == "eval":
                # the case as globals: comprehensions in the expression must see its names
                value = eval(compiled, {"__builtins__": __builtins__, **case})
            else:
                value = namespace["solution"](**case)
            out.append({"ok": True, "value": repr(value)})
        except BaseException as exc:  # noqa: BLE001 - the snippet's failure is its score
            out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]})
    print(json.dumps(out))


def sql_problem(problem, deadline):
    """Run one query read-only against the request's database; print a JSON result."""
    db = sqlite3.connect(f"file:{JOB}/db.sqlite?mode=ro&immutable=1", uri=True)
    db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    db.execute("PRAGMA query_only = ON")

    def authorize(action, *args):
        allowed = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ}
        allowed |= {sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
        if action == sqlite3.SQLITE_FUNCTION and str(args[1]).lower() == "fts3_tokenizer":
            return sqlite3.SQLITE_DENY  # hands out function pointers: a way to corrupt memory
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    db.set_authorizer(authorize)
    db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
    rows = db.execute(problem["code"]).fetchmany(problem.get("max_rows", 1000))
    columns = len(rows[0]) if rows else 0
    print(json.dumps({"columns": columns, "rows": [[repr(v) for v in row] for row in rows]}))


def write_files(root, files, encoding):
    """Write ``files`` (relative path -> text) under ``root``; paths leaving it are skipped.

    A link planted where a file goes is replaced, never followed.
    """
    for path, content in files.items():
        target = os.path.normpath(os.path.join(root, path))
        if not target.startswith(root + "/"):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(target, flags, 0o644), "wb") as fh:
            fh.write(content.encode(encoding, "replace"))


SNAPSHOT = BUILT = None  # FIXTURE read back for shell (path, stat, bytes or None); its key


def build_fixture(request):
    """The request's files and database in FIXTURE; kept while requests bring the same ones."""
    global SNAPSHOT, BUILT
    key = hashlib.sha256(json.dumps([request.get(k) for k in ("kind", "files", "sqlite")]).encode())
    if BUILT == key.digest():
        return
    BUILT = SNAPSHOT = None
    shutil.rmtree(FIXTURE, ignore_errors=True)
    os.makedirs(FIXTURE)
    write_files(FIXTURE, request.get("files", {}), "latin-1")
    if request.get("sqlite"):
        with sqlite3.connect(f"{FIXTURE}/db.sqlite") as db:
            db.executescript(request["sqlite"])
        db.close()
    walk = os.walk(FIXTURE) if request["kind"] == "shell" else ()  # shell problems copy it
    SNAPSHOT = [(".", os.lstat(FIXTURE), None)]
    for here, dirs, names in walk:
        for path in (os.path.join(here, name) for name in dirs + names):
            st, rel = os.lstat(path), os.path.relpath(path, FIXTURE)
            regular = stat.S_ISREG(st.st_mode)
            if not (regular or stat.S_ISDIR(st.st_mode)):
                SNAPSHOT = None  # a link: copytree copies it
                return
            SNAPSHOT.append((rel, st, Path(path).read_bytes() if regular else None))
    BUILT = key.digest()


def copy_fixture(target):
    """FIXTURE copied to ``target`` as copytree does (modes, times): a third of its time."""
    if SNAPSHOT is None:
        return shutil.copytree(FIXTURE, target, symlinks=True)
    for rel, st, data in SNAPSHOT:  # parents before children
        path = os.path.normpath(os.path.join(target, rel))
        if data is None:
            os.mkdir(path)
            continue
        with os.fdopen(os.open(path, NEW_FILE, stat.S_IMODE(st.st_mode)), "wb") as fh:
            fh.write(data)
    for rel, st, _ in reversed(SNAPSHOT):  # times after the contents are written
        path = os.path.normpath(os.path.join(target, rel))
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def private_filesystem(kind, problem, limits):
    """Fresh tmpfs on /tmp and /dev/shm for this problem, its job folder, the fixture covered.

    They live in the problem's mount namespace and go with it: nothing it writes, no mode,
    timestamp or attribute it sets, reaches the next problem; their size is its memory budget.
    """
    size = f"size={limits['memory_mb']}m,mode=700".encode()
    for target in (b"/tmp", b"/dev/shm"):
        check(LIBC.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, size), "mount tmpfs")
    if kind == "shell":
        copy_fixture(JOB)
        write_files(JOB, problem.get("files", {}), "utf-8")
    else:
        os.makedirs(JOB)
        if kind == "sql":
            shutil.copyfile(f"{FIXTURE}/db.sqlite", f"{JOB}/db.sqlite")
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    check(LIBC.mount(b"tmpfs", b"/fixture", b"tmpfs", flags, b"size=4k"), "cover /fixture")


def problem_init(kind, problem, limits, deadline):
    """The problem, as the init of its own namespaces (never returns)."""
    try:
        private_filesystem(kind, problem, limits)
        seal()
        os.chdir(JOB)
        os.environ.update(HOME=JOB, TMPDIR=JOB, PATH="/usr/bin:/bin")
        limit(limits)
        if kind == "shell":
            os.execv("/bin/sh", ["/bin/sh", "-c", problem["code"]])
        sys.stdout = os.fdopen(1, "w")
        sys.stderr = os.fdopen(2, "w")
        if kind == "python":
            python_problem(problem)
        else:
            sql_problem(problem, deadline)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(2, f"{type(exc).__name__}: {exc}"[:500].encode())
        finally:
            os._exit(1)


def run_child(kind, problem, limits, forget):
    """Fork a child for one problem; return (stdout bytes, stderr bytes, status, why).

    ``forget``: containers the child empties before the problem runs (the rest of the batch).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    deadline = time.monotonic() + limits["wall_s"]
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            # stdin is the worker's request pipe: a command must never read (eat) the requests;
            # every other descriptor of the worker's (its pipes to the host) is closed
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            if limits.get("cgroup"):
                for controller in sorted(os.listdir(CGROUPS)):
                    with open(f"{CGROUPS}/{controller}/cgroup.procs", "w") as fh:
                        fh.write(str(os.getpid()))
            enter_namespaces()
            for held in forget:
                held.clear()
            inner = os.fork()
            if inner == 0:
                problem_init(kind, problem, limits, deadline)
            for fd in (0, 1, 2):
                os.close(fd)
            _, raw = os.waitpid(inner, 0)
            status = os.waitstatus_to_exitcode(raw)
            if status < 0:  # the problem was killed: so is this process, by the same signal
                if -status != signal.SIGKILL:
                    signal.signal(-status, signal.SIG_DFL)
                os.kill(os.getpid(), -status)
            os._exit(status)
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(2, f"{type(exc).__name__}: {exc}"[:500].encode())
            finally:
                os._exit(1)
    os.close(out_w)
    os.close(err_w)
    buffers = {out_r: bytearray(), err_r: bytearray()}
    why, status = None, None
    open_fds = [out_r, err_r]
    while why is None:
        left = deadline - time.monotonic()
        if left <= 0:
            why = "timeout"
            break
        # a short wait: a command that exits while something it backgrounded still holds the
        # pipes open is done; what it left behind is killed below
        ready, _, _ = select.select(open_fds, [], [], min(left, 0.01)) if open_fds else ([], [], [])
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
                continue
            buffers[fd] += chunk
            if len(buffers[fd]) > limits["max_output"]:
                why = "output limit"
        if why is None and not ready:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
                for fd in open_fds:  # what is already written
                    while select.select([fd], [], [], 0)[0]:
                        chunk = os.read(fd, 65536)
                        if not chunk:
                            break
                        buffers[fd] += chunk
                break
            if not open_fds:
                time.sleep(0.001)
    sweep()  # the child if still running, and whatever it left behind
    for fd in (out_r, err_r):
        os.close(fd)
    cap = limits["max_output"]
    return bytes(buffers[out_r][:cap]), bytes(buffers[err_r][:cap]), status, why


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def oom_kills(limits):
    """How often the kernel killed a process of the problem's cgroup for memory (or None)."""
    if not limits.get("cgroup"):
        return None
    with open(f"{CGROUPS}/memory/memory.oom_control") as fh:
        return next((int(x.split()[1]) for x in fh if x.startswith("oom_kill ")), None)


def main():
    # no process of this user may attach to the worker, read its memory or take its descriptors
    check(LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    send({"hello": True, "namespaces": probe()})
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        request, line = json.loads(line), None
        kind, limits, problems = request["kind"], request["limits"], request.pop("problems")
        try:
            build_fixture(request)
            broken = None
        except Exception as exc:  # noqa: BLE001 - every problem of the request fails with it
            broken = f"{type(exc).__name__}: {exc}"
        for i, problem in enumerate(problems):
            try:
                if broken:
                    raise OSError(broken)
                before = oom_kills(limits)
                # the problem forgets the rest of the batch before any of its code runs
                stdout, stderr, status, why = run_child(kind, problem, limits, (problems, request))
                if status == -signal.SIGKILL and why is None and oom_kills(limits) != before:
                    why = "memory limit"
            except Exception as exc:  # noqa: BLE001 - the problem fails; the batch goes on
                try:
                    sweep()
                except Exception:  # noqa: BLE001 - a container that cannot be cleaned ends
                    os._exit(3)
                stdout, stderr, status, why = b"", str(exc).encode(), None, "sandbox error"
            # every process of the problem is gone (sweep): only now does its secret exist
            send({"done": i})
            secret = json.loads(sys.stdin.readline())["secret"]
            result = {
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace")[:2000],
                "returncode": status,
                "error": why,
            }
            send({"i": i, "secret": secret, "result": result})
            del result, stdout, stderr, secret


if __name__ == "__main__":
    main()
