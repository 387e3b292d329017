"""S3 end to end through a moto server on 127.0.0.1: input and output on S3, same counts as the local run."""

from __future__ import annotations

import json

import boto3
import polars as pl
import s3fs
from conftest import REPO, WITHOUT_SCORE

from flows.curate import run_curate


def test_s3_run_matches_local_run(s3_env, demo_corpus, demo_run):
    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="curated")
    for path in sorted(demo_corpus.glob("*.jsonl.gz")):
        s3.upload_file(str(path), "raw", f"crawl/2026-11/{path.name}")

    demo_config = str(REPO / "infra" / "demo.toml")
    run = run_curate(["s3://raw/crawl/2026-11/*.jsonl.gz"], "s3://curated/sluice", demo_config, run_id="s3-run",
                     stages=WITHOUT_SCORE)  # the models are the score tests' business, not S3's
    assert run["status"] == "succeeded"
    assert run["published"]["uri"] == "s3://curated/sluice/datasets/demo/v1"

    fs = s3fs.S3FileSystem(key="testing-key-id", secret="testing-secret-never-logged",
                           client_kwargs={"endpoint_url": s3_env, "region_name": "us-east-1"})
    remote = json.loads(fs.cat("curated/sluice/runs/s3-run/ingest/_manifest.json"))
    local_out, _ = demo_run
    local = json.loads((local_out / "runs" / "demo-run" / "ingest" / "_manifest.json").read_text())
    for key in ("rows_in", "rows_out", "rows_rejected", "rejected_by_reason"):
        assert remote[key] == local[key], key
    assert all(o["path"].startswith("runs/s3-run/ingest/") for o in remote["outputs"])  # relative to the root
    assert remote["inputs"][0]["uri"].startswith("s3://raw/crawl/2026-11/")

    remote_q = json.loads(fs.cat("curated/sluice/runs/s3-run/quality/_manifest.json"))
    local_q = json.loads((local_out / "runs" / "demo-run" / "quality" / "_manifest.json").read_text())
    for key in ("rows_in", "rows_out", "rows_rejected", "rejected_by_reason"):
        assert remote_q[key] == local_q[key], key
    published = json.loads(fs.cat("curated/sluice/datasets/demo/v1/_manifest.json"))
    remote_dedup = json.loads(fs.cat("curated/sluice/runs/s3-run/dedup/_manifest.json"))
    assert published["rows_out"] == remote_dedup["rows_out"]
    with fs.open("curated/sluice/datasets/demo/v1/data/part-00000.parquet", "rb") as fh:
        assert pl.read_parquet(fh).height == remote_dedup["outputs"][0]["rows"]

    # credentials never land in anything the run wrote
    for path in fs.find("curated/sluice"):
        if path.endswith((".json", ".md", ".html")):
            body = fs.cat(path)
            assert b"testing-secret-never-logged" not in body, path
            assert b"testing-key-id" not in body, path


def test_missing_s3_input_is_a_clear_error(s3_env, prefect_server, tmp_path):
    import pytest

    from tasks.io.readers import InputError

    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket="empty-bucket")
    with pytest.raises(InputError, match=r"'s3://empty-bucket/nothing/\*.jsonl' matched no files"):
        run_curate(["s3://empty-bucket/nothing/*.jsonl"], str(tmp_path), run_id="no-input")
