"""Runs under faults: SIGTERM mid-run, unwritable output, an S3 endpoint that dies mid-run, connections cut during
publish. Each ends cleanly (a named one-line error, an exit code, leases released, no orphaned server) and a rerun
with the same run id finishes the work, byte-identical to a run that never failed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil
import pytest
from conftest import SLUICE, WITHOUT_SCORE, _free_port, lease, subprocess_env

from tasks.ops.demo_corpus import kjv_records


def _corpus(folder: Path, files: int, docs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    verses = [r["text"] for r in kjv_records()]
    for f in range(files):
        rows = [{"id": f"{f}-{i}", "text": " ".join(verses[(f * docs + i + k) % len(verses)] for k in range(4))}
                for i in range(docs)]
        (folder / f"part-{f:02d}.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return folder


def _hashes(root: Path, under: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / under).rglob("*.parquet"))}


def test_sigterm_mid_run_stops_cleanly_and_resumes(tmp_path):
    """Embedded server (no PREFECT_API_URL): SIGTERM during ingest → exit 130 within seconds, run.json
    `interrupted`, both leases released, the temporary Prefect server stopped; the same run id then resumes."""
    data = _corpus(tmp_path / "in", files=12, docs=2500)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    out = tmp_path / "out"
    args = [SLUICE, "run", "--input", str(data), "--output", str(out), "--run-id", "term", "--config",
            str(Path(__file__).resolve().parents[2] / "infra" / "demo.toml"), "--workers", "1",
            "--stages", ",".join(WITHOUT_SCORE)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = out / "runs" / "term" / "ingest" / "_shards"
    deadline = time.time() + 180
    while time.time() < deadline and not list(shards.glob("0*.json")):
        time.sleep(0.05)
    assert list(shards.glob("0*.json")), "ingest never started"
    children = psutil.Process(proc.pid).children(recursive=True)  # the temporary Prefect server among them
    assert children
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert time.time() - sent < 30
    assert "interrupted: stopped by SIGTERM" in stderr
    # no traceback from Sluice's own code (the temporary Prefect server may log its shutdown to the same stderr)
    repo = str(Path(__file__).resolve().parents[2])
    assert f'File "{repo}/tasks' not in stderr and f'File "{repo}/flows' not in stderr
    run = json.loads((out / "runs" / "term" / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert lease(out, "demo")["released"]
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], "orphaned server"

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "runs" / "term" / "run.json").read_text())["status"] == "succeeded"
    manifest = json.loads((out / "runs" / "term" / "ingest" / "_manifest.json").read_text())
    assert manifest["shards_resumed"] >= 1


def test_unwritable_output_is_one_named_line(prefect_server, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "hello"}\n')
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    done = subprocess.run([SLUICE, "run", "--input", str(tmp_path / "in.jsonl"), "--output", str(blocker / "out")],
                          env=subprocess_env(prefect_server), capture_output=True, text=True, timeout=120)
    assert done.returncode == 5
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(blocker / "out") in errors[0] and "Not a directory" in errors[0]
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) < 15
    debug = subprocess.run([SLUICE, "run", "--input", str(tmp_path / "in.jsonl"), "--output", str(blocker / "out"),
                            "--log-level", "debug"], env=subprocess_env(prefect_server), capture_output=True,
                           text=True, timeout=120)
    assert debug.returncode == 5 and "Traceback" in debug.stderr


def test_diff_names_a_bad_version_argument(tmp_path, capsys):
    from flows.cli import main

    assert main(["diff", "crash", "1", "vX", "--output", str(tmp_path)]) == 2
    assert "version 'vX' is not a version number" in capsys.readouterr().err


class _Proxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server; `cut()` drops every connection and refuses new ones."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = _free_port()
        self.open = threading.Event()
        self.open.set()
        self.conns: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.open.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        self.open.clear()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.conns = []
        self.open.set()


@pytest.fixture()
def private_moto():
    """A moto S3 server of the test's own (threaded), so cutting or killing it never wedges the session's server."""
    port = _free_port()
    serve = ("import sys\nfrom werkzeug.serving import run_simple\n"
             "from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\n"
             "run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), "
             "threaded=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", serve, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _s3_run(env: dict, data: str, out: str, run_id: str, cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([SLUICE, "run", "--input", data, "--output", out, "--run-id", run_id, "--config",
                             str(cfg), "--stages", "ingest,dedup,publish"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _s3_hashes(fs, prefix: str) -> dict[str, str]:
    return {p.removeprefix(prefix): hashlib.sha256(fs.cat(p)).hexdigest() for p in sorted(fs.find(prefix))
            if p.endswith(".parquet")}


def test_connections_cut_during_publish_leave_no_version_and_resume_byte_identical(prefect_server, private_moto,
                                                                                tmp_path):
    import boto3
    import s3fs

    data = _corpus(tmp_path / "in", files=4, docs=3000)
    _, s3_server = private_moto
    proxy = _Proxy(int(s3_server.rsplit(":", 1)[1]))
    env = subprocess_env(prefect_server, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
                         AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{proxy.port}", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="cut")
    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": s3_server})
    cfg = tmp_path / "c.toml"
    cfg.write_text('[publish]\ndataset = "cut"\n[runner]\nretries = 0\n[ingest]\nshard_rows = 2000\n'
                   '[storage]\nretries = 1\n')

    clean = subprocess.run([SLUICE, "run", "--input", str(data), "--output", "s3://cut/clean", "--run-id", "r",
                            "--config", str(cfg), "--stages", "ingest,dedup,publish"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]

    proc = _s3_run(env, str(data), "s3://cut/faulty", "r", cfg)
    deadline = time.time() + 300
    while time.time() < deadline and not fs.exists("cut/faulty/datasets/cut/_claims/v1.json"):
        time.sleep(0.05)
    assert fs.exists("cut/faulty/datasets/cut/_claims/v1.json"), "publish never started"
    proxy.cut()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not fs.exists("cut/faulty/datasets/cut/v1/_manifest.json")  # no partial version is visible

    proxy.restore()
    resumed = _s3_run(env, str(data), "s3://cut/faulty", "r", cfg)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    fs.invalidate_cache()
    assert fs.exists("cut/faulty/datasets/cut/v1/_manifest.json")
    assert _s3_hashes(fs, "cut/faulty/") == _s3_hashes(fs, "cut/clean/")


def test_an_s3_endpoint_that_dies_mid_run_is_a_clean_failure(prefect_server, private_moto, tmp_path):
    """The S3 server is killed during ingest: exit 5 with a one-line error naming the output."""
    import boto3

    moto, endpoint = private_moto
    data = _corpus(tmp_path / "in", files=8, docs=4000)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s")
    s3.create_bucket(Bucket="dies")
    env = subprocess_env(prefect_server, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
                         AWS_ENDPOINT_URL_S3=endpoint, AWS_DEFAULT_REGION="us-east-1")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[runner]\nretries = 0\n[ingest]\nshard_rows = 2000\n[storage]\nretries = 1\n')
    proc = subprocess.Popen([SLUICE, "run", "--input", str(data), "--output", "s3://dies/out", "--config",
                             str(cfg), "--stages", "ingest"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and s3.list_objects_v2(Bucket="dies").get("KeyCount", 0) < 3:
        time.sleep(0.1)
    moto.kill()
    moto.wait(10)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s3://dies/out" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("bad", ["run-1\n", "demo\n"])
def test_names_ending_in_a_newline_are_refused(bad):
    from schemas.config import check_safe_name

    with pytest.raises(ValueError, match="is not allowed"):
        check_safe_name(bad, "name")
