"""A warm `sluice` process: Prefect, polars and Great Expectations imported once, one fork per command.

A `sluice run` in a fresh process spends about 3.5 s on 2 cores starting Python and importing before it does any
work (Great Expectations alone 2.6 s, Prefect 1.1 s): 40% of a 9-second run. The supervisor of the shared Prefect
server (prefect_server.py) therefore also keeps this worker. It imports Prefect and GE (not polars, see
_warm_imports), listens on a Unix socket
next to the server's record, and for each command forks a child that *becomes* that command: the client's
stdin/stdout/stderr (passed over the socket), working directory, environment and arguments. The client waits,
forwards SIGINT, SIGTERM and SIGHUP to the child, and exits with its exit code. A client that dies (`kill -9`)
takes its command down with it: the child gets SIGTERM, stops at a shard boundary, and can be resumed.

The worker serves only commands it runs exactly as a fresh process would:
- the same code: a fingerprint of the interpreter and of the package's files (path, size, mtime). A worker whose
  code changed under it (an edit, `git pull`) refuses, and exits once its running commands are done; the supervisor
  starts a new one;
- the same import-time environment: the variables read while importing (PREFECT_*, POLARS_*, PYTHON*, locale,
  thread counts, ...) must equal the worker's. Prefect also reads `.env`, `prefect.toml` and a `pyproject.toml`
  with `[tool.prefect]` in the working directory, so a command run where one of those exists runs on its own.
Whatever it refuses runs in its own process, as before: the worker is a shortcut, never a different behaviour.

Trust goes both ways, and is checked before anything is sent (issue 24): the socket lives in a directory only its
user can enter (`<PREFECT_HOME>/sluice-worker.d`, or a fresh `mkdtemp` directory when that path is too long for a
socket; never a predictable /tmp name) and is named in the worker's record. The client checks the directory and
the socket with lstat (no symlink, its own uid, no access for others) and, once connected, the listener's uid and
pid (SO_PEERCRED) against its own uid and the record; only then does it send its environment and its stdin, stdout
and stderr. The worker checks the client's uid the same way. The worker, the server and their supervisor start with
a scrubbed environment (no credentials: flows/launcher/prefect_server.py), and the worker's sys.path holds no writable
data directory (`python -P`), so a `polars.py` in the Prefect home or the working directory is never imported.

A command run by the worker is the command a fresh process would be: it runs with the client's resource limits
(`ulimit`) and priority (`nice`), or the worker refuses when it cannot give them (a limit above its own); it dies
with its worker (PR_SET_PDEATHSIG) as it does with its client, and it reports its own exit code to the client, so
a worker killed with -9 leaves a command that stopped as an interrupted run (exit 130, resumable), never one that
goes on publishing behind a client that already exited. Ctrl-Z (SIGTSTP) on the client stops the command too, and
`fg` (SIGCONT) resumes both; SIGSTOP cannot be caught, so `kill -STOP` on the client stops only the client.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from flows.launcher.environment import home, import_time_env

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "schemas")
PREFECT_FILES = (".env", "prefect.toml")
HEADER = struct.Struct("!I")
LIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}
PR_SET_PDEATHSIG = 1


def socket_dir() -> Path:
    """A directory only this user can enter: in the Prefect home, or a fresh private temporary one when that path
    is too long for a Unix socket (108 bytes). Its path is in the worker's record, never guessed."""
    private = home() / "sluice-worker.d"
    if len(str(private / "worker.sock")) < 100:
        with suppress(FileExistsError):
            private.mkdir(mode=0o700)
        if not _private_dir(private):
            raise PermissionError(f"{private} is not a private directory of this user")
        return private
    return Path(tempfile.mkdtemp(prefix="sluice-worker-"))


