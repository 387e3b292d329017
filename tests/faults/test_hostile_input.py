"""Hostile input: decompression bombs stay within a memory ceiling, no file of a folder is skipped in silence, and
damaged or odd files keep every good record. Each case failed on the main before issue 10."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import IngestConfig
from tasks.io.readers import Skipped, detect_format, read_batches, resolve_inputs
from tasks.stages.ingest import ingest

CEILING_MB = 1024  # peak RSS allowed for the process reading a bomb


def _gzip_of(path: Path, chunk: bytes, total: int) -> None:
    """`total` bytes made of `chunk`, gzipped without holding them in memory."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        for _ in range(total // len(chunk)):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())


READ_AND_MEASURE = """
import json, sys
from schemas.config import IngestConfig
from tasks.io.readers import detect_format, read_batches, resolve_inputs
from tasks.stages.ingest import ingest
cfg = IngestConfig(shard_rows=int(sys.argv[2]))
(file,) = resolve_inputs([sys.argv[1]])
fmt, comp = detect_format(file.uri)
batches, reasons, kept = 0, [], 0
for batch in read_batches(file, fmt, comp, cfg):
    batches += 1
    res = ingest(batch, cfg)
    kept += res.kept.height
    reasons += res.rejected["reason"].to_list()
# VmHWM, not ru_maxrss: Linux carries a parent's peak into ru_maxrss across exec, so a child of a large pytest
# process would report the parent's peak
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"batches": batches, "kept": kept, "reasons": reasons, "peak_mb": peak_kb / 1024}))
"""


def _read_in_child(path: Path, shard_rows: int = 50_000) -> dict:
    done = subprocess.run([sys.executable, "-c", READ_AND_MEASURE, str(path), str(shard_rows)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("what", "chunk", "total"), [
    ("256 MB of zeros", b"\0" * (1 << 20), 256 << 20),
    ("1 GB of zeros", b"\0" * (1 << 20), 1 << 30),
    ("128 MB of newlines", b"\n" * (1 << 20), 128 << 20),
])
def test_decompression_bombs_are_quarantined_within_a_memory_ceiling(tmp_path, what, chunk, total):
    path = tmp_path / "bomb.jsonl.gz"
    _gzip_of(path, chunk, total)
    got = _read_in_child(path)
    assert "ingest.read.too_large" in got["reasons"], got
    assert got["kept"] == 0 and got["batches"] == 1  # one batch: the quarantine rows; never an empty shard
    assert got["peak_mb"] < CEILING_MB, f"{what}: peak RSS {got['peak_mb']:.0f} MB"


def test_a_giant_line_is_never_assembled(tmp_path):
    """A 300 MB line without a newline (uncompressed, so no ratio to catch it): one oversize row, bounded memory,
    and the records after it are read."""
    path = tmp_path / "long.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"text": "first"}\n{"text": "')
        for _ in range(300):
            fh.write(b"x" * (1 << 20))
        fh.write(b'"}\n{"text": "after"}\n')
    got = _read_in_child(path)
    assert got["reasons"] == ["ingest.record.oversize"] and got["kept"] == 2
    assert got["peak_mb"] < CEILING_MB


def _ingest_file(path: Path, cfg: IngestConfig | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    cfg = cfg or IngestConfig()
    kept, rejected = [], []
    for file in resolve_inputs([str(path)]):
        for batch in read_batches(file, *detect_format(file.uri, cfg.format), cfg):
            res = ingest(batch, cfg)
            kept.append(res.kept)
            rejected.append(res.rejected)
    return pl.concat(kept, how="diagonal_relaxed"), pl.concat(rejected, how="diagonal_relaxed")


def test_every_file_of_a_folder_is_read_or_quarantined_by_name(tmp_path):
    lines = b"".join(orjson.dumps({"text": f"record {i}"}) + b"\n" for i in range(15))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "n_plain.jsonl").write_bytes(lines)
    (folder / "o_UPPER.JSONL").write_bytes(lines)
    (folder / "p_data.jsonl.bz2").write_bytes(bz2.compress(lines))
    (folder / "p_data.jsonl.xz").write_bytes(lzma.compress(lines))
    (folder / "q_data.txt").write_bytes(lines)
    (folder / ".DS_Store").write_bytes(b"\0\0")
    skipped = Skipped()
    files = resolve_inputs([str(folder)], skipped=skipped)
    assert [f.name for f in files] == ["n_plain.jsonl", "o_UPPER.JSONL", "p_data.jsonl.bz2", "p_data.jsonl.xz",
                                       "q_data.txt"]
    assert skipped.files == [(str(folder / ".DS_Store"), "hidden or marker file")]
    kept, rejected = _ingest_file(folder)
    assert kept.group_by("src_file").len().sort("src_file").rows() == [
        ("n_plain.jsonl", 15), ("o_UPPER.JSONL", 15), ("p_data.jsonl.bz2", 15), ("p_data.jsonl.xz", 15)]
    assert rejected.select("src_file", "reason").rows() == [("q_data.txt", "ingest.read.unsupported")]
    assert "'q_data.txt'" in json.loads(rejected["evidence"][0])["detail"]


def test_an_existing_literal_path_wins_over_a_glob(tmp_path):
    (tmp_path / "x[1].jsonl").write_bytes(b'{"text": "the bracketed file"}\n')
    (tmp_path / "x1.jsonl").write_bytes(b'{"text": "the glob match"}\n')
    (file,) = resolve_inputs([str(tmp_path / "x[1].jsonl")])
    assert file.name == "x[1].jsonl"
    kept, _ = _ingest_file(tmp_path / "x[1].jsonl")
    assert kept["text"].to_list() == ["the bracketed file"]


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    kept, rejected = _ingest_file(path)
    assert kept["text"].to_list() == ["first", "second"] and rejected.height == 0
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b'\xef\xbb\xbftext,id\nfirst,1\n')
    kept, rejected = _ingest_file(csv)
    assert kept["text"].to_list() == ["first"] and rejected.height == 0


