"""A real distributed engine (issue 25): a `dask scheduler` and three `dask worker` processes on 127.0.0.1, each one
process with a 1.5 GB memory limit, two of them with a `GPU` slot, run ingest, dedup, score (embeddings), select and
publish; the published data is byte-identical to the local runner's, also when a worker is killed with -9 in the
middle of dedup's steps, and the score stage's tasks never run on the worker without a GPU slot.

A worker holds about 1.1 GiB before its first task (Python, polars, torch, the score models). Dask pauses a worker
at 80% of its limit until its memory drops, which memory the allocator keeps never does: with 1.5 GB the workers
paused and resumed around 1.12 GiB, and a CI run hung. So pausing is off here, as the README says to do for workers
this small; a worker past 95% is still restarted by its nanny (and its tasks rerun), which is bounded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, _free_port

from tasks.ops.demo_corpus import kjv_records

DASK = str(Path(sys.executable).parent / "dask")
STAGES = ["ingest", "dedup", "score", "select", "publish"]
CONFIG = """[ingest]
shard_rows = 150
[score]
device = "cpu"
perplexity = false
cpu_precision = "float32"
reference = ""  # no quality head: each worker would embed the reference set (the score models are what is tested)
[score.contamination]
enabled = false
[[select.policies]]
kind = "k_center"
fraction = 0.8
[runner]
workers = 2
[publish]
dataset = "dask"
"""


def _corpus(folder: Path) -> Path:
    verses = [v["text"] for v in kjv_records()]
    folder.mkdir(parents=True)
    rows = [{"id": f"d{i}", "text": " ".join(verses[i * 4:(i + 1) * 4])} for i in range(600)]
    rows += [{"id": f"x{i}", "text": rows[i * 7]["text"]} for i in range(20)]  # exact copies
    rows += [{"id": f"n{i}", "text": rows[i * 11]["text"].replace(" the ", " a ", 1) + " amen"} for i in range(20)]
    for part in range(2):
        (folder / f"p{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[part::2]))
    return folder


class Cluster:
    def __init__(self, tmp: Path, env: dict):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.logs = tmp
        self.env = env
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard"], "scheduler")
        self.workers = [self.worker(i) for i in range(2)]
        self.cpu_worker = self.worker(2, gpu=False)

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO))

    def worker(self, i: int, gpu: bool = True) -> subprocess.Popen:
        """A worker process; `gpu` ones declare one `GPU` slot (what the score stage's tasks ask for)."""
        return self._start([DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--memory-limit",
                            "1.5GB", *(["--resources", "GPU=1"] if gpu else []), "--host", "127.0.0.1",
                            "--no-dashboard", "--name", f"w{i}-{time.monotonic_ns()}"], f"worker-{i}")

    def task_runs(self, i: int) -> list[str]:
        """The Prefect task runs worker `i` ran, by name (`score-features-00001`), from its log."""
        return re.findall(r"Task run '([^']+)' - Finished in state Completed",
                          (self.logs / f"worker-{i}.log").read_text(errors="replace"))

    def wait(self, workers: int = 3, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(workers, timeout=timeout)

    def close(self) -> None:
        for proc in [*self.workers, self.cpu_worker, self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.cpu_worker, self.scheduler]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _published(root: Path) -> dict[str, str]:
    version = root / "datasets" / "dask" / "v1"
    manifest = json.loads((version / "_manifest.json").read_text())
    return {Path(o["path"]).name: hashlib.sha256((root / o["path"]).read_bytes()).hexdigest()
            for o in manifest["outputs"]}


@pytest.fixture(scope="module")
def local_result(prefect_server, tmp_path_factory):
    from flows.curate import run_curate

    tmp = tmp_path_factory.mktemp("dask-local")
    corpus = _corpus(tmp / "in")
    config = tmp / "c.toml"
    config.write_text(CONFIG)
    run = run_curate([str(corpus)], str(tmp / "out"), str(config), run_id="local", stages=STAGES)
    assert run["status"] == "succeeded"
    dedup = json.loads((tmp / "out" / "runs" / "local" / "dedup" / "_manifest.json").read_text())
    assert dedup["rejected_by_reason"] == {"dedup.exact": 20, "dedup.near": 20}
    return corpus, config, _published(tmp / "out")


@pytest.fixture(scope="module")
def cluster(prefect_server, tmp_path_factory):
    """One scheduler, two workers with a `GPU` slot and one without."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONUNBUFFERED": "1",
           "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
           "PREFECT_LOGGING_LEVEL": "INFO"}  # each task run's end in its worker's log: where it ran
    c = Cluster(tmp_path_factory.mktemp("dask-cluster"), env)
    try:
        c.wait()
        yield c
    finally:
        c.close()


def test_a_worker_killed_during_dedup_and_the_run_completes_the_same(local_result, cluster, tmp_path):
    """The two-worker cluster publishes what the local runner does, byte for byte, even though one of its workers
    is killed with -9 between dedup's steps (one run covers both: each run here is ~90 s of worker start-up and model
    loading on 2 cores)."""
    from flows.curate import run_curate

    corpus, config, expected = local_result
    out = tmp_path / "out"
    receipts = out / "runs" / "killed" / "dedup" / "_work"
    killed = {}

    def kill_when_dedup_runs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(receipts.glob("*/receipts/exact/*.json")):  # the exact reduce has run: the near steps come next
                victim = cluster.workers[0]
                os.kill(victim.pid, signal.SIGKILL)
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_dedup_runs, daemon=True)
    watcher.start()
    run = run_curate([str(corpus)], str(out), str(config), run_id="killed", stages=STAGES, runner="dask",
                     dask_address=cluster.address)
    watcher.join(5)
    assert killed, "the worker was never killed: dedup's exact step did not run"
    assert cluster.workers[0].poll() is not None  # it died
    assert run["status"] == "succeeded"
    assert _published(out) == expected
    dedup = json.loads((out / "runs" / "killed" / "dedup" / "_manifest.json").read_text())
    assert {s["step"] for s in dedup["plan"]["steps"]} >= {"exact", "candidates", "verify", "components"}
    assert not receipts.exists()  # the partitioned steps' work is cleaned after the commit
    # the score stage's tasks ask for a GPU slot: the worker without one ran other stages' tasks, never score's
    on_cpu_worker = cluster.task_runs(2)
    assert any(name.startswith(("ingest-", "dedup-")) for name in on_cpu_worker), on_cpu_worker
    assert not [name for name in on_cpu_worker if name.startswith("score-")]
    assert [name for i in (0, 1) for name in cluster.task_runs(i) if name.startswith("score-")]
