"""The ingest stage and the readers on their own (no Prefect): every kind of bad input, every format."""

from __future__ import annotations

import gzip
import hashlib
import json
import unicodedata
from pathlib import Path

import orjson
import polars as pl
import pytest
import zstandard
from judge import judge

from schemas.config import IngestConfig
from tasks.io.readers import InputError, detect_format, read_batches, resolve_inputs
from tasks.stages.ingest import ingest


def _run_file(path: Path, cfg: IngestConfig | None = None):
    cfg = cfg or IngestConfig()
    (file,) = resolve_inputs([str(path)])
    fmt, comp = detect_format(file.uri, cfg.format)
    kept, rejected, rows_in = [], [], 0
    for batch in read_batches(file, fmt, comp, cfg):
        res = ingest(batch, cfg)
        assert batch.height == res.kept.height + res.rejected.height
        rows_in += batch.height
        kept.append(res.kept)
        rejected.append(res.rejected)
    return pl.concat(kept), pl.concat(rejected), rows_in


GOOD = [{"id": f"doc-{i}", "text": f"Document number {i} has some words.", "url": f"https://x.test/{i}"}
        for i in range(5)]

BAD_LINES = {
    "ingest.json.invalid": b'{"id": "a", "text": "unterminated',
    "ingest.utf8.invalid": b'{"id": "b", "text": "caf\xe9"}',
    "ingest.text.missing": b'{"id": "c", "body": "wrong key"}',
    "ingest.text.not_string": b'{"id": "d", "text": 42}',
    "ingest.text.empty": b'{"id": "e", "text": " \\t "}',
    "ingest.json.not_object": b'[1, 2, 3]',
    "ingest.timestamp.invalid": b'{"id": "f", "text": "fine text", "timestamp": "next tuesday"}',
}


