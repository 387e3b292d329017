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
Only the socket's owner may use it (the socket is mode 0600 and the peer's uid is checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from contextlib import suppress
from pathlib import Path

from tasks.ops.prefect_server import home

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "schemas")
# read while importing Prefect, polars, numpy, GE or the interpreter itself; everything else (AWS credentials,
# PATH, ...) is read when used, and the child runs with the client's whole environment anyway
IMPORT_TIME_PREFIXES = ("PREFECT_", "SLUICE_", "POLARS_", "GX_", "GE_", "PYTHON", "OMP_", "OPENBLAS_", "MKL_",
                        "NUMEXPR_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "CUDA_", "LC_")
IMPORT_TIME_NAMES = ("HOME", "USER", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV")
NOT_IMPORT_TIME = ("SLUICE_SERVER_IDLE_SECONDS",)  # read by the client only
PREFECT_FILES = (".env", "prefect.toml")
HEADER = struct.Struct("!I")


def socket_path() -> Path:
    """Next to the server's record; in /tmp when that path is too long for a Unix socket (108 bytes)."""
    path = home() / "sluice-worker.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(home().resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"sluice-{os.getuid()}-{digest}.sock"


def record_path() -> Path:
    return home() / "sluice-worker.json"


def read_record() -> dict | None:
    try:
        return json.loads(record_path().read_text())
    except (FileNotFoundError, ValueError):
        return None


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


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if (k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES) and k not in NOT_IMPORT_TIME}


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
    """Run `sluice ARGV` in the warm worker: its exit code, or None when there is no worker or it refused (the
    caller then runs the command itself). Call with PREFECT_API_URL already pointing at the shared server."""
    path = socket_path()
    cwd = os.getcwd()
    if not path.exists() or prefect_settings_file(cwd):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a worker that does not answer is not waited for (it then stops what it forked, if any)
    try:
        sock.connect(str(path))
        umask = os.umask(0o022)
        os.umask(umask)
        payload = json.dumps({"argv": argv, "cwd": cwd, "env": dict(os.environ), "umask": umask,
                              "code": code_fingerprint()}).encode()
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

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        line = replies.readline()
    except OSError:
        line = b""
    finally:
        sock.close()
    if not line:
        print(f"error: the warm sluice worker went away while running this command (its pid was {child})",
              file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


# ---------------------------------------------------------------------------------------------------- the worker

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
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
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
        pid = os.fork()
        if pid == 0:
            self.become_command(request, fds, [listener, conn, *self.clients.values()], pipe)
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
    def become_command(request: dict, fds: list[int], inherited: list[socket.socket], pipe: tuple[int, int]
                       ) -> None:
        """In the forked child: become `sluice ARGV` as the client would have run it, then exit. Never returns."""
        code = 1
        try:
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
            os.chdir(request["cwd"])
            os.umask(int(request.get("umask", 0o022)))  # files the command writes get the client's permissions
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["sluice", *request["argv"]]
            from flows.cli import main

            code = main(request["argv"])
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
            finally:
                os._exit(code)


def serve(parent: int) -> int:
    _warm_imports()
    return Worker(socket_path(), parent).serve()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "serve":
    sys.exit(serve(int(sys.argv[2])))
