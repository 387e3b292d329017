"""kill -9 mid-run, rerun with the same run id: finished shards are skipped and outputs are byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import SLUICE, lease, subprocess_env

CONFIG = """
stages = ["ingest", "quality", "dedup", "publish"]
[ingest]
shard_rows = 800
[quality.gopher_quality]
min_doc_words = 8
min_alpha_words_ratio = 0.6
[quality.gopher_repetition]
top_n_grams = [[2, 0.5], [3, 0.5], [4, 0.5]]
[quality.c4]
min_num_sentences = 1
[runner]
workers = 1
"""


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every data file (kept, quarantined, published), by path relative to the output root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([SLUICE, "run", *args], env=env, capture_output=True, text=True, timeout=600)


def test_kill_9_then_resume_is_byte_identical(prefect_server, demo_corpus, tmp_path):
    config = tmp_path / "small-shards.toml"
    config.write_text(CONFIG)
    env = subprocess_env(prefect_server)
    # the first 16,000 rows (20 ingest shards of 800): enough to kill mid-ingest, a third of the demo's time
    common = ["--input", str(demo_corpus), "--config", str(config), "--run-id", "resume-me", "--limit", "16000",
              "--publish"]

    clean = tmp_path / "clean"
    done = _run([*common, "--output", str(clean)], env)
    assert done.returncode == 0, done.stderr

    crashed = tmp_path / "crashed"
    shards = crashed / "runs" / "resume-me" / "ingest" / "_shards"
    proc = subprocess.Popen([SLUICE, "run", *common, "--output", str(crashed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("0*.json"))) < 12:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    finished_before_kill = len(list(shards.glob("0*.json")))
    assert finished_before_kill >= 12
    assert not (crashed / "runs" / "resume-me" / "ingest" / "_manifest.json").exists(), "killed too late"
    dataset = next((crashed / "datasets").iterdir())
    assert not list(dataset.glob("v*"))
    left = lease(crashed, dataset.name)  # left by the killed run
    assert left["run_id"] == "resume-me" and not left["released"]

    resumed = _run([*common, "--output", str(crashed)], env)  # its holder is a dead process: taken over at once
    assert resumed.returncode == 0, resumed.stderr
    assert lease(crashed, dataset.name)["released"] and lease(crashed, dataset.name)["generation"] == 2
    manifest = json.loads((crashed / "runs" / "resume-me" / "ingest" / "_manifest.json").read_text())
    assert manifest["shards_resumed"] >= finished_before_kill
    assert manifest["shards_resumed"] < manifest["shards"]

    assert _hashes(crashed) == _hashes(clean)
    assert any(k.startswith("datasets/curated/v1/") for k in _hashes(clean))
    assert any("/rejected/" in k for k in _hashes(clean))


def test_changed_params_redo_the_stage(prefect_server, tmp_path):
    """A resume never trusts work done under other params: the stale manifest is dropped and the stage redone."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"text": "short"}\n{"text": "' + b"long " * 50 + b'"}\n')
    env = subprocess_env(prefect_server)
    out = tmp_path / "out"
    first = _run(["--input", str(data), "--output", str(out), "--run-id", "p", "--stages", "ingest"], env)
    assert first.returncode == 0, first.stderr
    config = tmp_path / "limit.toml"
    config.write_text("[ingest]\nmax_record_bytes = 100\n")
    second = _run(["--input", str(data), "--output", str(out), "--run-id", "p", "--stages", "ingest",
                   "--config", str(config)], env)
    assert second.returncode == 0, second.stderr
    manifest = json.loads((out / "runs" / "p" / "ingest" / "_manifest.json").read_text())
    assert manifest["rejected_by_reason"] == {"ingest.record.oversize": 1}
    assert manifest["shards_resumed"] == 0
