"""The shared local Prefect server (issue 16): started once, reused, shared by concurrent commands, replaced when
killed, stopped when idle, never started by commands that do not need Prefect; run outputs unchanged. And its warm
worker: commands forked from it behave as fresh processes (exit codes, stderr, signals), and it refuses commands
it would not run the same way (changed code, a different import-time environment)."""

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

from flows.launcher import prefect_server, warm_worker


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


def warm_worker_record(other_than: int | None = None, timeout: float = 90) -> dict:
    """The worker's record once it listens (it imports for a few seconds after the server starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = warm_worker.read_record()
        if record and record["pid"] != other_than and Path(record["socket"]).exists():
            return record
        time.sleep(0.3)
    raise AssertionError(f"no warm worker within {timeout} s")


def served() -> int:
    return warm_worker.read_record()["served"]


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
    before = warm_worker_record()["served"]
    second = sluice("run", "--input", str(data), "--output", str(tmp_path / "b"), "--stages", "ingest,dedup",
                    "--run-id", "same")
    assert second.returncode == 0, second.stderr
    assert prefect_server.Server.read() == server and server_processes(server.port) == 1
    assert served() == before + 1  # the second run was forked from the warm worker
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


def test_nothing_is_started_when_prefect_api_url_names_a_server(shared_home, tmp_path):
    status = sluice("status", "--output", str(tmp_path), env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert "unreachable" in status.stdout + status.stderr  # it used the URL it was given, and said it is down
    assert prefect_server.Server.read() is None and warm_worker.read_record() is None


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


def big_input(tmp_path: Path, rows: int = 300_000) -> Path:
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"text": f"Row {i}: a sentence that is long enough to be kept, {i * 7}."})
                            + "\n" for i in range(rows)))
    return data


def interrupted_run(data: Path, out: Path, run_id: str, signum: int) -> tuple[int, str]:
    """Start a run through the worker, send SIGNUM to the client once the run exists, return (exit, status)."""
    proc = subprocess.Popen([SLUICE, "run", "--input", str(data), "--output", str(out), "--stages",
                             "ingest,quality,dedup", "--run-id", run_id], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_json = out / "runs" / run_id / "run.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not run_json.exists():
        time.sleep(0.1)
    os.kill(proc.pid, signum)
    output = proc.communicate(timeout=120)[0]
    deadline = time.monotonic() + 60  # after a SIGKILL the orphaned command is stopped by the worker
    while time.monotonic() < deadline and json.loads(run_json.read_text())["status"] == "running":
        time.sleep(0.2)
    return proc.returncode, json.loads(run_json.read_text())["status"] + output[-300:]


def test_the_warm_worker_runs_commands_as_fresh_processes_would(shared_home, tmp_path):
    assert sluice("server", "start").returncode == 0
    worker = warm_worker_record()
    # polars is imported by each child, never by the worker: polars loaded before a fork runs 1.8x slower after it
    assert "polars" not in Path(f"/proc/{worker['pid']}/maps").read_text()
    missing = sluice("run", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2 and "missing.jsonl' matched no files" in missing.stderr
    bad_args = sluice("run", "--bogus")
    assert bad_args.returncode == 2 and "the following arguments are required: --input, --output" in bad_args.stderr
    assert served() == worker["served"] + 2

    # the command writes with the client's umask, not the worker's
    private = subprocess.run([SLUICE, "run", "--input", str(tiny_input(tmp_path)), "--output", str(tmp_path / "u"),
                              "--stages", "ingest", "--run-id", "u"], capture_output=True, text=True, timeout=300,
                             preexec_fn=lambda: os.umask(0o027))
    assert private.returncode == 0, private.stderr
    assert (tmp_path / "u" / "runs" / "u" / "run.json").stat().st_mode & 0o777 == 0o640
    assert served() == worker["served"] + 3

    # signals reach the command: SIGINT to the client stops it as it would stop a process of its own
    data = big_input(tmp_path)
    code, status = interrupted_run(data, tmp_path / "int", "int", signal.SIGINT)
    assert code == 130 and status.startswith("interrupted"), status
    # a client killed outright takes its command down (SIGTERM from the worker), resumable
    code, status = interrupted_run(data, tmp_path / "kill", "kill", signal.SIGKILL)
    assert code == -signal.SIGKILL and status.startswith("interrupted"), status
    assert served() == worker["served"] + 5

    # a different import-time environment runs in its own process, with the same result
    other_env = sluice("run", "--input", str(tiny_input(tmp_path)), "--output", str(tmp_path / "env"),
                       "--stages", "ingest", env={"PREFECT_LOGGING_LEVEL": "ERROR"})
    assert other_env.returncode == 0, other_env.stderr
    assert served() == worker["served"] + 5

    # code changed under the worker: refused (the command runs on its own), the worker leaves, a new one serves
    source = Path(warm_worker.__file__)
    stamp = source.stat()
    try:
        os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
        changed = sluice("run", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"))
        assert changed.returncode == 2 and "matched no files" in changed.stderr
        fresh = warm_worker_record(other_than=worker["pid"])
        assert not prefect_server.alive(worker["pid"]) and fresh["served"] == 0
        again = sluice("run", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"))
        assert again.returncode == 2 and served() == 1
    finally:
        os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert prefect_server.status()[1] and server_processes(prefect_server.Server.read().port) == 1


def test_the_printed_flow_run_page_shows_the_run_in_a_browser(shared_home, tmp_path):
    """The "View at" link of a run opens in headless Chromium and the UI, which reads its API URL from
    /ui-settings, finds the flow run (Prefect's default API URL names port 4200, where nothing listens)."""
    import re
    import shutil

    import httpx

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (make test installs it; .ci/run too)")
    done = sluice("run", "--input", str(tiny_input(tmp_path)), "--output", str(tmp_path / "out"), "--stages",
                  "ingest")
    assert done.returncode == 0, done.stderr
    ui = re.search(r"Prefect: (http://127\.0\.0\.1:(\d+))", done.stdout)  # the summary's link
    assert ui is not None, done.stdout[-2000:]
    server = prefect_server.Server.read()
    assert int(ui.group(2)) == server.port
    assert httpx.get(f"{ui.group(1)}/ui-settings").json()["api_url"] == server.url
    (run,) = httpx.post(f"{server.url}/flow_runs/filter", json={"limit": 5}).json()
    name, url = run["name"], f"{ui.group(1)}/runs/flow-run/{run['id']}"  # what Prefect prints as "View at"
    page = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                           url], capture_output=True, text=True, timeout=180)
    assert "Can't connect to Server API" not in page.stdout
    assert name in page.stdout, page.stdout[-2000:]
