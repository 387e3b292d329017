"""Many small files share tasks and shards (issue 24, item 8). Before the fix every file was its own Prefect task,
shard, Parquet part, GE validation and receipt: 10,000 one-row files ingested at ~9 files/s."""

from __future__ import annotations

import json

import boto3
import polars as pl

from tasks.io.readers import InputFile
from tasks.runtime.runner import SMALL_FILE_BYTES, file_groups


def test_small_files_are_grouped_and_large_ones_stand_alone():
    files = [InputFile(f"/x/{i}", 100, "v") for i in range(10)] + [InputFile("/x/big", SMALL_FILE_BYTES, "v")] + \
        [InputFile(f"/x/t{i}", 100, "v") for i in range(3)]
    groups = file_groups(files, workers=2)
    assert [i for g in groups for i in g] == list(range(14))  # every file once, in order
    assert [10] in groups and all(len(g) <= 7 for g in groups)
    assert len(file_groups([InputFile(f"/y/{i}", 10, "v") for i in range(5000)], workers=2)) == 4  # 2,000 a group


def _files(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:05d}.jsonl").write_text(json.dumps({"id": f"s{i}", "text": f"small file {i} says hello"})
                                                + "\n" + ("" if i % 7 else "\n"))  # some with a blank line
    return folder


def test_hundreds_of_small_files_make_few_shards_and_every_line_is_accounted(prefect_server, tmp_path):
    from flows.curate import run_curate

    folder = _files(tmp_path / "in", 600)
    run = run_curate([str(folder)], str(tmp_path / "out"), None, stages=["ingest"], run_id="small")
    m = json.loads((tmp_path / "out" / "runs" / "small" / "ingest" / "_manifest.json").read_text())
    assert (m["rows_in"], m["rows_out"], m["shards"]) == (600, 600, 2)  # two groups (2 workers), one shard each
    counts = m["stats"]["counts"]
    assert counts["input.lines_read"] == 600 + 86 and counts["input.lines_skipped"] == 86
    assert counts["input.unaccounted"] == 0 and len(m["inputs"]) == 600
    rows = pl.read_parquet([tmp_path / "out" / o["path"] for o in m["outputs"]])
    assert sorted(rows["source_id"].to_list()) == sorted(f"s{i}" for i in range(600))
    assert rows.filter(pl.col("source_id") == "s42")["src_file"].to_list() == ["f00042.jsonl"]
    assert run["status"] == "succeeded"


def test_small_objects_on_s3_are_fetched_together(s3_env, prefect_server, tmp_path):
    from flows.curate import run_curate

    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    s3.create_bucket(Bucket="small")
    for i in range(150):
        s3.put_object(Bucket="small", Key=f"in/f{i:04d}.jsonl",
                      Body=json.dumps({"id": f"o{i}", "text": f"object {i} of a prefix"}).encode() + b"\n")
    s3.put_object(Bucket="small", Key="in/_SUCCESS", Body=b"")
    run_curate(["s3://small/in/"], str(tmp_path / "out"), None, stages=["ingest"], run_id="s3small")
    m = json.loads((tmp_path / "out" / "runs" / "s3small" / "ingest" / "_manifest.json").read_text())
    assert (m["rows_in"], m["rows_out"], m["shards"], m["stats"]["counts"]["input.unaccounted"]) == (150, 150, 2, 0)
