"""The shared local Prefect server (issue 16): started once, reused, shared by concurrent commands, replaced when
killed, stopped when idle, never started by commands that do not need Prefect; run outputs unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SLUICE

from tasks.ops import prefect_server


@pytest.fixture
def shared_home(tmp_path, monkeypatch):
    home = tmp_path / "prefect-home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("SLUICE_PREFECT", raising=False)
    yield home
    prefect_server.stop()


def sluice(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def tiny_input(tmp_path: Path) -> Path:
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"Row {i}: a sentence that is long enough to be kept here."}) + "\n"
                            for i in range(200)))
    return data


def server_processes(port: int) -> int:
    """Live `prefect server start … --port PORT` processes (from /proc, whole command lines)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in args and b"start" in args and str(port).encode() in args and prefect_server.alive(
                int(cmdline.parent.name)):
            count += 1
    return count


def test_sequential_runs_reuse_one_server_and_outputs_are_unchanged(shared_home, tmp_path):
    data = tiny_input(tmp_path)
    first = sluice("run", "--input", str(data), "--output", str(tmp_path / "a"), "--stages", "ingest,dedup",
                   "--run-id", "same")
    assert first.returncode == 0, first.stderr
    server = prefect_server.Server.read()
    assert server is not None and prefect_server.healthy(server.url)
    second = sluice("run", "--input", str(data), "--output", str(tmp_path / "b"), "--stages", "ingest,dedup",
                    "--run-id", "same")
    assert second.returncode == 0, second.stderr
    assert prefect_server.Server.read() == server and server_processes(server.port) == 1
    assert "Starting temporary server" not in first.stdout + first.stderr + second.stdout + second.stderr
    ephemeral = sluice("run", "--input", str(data), "--output", str(tmp_path / "c"), "--stages", "ingest,dedup",
                       "--run-id", "same", env={"SLUICE_PREFECT": "ephemeral"})
    assert ephemeral.returncode == 0, ephemeral.stderr

    def parts(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("part-*.parquet"))}

    assert parts(tmp_path / "a") == parts(tmp_path / "b") == parts(tmp_path / "c") != {}


def test_concurrent_commands_share_one_server(shared_home):
    procs = [subprocess.Popen([SLUICE, "server", "start"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    urls = {line.split()[3] for line in outs}
    server = prefect_server.Server.read()
    assert urls == {server.url} and server_processes(server.port) == 1


def test_commands_that_do_not_need_prefect_start_none(shared_home, tmp_path):
    for args in (["runs", "--output", str(tmp_path)], ["show", "nope", "--output", str(tmp_path)],
                 ["quarantine", "nope", "--output", str(tmp_path)], ["--version"], ["run", "--help"]):
        sluice(*args)
    assert not (shared_home / "sluice-server.json").exists() and prefect_server.Server.read() is None


def test_a_killed_server_is_replaced_not_duplicated(shared_home):
    old_url = prefect_server.ensure()
    old = prefect_server.Server.read()
    for pid in (old.supervisor_pid, old.server_pid):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert not prefect_server.status()[1]
    new_url = prefect_server.ensure()
    new = prefect_server.Server.read()
    assert new.supervisor_pid != old.supervisor_pid and prefect_server.healthy(new_url)
    assert server_processes(old.port) == 0 or old_url == new_url


def test_the_server_stops_when_idle(shared_home):
    started = sluice("server", "start", "--idle-seconds", "3")
    assert started.returncode == 0, started.stderr
    server = prefect_server.Server.read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and prefect_server.alive(server.supervisor_pid):
        time.sleep(0.5)
    assert not prefect_server.alive(server.supervisor_pid) and not prefect_server.alive(server.server_pid)
    assert prefect_server.Server.read() is None
    status = sluice("server", "status")
    assert status.returncode == 0 and status.stdout.startswith("no Sluice Prefect server")