def _private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def trusted_socket(path: Path) -> bool:
    """The socket and its directory are this user's, not links, and closed to everyone else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
            and _private_dir(path.parent))


def peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def record_path() -> Path:
    return home() / "sluice-worker.json"


def read_record() -> dict | None:
    try:
        return json.loads(record_path().read_text())
    except (FileNotFoundError, ValueError):
        return None


def limits() -> dict[str, list[int]]:
    return {name: list(resource.getrlimit(number)) for name, number in sorted(LIMITS.items())}


def code_fingerprint() -> str:
    """The interpreter and every file of the package (path, size, mtime): ~150 stat calls, about 2 ms."""
    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}".encode())
    for package in PACKAGES:
        for folder, dirs, files in os.walk(PACKAGE_ROOT / package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(folder, name)
                with suppress(OSError):
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prefect_settings_file(cwd: str) -> str | None:
    """A file in `cwd` that Prefect reads its settings from (the worker imported Prefect elsewhere)."""
    for name in PREFECT_FILES:
        if os.path.exists(os.path.join(cwd, name)):
            return name
    with suppress(OSError, UnicodeDecodeError):
        if "[tool.prefect" in Path(cwd, "pyproject.toml").read_text():
            return "pyproject.toml"
    return None


# ---------------------------------------------------------------------------------------------------- the client

def run_in_worker(argv: list[str]) -> int | None:
    """Run `sluice ARGV` in the warm worker: its exit code, or None when there is no worker, it cannot be trusted,
    or it refused (the caller then runs the command itself). Call with PREFECT_API_URL already pointing at the
    shared server."""
    record = read_record()
    cwd = os.getcwd()
    if not record or not record.get("socket") or prefect_settings_file(cwd):
        return None
    path = Path(record["socket"])
    if not trusted_socket(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a worker that does not answer is not waited for (it then stops what it forked, if any)
    try:
        sock.connect(str(path))
        pid, uid = peer(sock)
        if uid != os.getuid() or pid != record.get("pid"):
            sock.close()
            return None
        umask = os.umask(0o022)
        os.umask(umask)
        payload = json.dumps({"argv": argv, "cwd": cwd, "env": dict(os.environ), "umask": umask,
                              "code": code_fingerprint(), "limits": limits(),
                              "nice": os.getpriority(os.PRIO_PROCESS, 0)}).encode()
        socket.send_fds(sock, [HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        replies = sock.makefile("rb")
        started = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in started:
        sock.close()
        return None
    child = int(started["pid"])
    sock.settimeout(None)

    def forward(signum, frame):
        with suppress(ProcessLookupError):
            os.kill(child, signum)

    def suspend(signum, frame):  # Ctrl-Z: the command stops with its client (SIGTSTP is lost on its group)
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # not SIGTSTP: an orphaned process group would discard it

    def resume(signum, frame):
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, resume)
    try:
        line = replies.readline()  # the command's own report, or the worker's when the command died by a signal
    except OSError:
        line = b""
    finally:
        sock.close()
    if not line:
        print(f"error: the warm sluice worker and the command it ran (pid {child}) went away without an exit "
              "code; rerun with the same --run-id to resume", file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


# ---------------------------------------------------------------------------------------------------- the worker

ENTRY_POINT = "flows.cli:main"  # the command the worker runs, by name: the launcher does not import the CLI


def _entry_point():
    import importlib

    module, name = ENTRY_POINT.split(":")
    return getattr(importlib.import_module(module), name)


def _warm_imports() -> None:
    """Prefect, Great Expectations (pandas, pyarrow) and fastapi: 3.3 s of the ~3.6 s a fresh process spends importing.

    Not polars, nor the package's own modules (which import it): polars started in a process that then forks runs
    1.8x slower in the child (2.03 s against 1.12 s on a string benchmark, 2026-12-01): its allocator's background
    threads are not re-created after fork. The child imports them itself, in 0.32 s. fastapi is here because
    Prefect's Flow.serialize_parameters imports it for every flow run (0.32 s)."""
    import fastapi  # noqa: F401
    import great_expectations  # noqa: F401
    import prefect.artifacts  # noqa: F401
    import prefect.cache_policies  # noqa: F401
    import prefect.flows  # noqa: F401
    import prefect.futures  # noqa: F401
    import prefect.task_runners  # noqa: F401
    import prefect.tasks  # noqa: F401

    if "polars" in sys.modules:
        raise RuntimeError("the warm worker imported polars: its children would run polars 1.8x slower")


