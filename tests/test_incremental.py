"""Incremental curation: append versions, dedup against what is published, takedowns, racing and resumed increments."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pyarrow.dataset as pads
import pytest
from conftest import SLUICE, subprocess_env

from flows.cli import main
from tasks.io.locks import dataset_lock
from tasks.io.storage import Storage
from tasks.ops.demo_corpus import kjv_records

VERSES = kjv_records()
# documents of five verses each: long enough for 5-gram MinHash to tell near copies from strangers
DOCS = [{"id": f"doc-{i}", "text": " ".join(v["text"] for v in VERSES[i * 5:(i + 1) * 5])} for i in range(600)]
CONFIG = """stages = ["ingest", "dedup", "publish"]
[ingest]
shard_rows = 60
[publish]
dataset = "inc"
[runner]
workers = 1
"""


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    return path


def near_copy(doc: dict, new_id: str) -> dict:
    """One word of a five-verse document changed: Jaccard of word 5-grams ~0.9."""
    words = doc["text"].split()
    words[len(words) // 2] = "behold"
    return {"id": new_id, "text": " ".join(words)}


def manifest(root: Path, *parts: str) -> dict:
    return json.loads(root.joinpath(*parts, "_manifest.json").read_text())


def rejected(root: Path, run_id: str) -> pl.DataFrame:
    return pl.read_parquet(root / "runs" / run_id / "dedup" / "rejected" / "*.parquet")


@pytest.fixture()
def published_v1(prefect_server, tmp_path):
    """v1 of dataset `inc` (300 documents), published by a replace run."""
    config = tmp_path / "inc.toml"
    config.write_text(CONFIG)
    write_jsonl(tmp_path / "in1" / "a.jsonl", DOCS[:300])
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path / "in1"), "--output", str(out), "--config", str(config),
                 "--run-id", "r1"]) == 0
    return out, config


def test_append_adds_only_new_rows_and_rejects_published_duplicates(published_v1, tmp_path, capsys):
    out, config = published_v1
    increment = DOCS[300:400] + [dict(DOCS[5], id="again-5"), dict(DOCS[6], id="again-6"),
                                 near_copy(DOCS[10], "near-10")]
    write_jsonl(tmp_path / "in2" / "b.jsonl", increment)
    assert main(["run", "--input", str(tmp_path / "in2"), "--output", str(out), "--config", str(config),
                 "--run-id", "r2", "--publish-mode", "append"]) == 0

    dedup = manifest(out, "runs", "r2", "dedup")
    assert dedup["rejected_by_reason"] == {"dedup.exact.published": 2, "dedup.near.published": 1}
    evidence = {r["source_id"]: json.loads(r["evidence"]) for r in rejected(out, "r2").iter_rows(named=True)}
    v1_ids = dict(pl.read_parquet(out / "datasets/inc/v1/data/*.parquet").select("source_id", "id").iter_rows())
    assert evidence["again-5"] == {"version": 1, "published_id": v1_ids["doc-5"], "similarity": 1.0}
    assert evidence["near-10"]["version"] == 1 and evidence["near-10"]["published_id"] == v1_ids["doc-10"]
    assert 0.8 <= evidence["near-10"]["similarity"] < 1.0

    v2 = manifest(out, "datasets", "inc", "v2")
    assert v2["rows_out"] == 400 and v2["published"]["rows_added"] == 100
    assert v2["published"]["mode"] == "append" and v2["published"]["base_version"] == 1
    v1_files = [o["path"] for o in manifest(out, "datasets", "inc", "v1")["outputs"]]
    assert [o["path"] for o in v2["outputs"]][:len(v1_files)] == v1_files  # listed, not copied
    assert sorted(p.name for p in (out / "datasets/inc/v2/data").iterdir()) == [
        f"part-{i:05d}.parquet" for i in range(len(v2["outputs"]) - len(v1_files))]
    assert len(v2["published"]["index"]["parts"]) == len(v2["outputs"])

    diff = json.loads((out / "datasets/inc/v2/_diff.json").read_text())
    assert (diff["rows_added"], diff["rows_removed"], diff["rows_unchanged"]) == (100, 0, 300)
    assert diff["changed_fraction"] == pytest.approx(100 / 300, abs=1e-6)  # against v1's size
    capsys.readouterr()
    assert main(["diff", "inc", "1", "2", "--output", str(out), "--format", "json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert (full["rows_added"], full["rows_removed"]) == (100, 0)
    assert full["by_source"] == {"b.jsonl": {"a": 0, "b": 100, "change": 100}}

    # each version on its own, in every reader: the file list (`sluice files`), or the folder's README configs
    for version, rows in ((1, 300), (2, 400)):
        assert main(["files", "inc", "--version", str(version), "--output", str(out)]) == 0
        files = capsys.readouterr().out.split()
        assert pl.read_parquet(files).height == rows
        assert duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0] == rows
        assert pads.dataset(files, format="parquet").to_table().to_pandas().shape[0] == rows
        from datasets import load_dataset

        hf = load_dataset(str(out / "datasets" / "inc" / f"v{version}"), split="train",
                          cache_dir=str(tmp_path / f"hf-{version}"))
        assert hf.num_rows == rows
        assert sorted(hf["content_sha256"]) == sorted(pl.read_parquet(files)["content_sha256"].to_list())


def test_forget_a_source_and_nothing_of_it_comes_back(published_v1, tmp_path, capsys):
    out, config = published_v1
    poisoned = write_jsonl(tmp_path / "in2" / "poisoned.jsonl", DOCS[400:450])
    assert main(["run", "--input", str(poisoned), "--output", str(out), "--config", str(config),
                 "--run-id", "r2", "--publish-mode", "append"]) == 0
    assert manifest(out, "datasets", "inc", "v2")["rows_out"] == 350

    capsys.readouterr()
    assert main(["forget", "inc", "--source", "poisoned.jsonl", "--reason", "poisoned crawl, ticket 42", "--by",
                 "alice", "--output", str(out), "--yes", "--max-fraction", "0.2"]) == 0
    said = capsys.readouterr().out
    assert "v3 = v2 without 50 rows (300 left)" in said
    v3 = manifest(out, "datasets", "inc", "v3")
    assert v3["rows_out"] == 300 and v3["published"]["rows_forgotten"] == 50
    v3_rows = pl.read_parquet([out / o["path"] for o in v3["outputs"]])
    assert v3_rows.height == 300 and "poisoned.jsonl" not in v3_rows["source"].to_list()
    v1_files = [o["path"] for o in manifest(out, "datasets", "inc", "v1")["outputs"]]
    assert [o["path"] for o in v3["outputs"]] == v1_files  # untouched files shared, nothing rewritten
    tombs = list((out / "datasets/inc/_tombstones").glob("*.json"))
    record = json.loads(tombs[0].read_text())
    assert (record["requested_by"], record["reason"], record["rows"]) == ("alice", "poisoned crawl, ticket 42", 50)
    assert record["selector"] == "source poisoned.jsonl"
    assert main(["diff", "inc", "2", "3", "--output", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "removed           50" in shown and "forgotten         50  by alice: poisoned crawl, ticket 42" in shown

    # the same source again, beside something new: only the new lands
    again = write_jsonl(tmp_path / "in3" / "poisoned.jsonl", DOCS[400:450])
    fresh = write_jsonl(tmp_path / "in3" / "fresh.jsonl", DOCS[450:460])
    assert main(["run", "--input", str(tmp_path / "in3"), "--output", str(out), "--config", str(config),
                 "--run-id", "r3", "--publish-mode", "append"]) == 0
    assert manifest(out, "runs", "r3", "dedup")["rejected_by_reason"] == {"dedup.forgotten": 50}
    v4 = manifest(out, "datasets", "inc", "v4")
    assert v4["rows_out"] == 310 and v4["published"]["base_version"] == 3
    assert fresh.exists() and again.exists()
    # a near copy of forgotten content under another name, in a full recompute (replace): kept out too
    mirror = write_jsonl(tmp_path / "in4" / "mirror.jsonl", [near_copy(DOCS[401], "mirror-401"), *DOCS[460:470]])
    assert main(["run", "--input", str(mirror), "--output", str(out), "--config", str(config), "--run-id", "r4",
                 "--publish-mode", "replace"]) == 0
    assert manifest(out, "runs", "r4", "dedup")["rejected_by_reason"] == {"dedup.forgotten": 1}
    evidence = json.loads(rejected(out, "r4")["evidence"][0])
    assert evidence["tombstone"] == record["tombstone"] and evidence["similarity"] >= 0.8
    assert manifest(out, "datasets", "inc", "v5")["rows_out"] == 10

    with pytest.raises(SystemExit):  # one selector is required
        main(["forget", "inc", "--reason", "x", "--output", str(out)])
    assert main(["forget", "inc", "--where", "no_such_column = 1", "--reason", "x", "--output", str(out)]) == 2
    assert "no_such_column" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("doc-460\ndoc-461\n")
    assert main(["forget", "inc", "--ids", str(ids), "--reason", "removal request", "--output", str(out),
                 "--yes", "--max-fraction", "0.3"]) == 0
    assert manifest(out, "datasets", "inc", "v6")["rows_out"] == 8


def _storage(root: str) -> Storage:
    from schemas.config import SluiceConfig

    return Storage(root, SluiceConfig().storage.s3_options())


def _hashes(root: str, under: str) -> dict[str, str]:
    """sha256 of every Parquet file under `under`, by its path relative to the root (local or S3)."""
    storage = _storage(root)
    base = storage._path("")
    found = storage.fs.find(storage._path(under))
    return {f[len(base):].lstrip("/"): hashlib.sha256(storage.fs.cat_file(f)).hexdigest()
            for f in sorted(found) if f.endswith(".parquet")}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_increments_publish_in_order_and_a_killed_one_resumes_byte_identical(backend, prefect_server,
                                                                                    tmp_path, request):
    config = tmp_path / "inc.toml"
    config.write_text(CONFIG)
    if backend == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_env")  # AWS_* in os.environ: the subprocesses get them too
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="race")
        out = "s3://race/root"
    else:
        out = str(tmp_path / "out")
    write_jsonl(tmp_path / "in1" / "a.jsonl", DOCS[:300])
    assert main(["run", "--input", str(tmp_path / "in1"), "--output", out, "--config", str(config),
                 "--run-id", "r1"]) == 0
    storage = _storage(out)
    env = subprocess_env(prefect_server)
    shared = dict(DOCS[500], id="shared")  # in both increments: the second to publish must reject it
    a = write_jsonl(tmp_path / "a" / "a.jsonl", DOCS[300:400] + [shared])
    b = write_jsonl(tmp_path / "b" / "b.jsonl", DOCS[400:500] + [shared])
    blocker = dataset_lock(storage, "inc", "a-long-run", ttl_seconds=60)
    blocker.acquire()  # both racers start while another run holds the dataset: they must queue, not fail
    racers = [subprocess.Popen([SLUICE, "run", "--input", str(path), "--output", out, "--config", str(config),
                                "--run-id", run_id, "--publish-mode", "append"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for path, run_id in ((a, "ra"), (b, "rb"))]
    logs: list[list[str]] = [[], []]

    def read(i: int) -> None:
        for line in racers[i].stdout:
            logs[i].append(line)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    waiting = "dataset inc is held by run a-long-run; waiting up to"
    deadline = time.time() + 180
    while time.time() < deadline and not all(any(waiting in line for line in log) for log in logs):
        time.sleep(0.05)
    blocker.release()
    for t in readers:
        t.join(timeout=300)
    for p in racers:
        p.wait(timeout=60)
    logs = ["".join(log) for log in logs]
    assert all(waiting in log for log in logs), logs
    assert [p.returncode for p in racers] == [0, 0], logs
    runs = {rid: storage.read_json(f"runs/{rid}/run.json") for rid in ("ra", "rb")}
    first, second = sorted(runs, key=lambda r: runs[r]["published"]["version"])
    assert [runs[first]["published"]["version"], runs[second]["published"]["version"]] == [2, 3]
    v3 = storage.read_json("datasets/inc/v3/_manifest.json")
    assert v3["published"]["base_version"] == 2 and v3["rows_out"] == 300 + 101 + 100
    assert storage.read_json(f"runs/{second}/dedup/_manifest.json")["rejected_by_reason"] == {
        "dedup.exact.published": 1}

    if backend == "local":
        return  # kill -9 and resume on a local root: tests/test_resume.py (the same protocol, storage-agnostic)
    # kill -9 an increment after its dedup, resume it: byte-identical to an uninterrupted one
    c = write_jsonl(tmp_path / "c" / "c.jsonl", DOCS[510:600] + [dict(DOCS[7], id="again-7")])
    clean, crashed = f"{out}-clean", f"{out}-crashed"
    for copy in (clean, crashed):
        storage.fs.copy(storage._path(""), _storage(copy)._path(""), recursive=True)
    args = ["--input", str(c), "--config", str(config), "--run-id", "rc", "--publish-mode", "append"]
    assert main(["run", *args, "--output", clean]) == 0  # the reference, uninterrupted (in this process)
    proc = subprocess.Popen([SLUICE, "run", *args, "--output", crashed], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    crashed_storage = _storage(crashed)
    deadline = time.time() + 300
    while (time.time() < deadline and proc.poll() is None
           and not crashed_storage.exists("runs/rc/dedup/_manifest.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not crashed_storage.exists("datasets/inc/v4/_manifest.json"), "killed too late"
    resumed = subprocess.run([SLUICE, "run", *args, "--output", crashed], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for under in ("datasets/inc/v4", "datasets/inc/_index/v4", "runs/rc/dedup"):  # publish writes to datasets/
        assert _hashes(crashed, under) == _hashes(clean, under) != {}, under
    assert crashed_storage.read_json("datasets/inc/v4/_manifest.json")["rows_out"] == 501 + 90


def test_append_and_forget_on_s3(s3_env, prefect_server, tmp_path, capsys):
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket="inc")
    out = "s3://inc/root"
    config = tmp_path / "inc.toml"
    config.write_text(CONFIG)
    write_jsonl(tmp_path / "in1" / "a.jsonl", DOCS[:100])
    write_jsonl(tmp_path / "in2" / "b.jsonl", DOCS[100:120] + [dict(DOCS[3], id="again-3")])
    for src, run_id, mode in (("in1", "s1", "replace"), ("in2", "s2", "append")):
        assert main(["run", "--input", str(tmp_path / src), "--output", out, "--config", str(config),
                     "--run-id", run_id, "--publish-mode", mode]) == 0
    fs = s3fs.S3FileSystem(key="testing-key-id", secret="testing-secret-never-logged",
                           client_kwargs={"endpoint_url": s3_env, "region_name": "us-east-1"})

    def on_s3(path: str) -> dict:
        return json.loads(fs.cat(f"inc/root/{path}"))

    assert on_s3("runs/s2/dedup/_manifest.json")["rejected_by_reason"] == {"dedup.exact.published": 1}
    v2 = on_s3("datasets/inc/v2/_manifest.json")
    assert v2["rows_out"] == 120 and v2["outputs"][0]["path"].startswith("datasets/inc/v1/data/")
    capsys.readouterr()
    assert main(["files", "inc", "--output", out]) == 0
    files = capsys.readouterr().out.split()
    assert len(files) == len(v2["outputs"]) and all(f.startswith("s3://inc/root/datasets/inc/v") for f in files)

    assert main(["forget", "inc", "--where", "source_id = 'doc-3' OR source_id = 'doc-105'", "--reason",
                 "removal request", "--output", out, "--yes"]) == 0
    v3 = on_s3("datasets/inc/v3/_manifest.json")
    assert v3["rows_out"] == 118 and v3["published"]["rows_forgotten"] == 2
    assert len(fs.ls("inc/root/datasets/inc/_tombstones")) == 2  # the record and the forgotten rows' index
    write_jsonl(tmp_path / "in3" / "c.jsonl", [dict(DOCS[105], id="back-105"), *DOCS[120:125]])
    assert main(["run", "--input", str(tmp_path / "in3"), "--output", out, "--config", str(config),
                 "--run-id", "s3", "--publish-mode", "append"]) == 0
    assert on_s3("runs/s3/dedup/_manifest.json")["rejected_by_reason"] == {"dedup.forgotten": 1}
    assert on_s3("datasets/inc/v4/_manifest.json")["rows_out"] == 123


def test_semantic_duplicates_of_published_rows(prefect_server, tmp_path):
    """Appending with the score stage: the index carries the published rows' embeddings, and a paraphrase of a
    published row (no n-gram overlap to speak of) is rejected as dedup.semantic.published, naming v1."""
    from test_score import PARAPHRASES

    from flows.curate import run_curate

    reference = write_jsonl(tmp_path / "reference.jsonl", DOCS[590:600])  # a small one: the quality head is not
    config = tmp_path / "score.toml"                                      # what this test is about
    config.write_text(f'[score]\ndevice = "cpu"\nperplexity = false\nreference = "{reference}"\n'
                      '[score.contamination]\nenabled = false\n[publish]\ndataset = "sem"\n')
    stages = ["ingest", "score", "publish"]
    first = write_jsonl(tmp_path / "v1" / "a.jsonl",
                        [{"id": f"orig-{i}", "text": a} for i, (a, _) in enumerate(PARAPHRASES)] + DOCS[:10])
    out = str(tmp_path / "out")
    assert run_curate([str(first)], out, str(config), run_id="s1", stages=stages)["status"] == "succeeded"
    v1 = manifest(Path(out), "datasets", "sem", "v1")
    assert "embedder" in v1["published"]["index"]["format"]
    index = pl.read_parquet([Path(out) / o["path"] for o in v1["published"]["index"]["parts"]])
    assert index["embedding"].null_count() == 0 and index.height == 13

    second = write_jsonl(tmp_path / "v2" / "b.jsonl",
                         [{"id": f"para-{i}", "text": b} for i, (_, b) in enumerate(PARAPHRASES)] + DOCS[10:15])
    run = run_curate([str(second)], out, str(config), run_id="s2", stages=stages, publish_mode="append")
    assert run["status"] == "succeeded"
    score = manifest(Path(out), "runs", "s2", "score")
    assert score["rejected_by_reason"] == {"dedup.semantic.published": 3}
    gone = pl.read_parquet(Path(out) / "runs/s2/score/rejected/*.parquet")
    v1_ids = dict(pl.read_parquet(Path(out) / "datasets/sem/v1/data/*.parquet").select("source_id", "id").iter_rows())
    for source_id, evidence in gone.select("source_id", "evidence").iter_rows():
        found = json.loads(evidence)
        assert found["version"] == 1 and found["published_id"] == v1_ids[source_id.replace("para", "orig")]
        assert found["cosine"] >= 0.95
    assert manifest(Path(out), "datasets", "sem", "v2")["rows_out"] == 13 + 5
