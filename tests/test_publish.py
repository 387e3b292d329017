"""Publishing: atomic versions, and concurrent publishes of one dataset never share a version."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from conftest import SLUICE, subprocess_env

from schemas.config import SluiceConfig
from tasks.io.storage import Storage
from tasks.publish import claim_version
from tasks.runner import RunContext


def test_two_processes_publish_the_same_dataset(prefect_server, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps({"text": f"document {i}"}) for i in range(2000)))
    out = tmp_path / "out"
    env = subprocess_env(prefect_server)
    procs = [
        subprocess.Popen([SLUICE, "run", "--input", str(data), "--output", str(out), "--run-id", f"writer-{i}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    versions = sorted(p.name for p in (out / "datasets" / "curated").glob("v*"))
    assert versions == ["v1", "v2"]
    owners = {json.loads((out / "datasets" / "curated" / v / "_manifest.json").read_text())["run_id"]
              for v in versions}
    assert owners == {"writer-0", "writer-1"}
    claims = sorted(p.name for p in (out / "datasets" / "curated" / "_claims").iterdir())
    assert claims == ["v1.json", "v2.json"]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_claims_get_distinct_versions(backend, tmp_path, request):
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_env")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="race")
        root = "s3://race/root"
    else:
        root = str(tmp_path)
    cfg = SluiceConfig()
    storage = Storage(root, cfg.storage.s3_options())

    def claim(i: int) -> int:
        return claim_version(RunContext(storage, f"run-{i}", cfg), "shared")

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