def test_a_dictionary_encoded_parquet_text_column_is_text(tmp_path):
    table = pa.table({"text": pa.array(["alpha", "beta", "alpha"]).dictionary_encode(), "id": ["1", "2", "3"]})
    pq.write_table(table, tmp_path / "dict.parquet")
    kept, rejected = _ingest_file(tmp_path / "dict.parquet")
    assert kept["text"].to_list() == ["alpha", "beta", "alpha"] and rejected.height == 0


def test_csv_rows_carry_their_physical_line(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'id,text\n1,"a value\nover three\nlines"\n2,too,many\n3,"quoted, with ""quotes"""\n4,last\n')
    kept, rejected = _ingest_file(path)
    assert kept.select("source_id", "src_line").rows() == [("1", 2), ("3", 6), ("4", 7)]
    assert kept["text"][0] == "a value\nover three\nlines" and kept["text"][1] == 'quoted, with "quotes"'
    evidence = json.loads(rejected["evidence"][0])
    assert rejected["reason"][0] == "ingest.csv.invalid_row" and evidence["line"] == 5 and "3 fields" in \
        evidence["detail"]


def test_a_gzip_damaged_mid_file_keeps_every_line_before_the_damage(tmp_path):
    lines = [orjson.dumps({"text": f"record number {i} " + "pad " * 20}) for i in range(20_000)]
    data = bytearray(gzip.compress(b"\n".join(lines) + b"\n"))
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64  # damage, not truncation
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(data))
    kept, rejected = _ingest_file(path)
    # deflate decodes damage into garbage until a code or the CRC fails (README: what is kept of a damaged file):
    # the failure is the last row, and every line before the damage is kept, in order
    assert rejected["reason"][-1] == "ingest.read.unreadable"
    originals = [orjson.loads(line)["text"] for line in lines]
    intact = kept.filter(pl.col("src_line") <= len(lines))
    assert intact.height >= 9_000  # the damage sits in the middle of the compressed bytes
    assert intact["text"].to_list()[:9_000] == originals[:9_000]
