"""Publishing: atomic versions, and concurrent publishes of one dataset never share a version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest
from judge import judge, records
from judge import run as run_stage

from schemas.config import SluiceConfig
from tasks.io.storage import Storage
from tasks.io.versions import claim_version


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_claims_get_distinct_versions(backend, tmp_path, request):
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_env")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="race")
        root = "s3://race/root"
    else:
        root = str(tmp_path)
    storage = Storage(root, SluiceConfig().storage.s3_options())

    def claim(i: int) -> int:
        return claim_version(storage, "shared", f"run-{i}")

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(claim, range(16)))
    assert sorted(got) == list(range(1, 17))
    # a run that already holds a claim gets the same version back (resume after a crash mid-publish)
    assert claim(5) == got[5]


def test_exclusive_create_never_overwrites(tmp_path):
    storage = Storage(str(tmp_path))
    assert storage.create_exclusive("a/b.json", b"first")
    assert not storage.create_exclusive("a/b.json", b"second")
    assert storage.read_bytes("a/b.json") == b"first"


def test_judge_publish_alone():
    """Publishing removes nothing: every row of the last stage is published as it is, counted per source."""
    assert judge("publish", "one document", "another document") == [None, None]
    batch = records("one", "two", "three").with_columns(source=pl.Series(["a", "b", "a"]))
    result = run_stage("publish", batch)
    assert result.kept.equals(batch) and result.rejected.height == 0
    assert result.stats.tallies["rows_by_source"] == {"a": 2, "b": 1}
