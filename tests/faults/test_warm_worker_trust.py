"""The warm worker trusts no socket and changes nothing about a command (issue 24, items 2 and 3). Before the fix the
client sent its whole environment and its stdin/stdout/stderr to whatever listened at a guessable path, a
`polars.py` in the Prefect home was imported by worker-run commands, the first command's keys lived on in the
server's and worker's environment, `nice` and `ulimit -v` were ignored, and a worker killed with -9 left its command
publishing behind a client that had already exited 1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import SLUICE
from test_prefect_server import big_input, shared_home, sluice, tiny_input, warm_worker_record  # noqa: F401

from flows.launcher import prefect_server, warm_worker


class Listener:
    """A Unix socket server that records whether anything was sent to it (a stand-in for someone else's socket)."""

    def __init__(self, path: Path, uid: int | None = None):
        self.path, self.received = path, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        if uid is not None:
            os.chown(path, uid, -1)
        self.sock.listen(4)
        self.sock.settimeout(5)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(2)
            data = conn.recv(65536)
            if data:  # a connection alone tells nothing; a sent byte is a leak
                self.received.append(data)
            conn.sendall(b'{"pid": 1}\n{"exit": 0}\n')
        except OSError:
            pass


def _record(tmp_path: Path, monkeypatch, socket_path: Path, pid: int) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    (home / "sluice-worker.json").write_text(json.dumps({"pid": pid, "socket": str(socket_path)}))


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def test_the_client_sends_nothing_to_a_symlinked_socket(tmp_path, monkeypatch):
    real = Listener(_private(tmp_path / "d") / "real.sock")
    link = tmp_path / "d" / "link.sock"
    link.symlink_to(real.path)
    _record(tmp_path, monkeypatch, link, os.getpid())
    assert warm_worker.run_in_worker(["run", "--help"]) is None
    time.sleep(0.2)
    assert real.received == []


def test_the_client_sends_nothing_through_a_directory_others_can_enter(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o1777)
    listener = Listener(shared / "worker.sock")
    _record(tmp_path, monkeypatch, listener.path, os.getpid())
    assert warm_worker.run_in_worker(["run", "--help"]) is None
    assert listener.received == []


def test_the_client_sends_nothing_to_a_listener_that_is_not_the_recorded_worker(tmp_path, monkeypatch):
    listener = Listener(_private(tmp_path / "d") / "worker.sock")
    _record(tmp_path, monkeypatch, listener.path, pid=os.getpid() + 100_000)  # another process's record
    assert warm_worker.run_in_worker(["run", "--help"]) is None
    time.sleep(0.2)
    assert listener.received == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a listener as another user")
def test_the_client_sends_nothing_to_another_users_socket(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, -1)  # the other user's private directory and socket
    path = folder / "worker.sock"
    ready = tmp_path / "ready"
    child = os.fork()
    if child == 0:  # the other user's listener
        try:
            os.setuid(65534)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(str(path))
            srv.listen(1)
            ready.touch() if os.access(tmp_path, os.W_OK) else None
            srv.settimeout(5)
            conn, _ = srv.accept()
            got = conn.recv(65536)
            os._exit(3 if got else 0)
        except BaseException:
            os._exit(0)
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _record(tmp_path, monkeypatch, path, child)
    assert warm_worker.run_in_worker(["run", "--help"]) is None
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # it received nothing


def test_a_limit_above_the_workers_is_refused_and_a_lower_one_accepted():
    worker = warm_worker.Worker(Path("/nonexistent"), os.getppid())
    base = {"code": worker.code, "env": dict(os.environ), "cwd": "/", "nice": os.getpriority(os.PRIO_PROCESS, 0)}
    ours = warm_worker.limits()
    finite = next(n for n, (_, hard) in ours.items() if hard != -1 and hard > 1)
    assert worker.refusal({**base, "limits": {finite: [ours[finite][1] + 1, ours[finite][1] + 1]}})
    assert worker.refusal({**base, "limits": {finite: [1, 1]}}) is None
    assert "priority" in worker.refusal({**base, "nice": base["nice"] - 1, "limits": {}})


def _children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def _nice_and_state(pid: int) -> tuple[int, str]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(fields[16]), fields[0]


def _address_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address space limit line")


def test_the_worker_is_trusted_scrubbed_and_runs_commands_as_the_client_would(shared_home, tmp_path):  # noqa: F811
    secret = "sk-never-in-a-service-9f3b"
    shared_home.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "imported"
    (shared_home / "polars.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nraise ImportError('planted')\n")
    started = sluice("server", "start", env={"AWS_SECRET_ACCESS_KEY": secret, "OPENAI_API_KEY": secret})
    assert started.returncode == 0, started.stderr
    worker = warm_worker_record()
    server = prefect_server.Server.read()
    for pid in (server.supervisor_pid, server.server_pid, worker["pid"]):
        assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid
    socket_dir = Path(worker["socket"]).parent
    assert socket_dir.stat().st_mode & 0o777 == 0o700 and Path(worker["socket"]).stat().st_mode & 0o077 == 0

    ran = sluice("run", "--input", str(tiny_input(tmp_path)), "--output", str(tmp_path / "o"), "--stages", "ingest",
                 env={"AWS_SECRET_ACCESS_KEY": secret})
    assert ran.returncode == 0, ran.stderr
    assert warm_worker.read_record()["served"] == worker["served"] + 1 and not marker.exists()

    # nice and ulimit -v reach the command run by the worker; Ctrl-Z stops it and fg resumes it
    data = big_input(tmp_path, rows=400_000)
    limit_kb = 16 * 1024 * 1024
    proc = subprocess.Popen(["bash", "-c", f"ulimit -v {limit_kb}; exec nice -n 7 {SLUICE} run --input {data} "
                             f"--output {tmp_path / 'n'} --stages ingest,dedup --run-id n"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while time.monotonic() < deadline and not children:
        children = _children(worker["pid"])
        time.sleep(0.05)
    assert children, "the worker forked no command"
    (child,) = children
    assert _nice_and_state(child)[0] == 7
    assert int(_address_limit(child)) == limit_kb * 1024
    proc.send_signal(signal.SIGTSTP)
    time.sleep(1.0)
    assert _nice_and_state(child)[1] == "T" and Path(f"/proc/{proc.pid}/stat").read_text().rsplit(") ", 1)[1][0] == "T"
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.5)
    assert _nice_and_state(child)[1] != "T"
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-2000:]

    # the worker killed with -9: its command stops as an interrupted run and the client says so with its code
    proc = subprocess.Popen([SLUICE, "run", "--input", str(data), "--output", str(tmp_path / "k"), "--stages",
                             "ingest,dedup,publish", "--run-id", "k"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_json = tmp_path / "k" / "runs" / "k" / "run.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not run_json.exists():
        time.sleep(0.1)
    os.kill(warm_worker.read_record()["pid"], signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-2000:]
    time.sleep(3)
    assert json.loads(run_json.read_text())["status"] == "interrupted"
    assert not (tmp_path / "k" / "datasets").exists() or not any((tmp_path / "k" / "datasets").rglob("_manifest.json"))