def test_every_malformed_line_is_quarantined_with_reason_file_and_line(tmp_path):
    lines = [orjson.dumps(GOOD[0])] + list(BAD_LINES.values()) + [orjson.dumps(g) for g in GOOD[1:]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    kept, rejected, rows_in = _run_file(path)
    assert rows_in == len(lines)
    assert kept["source_id"].to_list() == [g["id"] for g in GOOD]
    got = {r["reason"]: r for r in rejected.iter_rows(named=True)}
    assert set(got) == set(BAD_LINES)
    for line_no, (reason, raw) in enumerate(BAD_LINES.items(), start=2):
        row = got[reason]
        evidence = json.loads(row["evidence"])
        assert row["src_line"] == line_no == evidence["line"]
        assert evidence["file"] == "mixed.jsonl"  # relative to the input root, never an absolute local path
        assert row["raw"] == raw.decode("utf-8", "replace")
    assert json.loads(got["ingest.text.not_string"]["evidence"])["field"] == "text"
    assert "JSON number" in json.loads(got["ingest.text.not_string"]["evidence"])["detail"]
    assert json.loads(got["ingest.timestamp.invalid"]["evidence"])["field"] == "timestamp"
    assert got["ingest.text.missing"]["source_id"] == "c"


def test_oversize_record_is_rejected_without_parsing(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(orjson.dumps({"id": "big", "text": "x" * 5000}) + b"\n" + orjson.dumps(GOOD[0]) + b"\n")
    kept, rejected, _ = _run_file(path, IngestConfig(max_record_bytes=1000, evidence_chars=100))
    assert kept.height == 1
    (row,) = rejected.iter_rows(named=True)
    assert row["reason"] == "ingest.record.oversize"
    assert len(row["raw"]) == 100
    assert "over max_record_bytes=1000" in json.loads(row["evidence"])["detail"]


def test_truncated_gzip_keeps_every_line_before_the_cut(tmp_path):
    body = b"\n".join(orjson.dumps({"id": i, "text": f"line {i} " * 20}) for i in range(2000)) + b"\n"
    data = gzip.compress(body)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    kept, rejected, _ = _run_file(path)
    assert 0 < kept.height < 2000
    assert kept["source_id"].to_list() == [str(i) for i in range(kept.height)]
    reasons = rejected["reason"].to_list()
    assert reasons[-1] == "ingest.read.truncated"
    assert rejected["src_line"].to_list()[-1] == kept.height + 1 + (len(reasons) - 1)


def test_not_gzip_behind_gz_name_and_empty_files(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_bytes(b'{"text": "plain text, not gzip"}\n')
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "empty-inside.jsonl.gz").write_bytes(gzip.compress(b""))
    for name, reason in [("fake.jsonl.gz", "ingest.read.unreadable"), ("empty.jsonl", "ingest.read.empty_file"),
                         ("empty-inside.jsonl.gz", "ingest.read.empty_file")]:
        kept, rejected, rows_in = _run_file(tmp_path / name)
        assert kept.height == 0 and rows_in == 1, name
        assert rejected["reason"].to_list() == [reason], name


def test_zstd_blank_lines_crlf_and_concatenated_members(tmp_path):
    body = b'{"text": "one"}\r\n\r\n\n{"text": "two"}\r\n'
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(body))
    kept, rejected, rows_in = _run_file(path)
    assert kept["text"].to_list() == ["one", "two"]
    assert kept["src_line"].to_list() == [1, 4]
    assert rows_in == 2 and rejected.height == 0
    multi = tmp_path / "multi.jsonl.gz"
    multi.write_bytes(gzip.compress(b'{"text": "a"}\n') + gzip.compress(b'{"text": "b"}\n'))
    kept, _, _ = _run_file(multi)
    assert kept["text"].to_list() == ["a", "b"]


def test_canonical_record_nfc_hash_ids_meta_and_timestamps(tmp_path):
    decomposed = "Cafe\u0301 au lait"
    rows = [
        {"id": 7, "text": decomposed, "timestamp": "2024-03-01T12:00:00+02:00", "lang": "fr", "label": 3},
        {"id": "x", "text": "second", "timestamp": 1700000000, "url": "https://a.test"},
        {"id": "y", "text": "third", "timestamp": "2020-01-02"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    kept, rejected, _ = _run_file(path)
    assert rejected.height == 0
    first = kept.row(0, named=True)
    assert first["text"] == unicodedata.normalize("NFC", decomposed) != decomposed
    assert first["content_sha256"] == hashlib.sha256(decomposed.encode()).hexdigest()  # raw text, before NFC
    assert first["source_id"] == "7" and first["label"] == "3"
    assert json.loads(first["meta"]) == {"lang": "fr"}
    assert str(first["timestamp"]) == "2024-03-01 10:00:00+00:00"
    assert str(kept["timestamp"][1]) == "2023-11-14 22:13:20+00:00"
    assert kept["url"].to_list() == [None, "https://a.test", None]
    assert kept["source"].unique().to_list() == [path.name]
    expected_id = hashlib.sha256(f"{path.name}\n1".encode()).hexdigest()[:32]
    assert first["id"] == expected_id
    assert kept["id"].n_unique() == 3


def test_id_from_field_requires_the_field(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\n{"text": "no id"}\n')
    kept, rejected, _ = _run_file(path, IngestConfig(id_from="field"))
    assert kept["id"].to_list() == ["a"]
    assert rejected["reason"].to_list() == ["ingest.id.missing"]


def test_field_mapping(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(orjson.dumps({"key": "k1", "content": "hello", "site": "wiki", "when": "2021-05-05"}))
    cfg = IngestConfig(text_field="content", id_field="key", source_field="site", timestamp_field="when")
    kept, rejected, _ = _run_file(path, cfg)
    row = kept.row(0, named=True)
    assert (row["text"], row["source_id"], row["source"]) == ("hello", "k1", "wiki")
    assert str(row["timestamp"]) == "2021-05-05 00:00:00+00:00"
    assert json.loads(row["meta"]) == {}


def test_parquet_input_and_mistyped_text_column(tmp_path):
    good = pl.DataFrame({"id": ["a", "b", "c"], "text": ["one", None, "three"], "score": [1.5, 2.0, 3.0]})
    good.write_parquet(tmp_path / "good.parquet")
    kept, rejected, rows_in = _run_file(tmp_path / "good.parquet", IngestConfig(shard_rows=2))
    assert rows_in == 3
    assert kept["text"].to_list() == ["one", "three"]
    assert kept["src_line"].to_list() == [1, 3]
    assert [json.loads(m) for m in kept["meta"]] == [{"score": 1.5}, {"score": 3.0}]
    assert rejected["reason"].to_list() == ["ingest.text.missing"]
    assert json.loads(rejected["raw"][0]) == {"id": "b", "text": None, "score": 2.0}

    pl.DataFrame({"text": [1, 2]}).write_parquet(tmp_path / "ints.parquet")
    kept, rejected, _ = _run_file(tmp_path / "ints.parquet")
    assert kept.height == 0 and set(rejected["reason"]) == {"ingest.text.not_string"}

    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    _, rejected, _ = _run_file(tmp_path / "corrupt.parquet")
    assert rejected["reason"].to_list() == ["ingest.read.unreadable"]


def test_csv_input_with_a_broken_row(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b'id,text\n1,"hello, world"\n2,too,many,columns\n3,bye\n'))
    kept, rejected, rows_in = _run_file(path)
    assert rows_in == 3
    assert kept["text"].to_list() == ["hello, world", "bye"]
    assert kept["src_line"].to_list() == [2, 4]  # physical lines: the broken row is line 3
    assert rejected["reason"].to_list() == ["ingest.csv.invalid_row"]
    assert json.loads(rejected["evidence"][0])["line"] == 3
    assert rejected["raw"][0] == "2,too,many,columns"


def test_resolve_inputs_sorted_and_missing_is_an_error(tmp_path):
    for name in ("b.jsonl", "a.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files = resolve_inputs([str(tmp_path)])
    # every file a folder holds is listed; notes.txt gets an ingest.read.unsupported row from its reader
    assert [Path(f.uri).name for f in files] == ["a.jsonl.gz", "b.jsonl", "notes.txt"]
    assert [f.name for f in files] == ["a.jsonl.gz", "b.jsonl", "notes.txt"]  # what records call their file
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_bytes(b"")
    nested = resolve_inputs([str(tmp_path / "sub" / "c.jsonl"), str(tmp_path / "*.jsonl")])
    assert [f.name for f in nested] == ["b.jsonl", "sub/c.jsonl"]
    assert len(resolve_inputs([str(tmp_path / "*.jsonl*"), str(tmp_path / "b.jsonl")])) == 2
    with pytest.raises(InputError, match="nothing-here"):
        resolve_inputs([str(tmp_path / "nothing-here/*.jsonl")])


def test_chunks_bound_memory(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"text": f"row {i}"}) + b"\n" for i in range(10_000)))
    (file,) = resolve_inputs([str(path)])
    sizes = [b.height for b in read_batches(file, "jsonl", None, IngestConfig(shard_rows=3000))]
    assert sizes == [3000, 3000, 3000, 1000]


def test_judge_ingest_alone():
    lines = ['{"text": "a fine record"}', '{"text": 5}', '{"text": "cut', '{"text": "  "}', '{"body": "x"}']
    assert judge("ingest", *lines) == [None, "ingest.text.not_string", "ingest.json.invalid", "ingest.text.empty",
                                       "ingest.text.missing"]
