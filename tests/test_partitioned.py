"""The partitioned global steps on storage (issue 25): partition counts from the memory budget, a partition over the
budget reduced in parts with the same result, and a run killed with -9 in the middle of a shuffle resumed to the
same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import SLUICE

from tasks.ops.demo_corpus import kjv_records


def _corpus(folder: Path, docs: int = 3000) -> Path:
    verses = [v["text"] for v in kjv_records()]
    folder.mkdir(parents=True)
    rows = [{"id": f"d{i}", "text": " ".join(verses[(i * 5) % 30000:(i * 5) % 30000 + 5])} for i in range(docs)]
    rows += [{"id": f"x{i}", "text": rows[i * 13]["text"]} for i in range(50)]
    rows += [{"id": f"n{i}", "text": rows[i * 17]["text"] + " and so it was"} for i in range(50)]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _dedup(root: Path, run_id: str) -> tuple[dict, dict[str, str]]:
    manifest = json.loads((root / "runs" / run_id / "dedup" / "_manifest.json").read_text())
    parts = {Path(o["path"]).name: hashlib.sha256((root / o["path"]).read_bytes()).hexdigest()
             for o in manifest["outputs"] + manifest["rejected"]}
    return manifest, parts


def test_a_partition_over_the_memory_budget_is_reduced_in_parts_with_the_same_result(prefect_server, tmp_path):
    from flows.curate import run_curate

    corpus = _corpus(tmp_path / "in")
    whole_cfg = tmp_path / "whole.toml"
    whole_cfg.write_text("[ingest]\nshard_rows = 500\n[runner]\npartitions = 1\n")
    split_cfg = tmp_path / "split.toml"
    split_cfg.write_text("[ingest]\nshard_rows = 500\n[runner]\npartitions = 1\ntask_memory = 1048576\n")
    run_curate([str(corpus)], str(tmp_path / "whole"), str(whole_cfg), run_id="r", stages=["ingest", "dedup"])
    run_curate([str(corpus)], str(tmp_path / "split"), str(split_cfg), run_id="r", stages=["ingest", "dedup"])
    whole, whole_parts = _dedup(tmp_path / "whole", "r")
    split, split_parts = _dedup(tmp_path / "split", "r")
    steps = {s["step"]: s for s in split["plan"]["steps"]}
    assert steps["candidates"]["partitions_split"] == 1 and whole["plan"]["partitions"]["buckets"] == 1
    assert all(s["partitions_split"] == 0 for s in whole["plan"]["steps"])
    assert split["rejected_by_reason"] == whole["rejected_by_reason"]
    assert whole["rejected_by_reason"]["dedup.exact"] == 50 and whole["rejected_by_reason"]["dedup.near"] >= 50
    assert split_parts == whole_parts


def test_partition_counts_follow_the_rows_and_the_budget(tmp_path):
    from schemas.config import SluiceConfig
    from tasks.io.storage import Storage
    from tasks.runtime.context import RunContext
    from tasks.runtime.partitioned import partition_counts
    from tasks.stages.dedup import STAGE

    def counts(rows: int, memory: int) -> dict:
        cfg = SluiceConfig.model_validate({"runner": {"task_memory": memory}})
        return partition_counts(RunContext(Storage(str(tmp_path)), "r", cfg), STAGE, rows)

    small, big = counts(1_000_000, 1 << 30), counts(10_000_000, 1 << 30)
    # 10x the rows, 10x the partitions (rounded up to a multiple of the 2 workers); half the memory, twice as many
    assert small["buckets"] == 16 and big["buckets"] == 150
    assert counts(1_000_000, 1 << 29)["buckets"] == 30
    assert small["pairs"] == small["shingles"] == 4 and big["pairs"] == big["shingles"] == 40  # shared numbers
    assert small["edges"] == 2  # a shuffle of few bytes a row stays at one partition per worker


def test_a_shuffle_killed_with_minus_9_resumes_to_the_same_bytes(tmp_path):
    corpus = _corpus(tmp_path / "in", docs=3000)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[ingest]\nshard_rows = 200\n[runner]\npartitions = 4\nkeep_work = true\n")
    env = {**os.environ, "SLUICE_WARM_WORKER": "off"}
    clean = subprocess.run([SLUICE, "run", "--input", str(corpus), "--output", str(tmp_path / "clean"), "--config",
                            str(cfg), "--stages", "ingest,dedup", "--run-id", "r"], capture_output=True, text=True,
                           env=env, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([SLUICE, "run", "--input", str(corpus), "--output", str(out), "--config", str(cfg),
                             "--stages", "ingest,dedup", "--run-id", "r"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    work = out / "runs" / "r" / "dedup" / "_work"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(work.glob("*/receipts/bands/*.json"))) < 5:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of the MinHash map step: some shards shuffled, some not
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in work.glob("*/receipts/exact/*.json")}
    assert done_before and not (out / "runs" / "r" / "dedup" / "_manifest.json").exists()
    resumed = subprocess.run([SLUICE, "run", "--input", str(corpus), "--output", str(out), "--config", str(cfg),
                              "--stages", "ingest,dedup", "--run-id", "r"], capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # the exact step was not redone
    assert _dedup(out, "r")[1] == _dedup(tmp_path / "clean", "r")[1]
