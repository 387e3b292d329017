"""A web page saved as a file (.html, .htm, optionally compressed): one row, the page decoded to text with the
charset it declares (tasks/io/readers/text.py); a page over `max_record_bytes` is quarantined, never cut."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from tasks.io import interrupt
from tasks.io.readers.audit import Audit
from tasks.io.readers.decode import read_error
from tasks.io.readers.files import InputFile, open_input
from tasks.io.readers.frames import error_frame
from tasks.io.readers.text import decoded

COLUMNS = {"src_file": pl.String, "src_line": pl.Int64, "src_lines": pl.Int64, "text": pl.String,
           "content_type": pl.String, "charset": pl.String}


def read_html(file: InputFile, compression: str | None, params, s3_options: dict | None, audit: Audit,
              content: bytes | None = None) -> Iterator[pl.DataFrame]:
    audit.unit = "files"
    audit.read = 1
    if file.size == 0:
        yield error_frame(file.name, 1, "ingest.read.empty_file", "file is empty (0 bytes)", lines=1)
        return
    try:
        with open_input(file, compression, s3_options, content) as fh:
            payload = fh.read(params.max_record_bytes + 1)
    except interrupt.Interrupted:
        raise
    except Exception as exc:  # damaged compression, storage failing after retries
        yield error_frame(file.name, 1, *read_error(exc), lines=1)
        return
    if len(payload) > params.max_record_bytes:
        yield error_frame(file.name, 1, "ingest.record.oversize",
                          f"page is over max_record_bytes={params.max_record_bytes:,} (not read past that; the "
                          "evidence is its start)", payload[:params.evidence_chars], lines=1)
        return
    text, charset = decoded(payload, None)
    yield pl.DataFrame({"src_file": [file.name], "src_line": [1], "src_lines": [1], "text": [text],
                        "content_type": ["text/html"], "charset": [charset]}, schema=COLUMNS)
