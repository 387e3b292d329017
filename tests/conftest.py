"""Shared fixtures: a real Prefect server (prefect_test_harness), a moto S3 server on 127.0.0.1, the demo corpus."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="sluice-prefect-home-")
os.environ.update(
    {
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": _PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # each CLI subprocess keeps Prefect's temporary server; tests/test_prefect_server.py tests the shared one
        "SLUICE_PREFECT": "ephemeral",
    }
)
for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "PREFECT_API_URL"):
    os.environ.pop(var, None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind():
    """`make test` leaves no shared Prefect server running, whatever a test did."""
    yield
    from flows.launcher import prefect_server

    prefect_server.stop()
SLUICE = str(Path(sys.executable).parent / "sluice")
# The demo config's stages less score: for tests of other things that run the demo config (the models cost a
# minute per run on 2 cores; the demo run itself and tests/test_score.py cover them).
WITHOUT_SCORE = ["ingest", "decontaminate", "quality", "dedup", "publish"]


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server for the whole session; yields its URL (for subprocesses)."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield prefect.settings.PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with all its services (scheduler, triggers, actions), for the
    orchestration tests: schedules and event triggers need them, which the test harness does not run."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            proc.kill()
            raise RuntimeError("prefect server did not start in 120 s")
        yield url
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server as a separate process on 127.0.0.1 (the real S3 protocol over HTTP, not patching).

    Served single-threaded: moto checks If-None-Match and then writes without a lock, so under its threaded server
    two racing conditional PUTs can both succeed, which real S3 never allows. One request at a time restores S3's
    semantics for the publish race tests.
    """
    port = _free_port()
    serve = (
        "import sys\n"
        "from werkzeug.serving import run_simple\n"
        "from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\n"
        "run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", serve, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """Credentials and endpoint through the standard AWS env vars (as a user would set them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-never-logged")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    from tasks.ops.demo_corpus import build

    dest = tmp_path_factory.mktemp("demo-corpus")
    build(dest)  # as `make run` builds it: the same files, lines and so row ids (the README's sample is checked)
    return dest


def subprocess_env(api_url: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def demo_run(prefect_server, demo_corpus, tmp_path_factory):
    """One full local run of the demo corpus, shared by the tests that only read its outputs."""
    from flows.curate import run_curate

    out = tmp_path_factory.mktemp("out")  # exactly what `make run` does (the README's sample is checked against it)
    run = run_curate([str(demo_corpus)], str(out), str(REPO / "infra" / "demo.toml"), run_id="demo-run")
    return out, run


def lease(root: Path, dataset: str) -> dict | None:
    """The newest lease record of a dataset under a local output root (tasks/io/locks.py)."""
    from tasks.io import layout
    from tasks.io.locks import current
    from tasks.io.storage import Storage

    return current(Storage(str(root)), layout.dataset_lock_dir(dataset))


SLOW_FIXTURES = {"prefect_server", "prefect_api", "s3_server", "demo_corpus", "demo_run"}
SLOW_FILES = {"test_dask_cluster.py", "test_report_browser.py", "test_prefect_server.py", "test_cli.py",
              "test_resume.py", "test_orchestration.py"}
SLOW_DIRS = ("faults",)


def pytest_collection_modifyitems(config, items):
    """`slow`: a test that needs a server (Prefect, S3), the demo corpus, a subprocess pipeline or a browser. `make
    check` runs the rest (`-m "not slow"`); `make test` runs everything."""
    for item in items:
        folder = item.path.parent.name
        if SLOW_FIXTURES & set(item.fixturenames) or item.path.name in SLOW_FILES or folder in SLOW_DIRS:
            item.add_marker(pytest.mark.slow)
