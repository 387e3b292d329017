"""Streaming readers: input files -> bounded batches of raw rows for the ingest stage.

Readers never raise on bad content. A stream that breaks (truncated or damaged compression, a corrupt Parquet
footer or row group, an empty file, a decompression bomb, an unsupported format) becomes a row with
`read_error_code` set, so ingest quarantines it with file and line and the run goes on; every record before the
damage, and every record after it that can be located, is still read. Each row says which physical lines (Parquet:
rows) it covers, and `FileRead.audit` compares those with what the file holds (tasks/io/readers/audit.py).

Rooms: files.py (what an --input names, formats, opening), decode.py (bounded decompression), frames.py (the row
shape, shard-sized frames), jsonl.py, delimited.py (CSV), parquet.py, warc.py (WARC/WET/ARC), html.py
(saved pages), text.py (a page's bytes to text: charsets).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import polars as pl

from tasks.io.readers.audit import Audit
from tasks.io.readers.delimited import read_csv
from tasks.io.readers.files import (
    InputError,
    InputFile,
    Skipped,
    detect_format,
    input_root,
    open_input,
    resolve_inputs,
)
from tasks.io.readers.frames import RAW_SCHEMA, READER_COLUMNS, error_frame
from tasks.io.readers.html import read_html
from tasks.io.readers.jsonl import read_jsonl
from tasks.io.readers.parquet import read_parquet
from tasks.io.readers.warc import read_warc

__all__ = ["RAW_SCHEMA", "READER_COLUMNS", "Audit", "FileRead", "InputError", "InputFile", "Skipped",
           "detect_format", "error_frame", "input_root", "open_input", "read_batches", "resolve_inputs"]


class FileRead:
    """The batches of one file; once they have all been taken, `audit` says whether every line is accounted for.
    The lines covered are summed here, from the rows as they leave, not by the reader that made them."""

    def __init__(self, file: InputFile, batches: Iterator[pl.DataFrame], audit: Audit):
        self.file, self.audit = file, audit
        self._batches = batches

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for batch in self._batches:
            self.audit.covered += int(batch["src_lines"].sum() or 0)
            yield batch


def read_batches(file: InputFile, fmt: str, compression: str | None, params, s3_options: dict | None = None,
                 content: bytes | None = None) -> FileRead:
    """Batches of raw rows of one file; `params` is the ingest config (sizes and limits). `content`: the file's
    bytes when they were already fetched (small remote files are fetched many at a time)."""
    audit = Audit()
    if fmt == "jsonl":
        batches = read_jsonl(file, compression, params, s3_options, audit, content)
    elif fmt == "parquet":
        batches = read_parquet(file, params, s3_options, audit, content)
    elif fmt == "csv":
        batches = read_csv(file, compression, params, s3_options, audit, content)
    elif fmt == "warc":
        batches = read_warc(file, params, s3_options, audit, content)
    elif fmt == "html":
        batches = read_html(file, compression, params, s3_options, audit, content)
    else:
        ext = os.path.basename(file.uri)
        batches = iter([error_frame(file.name, 0, "ingest.read.unsupported",
                                    f"no reader for {ext!r}: Sluice reads .jsonl/.json/.ndjson, .csv, .parquet, "
                                    "WARC/WET/ARC (.warc, .arc, .wet; .gz per record) and .html/.htm pages, "
                                    "optionally .gz, .zst, .bz2 or .xz compressed (set ingest.format to force one)")])
    return FileRead(file, batches, audit)
