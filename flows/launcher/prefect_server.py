"""A local Prefect server shared by every `sluice` command, instead of Prefect's temporary server per command
(about 12 s each on 2 cores: half of `make run`).

With no PREFECT_API_URL, the first command that needs Prefect starts `prefect server start` on 127.0.0.1 (SQLite
under the Prefect home) under a small supervisor process of its own session, and records it in
`<PREFECT_HOME>/sluice-server.json`; later commands find it there and reuse it. Nothing here imports Prefect: the
URL must be in the environment before Prefect reads its settings.

Coordination uses two lock files next to the record, with `flock`:
- `sluice-server.lock` (exclusive, while a command checks, starts or stops the server): two commands starting at
  once share one server;
- `sluice-server.users` (shared, held by every command using the server for as long as it runs): the supervisor
  stops the server only when it can take this lock exclusively and nothing has used the server for `idle` seconds,
  and stops it while holding the lock, so a command can never be handed a server that is being stopped.
A record whose supervisor is gone (a crash, `kill -9`) is not trusted even if its server still answers: that
server is stopped and a new one started, never a second beside it.

The supervisor also keeps the warm worker (warm_worker.py): a process with Prefect and GE imported that
forks one child per command, so a command skips the ~3.5 s of starting Python and importing. It is restarted when
it exits (after the code changed under it) and stopped with the server.

`SLUICE_PREFECT=ephemeral` keeps Prefect's own temporary server per command (the test suite uses it).
`SLUICE_WARM_WORKER=off` runs every command in its own process, with no worker.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from flows.launcher.environment import home, service_env
from tasks.io.pids import alive

DEFAULT_IDLE_SECONDS = 900
START_TIMEOUT = 120
_users_fd: int | None = None  # this process's shared lock on the users file, held until it exits


def _paths() -> tuple[Path, Path, Path, Path]:
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    return (root / "sluice-server.json", root / "sluice-server.lock", root / "sluice-server.users",
            root / "sluice-server.log")


@dataclass
class Server:
    url: str
    port: int
    supervisor_pid: int
    server_pid: int
    started_at: float
    idle_seconds: int

    @classmethod
    def read(cls) -> Server | None:
        state, *_ = _paths()
        try:
            return cls(**json.loads(state.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def write(self) -> None:
        state, *_ = _paths()
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        os.replace(tmp, state)


def healthy(url: str, timeout: float = 2.0) -> bool:
    """With the standard library: importing httpx would cost every command 0.1 s."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextmanager
def _exclusive(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _use() -> None:
    """Hold the shared users lock for the rest of this process, and mark the server as just used."""
    global _users_fd
    _, _, users, _ = _paths()
    if _users_fd is None:
        _users_fd = os.open(users, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(_users_fd, fcntl.LOCK_SH)
        import atexit

        atexit.register(lambda: os.utime(users))
    os.utime(users)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(server: Server, wait: float = 30.0) -> None:
    from flows.launcher import warm_worker

    worker = warm_worker.read_record()
    pids = [server.supervisor_pid, server.server_pid, *([worker["pid"]] if worker else [])]
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _start(idle_seconds: int) -> Server:
    state, _, _, log = _paths()
    port = _free_port()

    cmd = [sys.executable, "-P", "-m", "flows.launcher.prefect_server", "supervise", str(port), str(idle_seconds)]
    # no credentials: the supervisor, the server and the worker outlive this command and serve later ones
    env = {k: v for k, v in service_env(dict(os.environ)).items() if k != "PREFECT_API_URL"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server did not start (exit {proc.returncode}); see {log}")
        pid_file = state.with_name(f"sluice-server.{proc.pid}.pid")
        if pid_file.exists() and healthy(url):
            server = Server(url=url, port=port, supervisor_pid=proc.pid, server_pid=int(pid_file.read_text()),
                            started_at=time.time(), idle_seconds=idle_seconds)
            pid_file.unlink()
            server.write()
            return server
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the Prefect server did not answer within {START_TIMEOUT} s; see {log}")


def ensure(idle_seconds: int | None = None) -> str:
    """The URL of the shared server, started if none is running (or the recorded one is dead or orphaned)."""
    _use()
    idle = idle_seconds or int(os.environ.get("SLUICE_SERVER_IDLE_SECONDS") or DEFAULT_IDLE_SECONDS)
    _, lock, _, _ = _paths()
    with _exclusive(lock):
        server = Server.read()
        if server is not None:
            if alive(server.supervisor_pid) and healthy(server.url):
                return server.url
            _stop(server)  # dead, orphaned (supervisor gone) or not answering: replaced, never duplicated
        return _start(idle).url


def stop() -> Server | None:
    _, lock, _, _ = _paths()
    state, *_ = _paths()
    with _exclusive(lock):
        server = Server.read()
        if server is not None:
            _stop(server)
            state.unlink(missing_ok=True)
        return server


def status() -> tuple[Server | None, bool]:
    server = Server.read()
    return server, bool(server and alive(server.supervisor_pid) and healthy(server.url))


def supervise(port: int, idle_seconds: int) -> int:
    """The supervisor: runs the server, stops it after `idle_seconds` without a user, or on SIGTERM."""
    state, _, users, _ = _paths()
    # the UI's JavaScript calls the API at the URL /ui-settings gives it: Prefect's default names port 4200
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    child = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                             stdin=subprocess.DEVNULL, env=env)
    state.with_name(f"sluice-server.{os.getpid()}.pid").write_text(str(child.pid))
    worker_env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    warm = os.environ.get("SLUICE_WARM_WORKER", "on") != "off"
    worker = _start_worker(worker_env) if warm else None
    worker_started = time.monotonic()
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    users.touch()
    fd = os.open(users, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while not stopping and child.poll() is None:
            time.sleep(1.0)
            if worker is not None and worker.poll() is not None and time.monotonic() - worker_started > 10:
                worker = _start_worker(worker_env)  # it left because the code changed: a new one, with the new code
                worker_started = time.monotonic()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a command is using the server
            try:
                if time.time() - users.stat().st_mtime >= idle_seconds:
                    stopping = True
                    _finish([worker, child], state)  # under the lock: no command can pick it up meanwhile
                    return 0
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _finish([worker, child], state)
        os.close(fd)
    return 0


def _start_worker(env: dict[str, str]) -> subprocess.Popen:
    """The warm worker, in the Prefect home: Prefect reads settings files in its working directory."""
    _, _, _, log = _paths()
    with open(log, "ab") as out:
        # -P: the Prefect home (its working directory) is not on sys.path; a polars.py there is never imported
        return subprocess.Popen([sys.executable, "-P", "-m", "flows.launcher.warm_worker", "serve", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(home()))


def _finish(children: list[subprocess.Popen | None], state: Path) -> None:
    for child in children:
        if child is not None and child.poll() is None:
            child.terminate()
    for child in children:
        if child is None:
            continue
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    server = Server.read()
    if server is not None and server.supervisor_pid == os.getpid():
        state.unlink(missing_ok=True)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "supervise":
    sys.exit(supervise(int(sys.argv[2]), int(sys.argv[3])))