class Worker:
    def __init__(self, path: Path, parent: int):
        self.path = path
        self.parent = parent
        self.code = code_fingerprint()
        self.env = import_time_env(dict(os.environ))
        self.children: dict[int, socket.socket | None] = {}  # pid -> the client's connection (None once gone)
        self.clients: dict[int, socket.socket] = {}  # fileno -> connection, for select
        self.stale = False
        self.stopping = False
        self.served = 0
        self.started_at = time.time()

    def refusal(self, request: dict) -> str | None:
        if request.get("code") != self.code:
            self.stale = True
            return "the code changed since the worker started"
        theirs = import_time_env(request.get("env") or {})
        differing = sorted(k for k in set(theirs) | set(self.env) if theirs.get(k) != self.env.get(k))
        if differing:
            return f"environment differs in {', '.join(differing[:5])}"
        if prefect_settings_file(request.get("cwd") or "/"):
            return "Prefect settings file in the working directory"
        ours = limits()
        for name, (_soft, hard) in (request.get("limits") or {}).items():
            if name not in ours:
                continue
            mine = ours[name][1]
            if mine != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > mine):
                return f"{name} of the client ({hard}) is above the worker's ({mine})"
        if int(request.get("nice", 0)) < os.getpriority(os.PRIO_PROCESS, 0):
            return "the client runs at a higher priority than the worker"
        return None

    def write_record(self) -> None:
        tmp = record_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "socket": str(self.path), "started_at": self.started_at,
                                   "served": self.served, "code": self.code}))
        os.replace(tmp, record_path())

    def serve(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the pipe when a command ends

        def on_term(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        with suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        inode = os.stat(self.path).st_ino
        listener.listen(16)
        self.write_record()
        listening = [listener]
        try:
            while not self.stopping and not (self.stale and not self.children) and os.getppid() == self.parent:
                readable, _, _ = select.select([*listening, wake_r, *self.clients.values()], [], [], 1.0)
                for ready in readable:
                    if ready is listener:
                        self.accept(listener, (wake_r, wake_w))
                    elif ready == wake_r:
                        with suppress(BlockingIOError):
                            os.read(wake_r, 512)
                    else:
                        self.client_readable(ready)
                self.reap()
                if self.stale and listening:
                    listener.close()  # take no new command; go once the running ones are done
                    listening.clear()
        finally:
            with suppress(OSError):
                if os.stat(self.path).st_ino == inode:  # a newer worker may have bound the path meanwhile
                    self.path.unlink()
            if self.path.parent.name.startswith("sluice-worker-"):  # a private temporary directory of its own
                with suppress(OSError):
                    self.path.parent.rmdir()
            record = read_record()
            if record and record.get("pid") == os.getpid():
                record_path().unlink(missing_ok=True)
            self.stop_children()
        return 0

    def accept(self, listener: socket.socket, pipe: tuple[int, int]) -> None:
        conn, _ = listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(10)
            _, uid = peer(conn)
            if uid != os.getuid():
                raise PermissionError(f"uid {uid} may not use this worker")
            header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
            (size,) = HEADER.unpack(header)
            payload = b""
            while len(payload) < size:
                chunk = conn.recv(size - len(payload))
                if not chunk:
                    raise ConnectionError("the client left mid-request")
                payload += chunk
            request = json.loads(payload)
            if len(fds) != 3:
                raise ValueError("the client did not pass stdin, stdout and stderr")
        except (OSError, ValueError, struct.error):
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        reason = self.refusal(request)
        if reason:
            for fd in fds:
                os.close(fd)
            with suppress(OSError):
                conn.sendall(json.dumps({"refused": reason}).encode() + b"\n")
            conn.close()
            return
        worker = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.become_command(request, fds, conn, [listener, *self.clients.values()], pipe, worker)
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            conn.settimeout(None)
            self.children[pid] = conn
            self.clients[conn.fileno()] = conn
        except OSError:  # the client left before its command started
            conn.close()
            self.children[pid] = None
            os.kill(pid, signal.SIGTERM)
        self.served += 1
        self.write_record()

    def client_readable(self, conn: socket.socket) -> None:
        """A client sends nothing after its request: readable means it is gone, and so is its command."""
        with suppress(OSError):
            if conn.recv(1):
                return
        self.clients.pop(conn.fileno(), None)
        for pid, owner in self.children.items():
            if owner is conn:
                self.children[pid] = None
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        conn.close()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            conn = self.children.pop(pid, None)
            if conn is not None:
                self.clients.pop(conn.fileno(), None)
                with suppress(OSError):
                    conn.sendall(json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n")
                conn.close()

    def stop_children(self) -> None:
        for pid in self.children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.2)

    @staticmethod
    def become_command(request: dict, fds: list[int], client: socket.socket, inherited: list[socket.socket],
                       pipe: tuple[int, int], worker: int) -> None:
        """In the forked child: become `sluice ARGV` as the client would have run it, then report the exit code to
        the client and exit. Never returns."""
        code = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # dies with its worker
            if os.getppid() != worker:  # the worker died before the line above
                os._exit(130)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
            for sock in inherited:
                sock.close()
            for fd in pipe:
                os.close(fd)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(line_buffering=stream.isatty())
            for name, (soft, hard) in (request.get("limits") or {}).items():  # the client's ulimits
                if name in LIMITS and [soft, hard] != list(resource.getrlimit(LIMITS[name])):
                    resource.setrlimit(LIMITS[name], (soft, hard))
            nice = int(request.get("nice", 0)) - os.getpriority(os.PRIO_PROCESS, 0)
            if nice > 0:
                os.nice(nice)
            os.chdir(request["cwd"])
            os.umask(int(request.get("umask", 0o022)))  # files the command writes get the client's permissions
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["sluice", *request["argv"]]
            code = _entry_point()(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            try:
                import atexit
                import threading

                threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
                with suppress(OSError):
                    client.sendall(json.dumps({"exit": code}).encode() + b"\n")
            finally:
                os._exit(code)


def serve(parent: int) -> int:
    _warm_imports()
    return Worker(socket_dir() / "worker.sock", parent).serve()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "serve":
    sys.exit(serve(int(sys.argv[2])))
