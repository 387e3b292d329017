"""WARC, WET and ARC: one row per document record (an HTTP response, a WET text conversion, a resource), with its
URL, WARC-Date, content type, record id and payload decoded to text; every other record accounted for.

warcio parses the records (it reads ARC too, converting it to WARC, and undoes per-record gzip, chunked transfer
and content encoding); records stream one at a time and a payload is never read past `max_record_bytes`.
A record ends as exactly one of: a row; a quarantine row (`ingest.warc.not_html`: a response whose content is not
HTML or text, `ingest.warc.http_status`: not a 2xx answer, `ingest.warc.truncated`: the crawler cut it,
`ingest.record.oversize`, `ingest.warc.malformed`: bytes that are no record, with the byte offset they start at);
or a skipped record (warcinfo, request, metadata, revisit: no document), counted by the audit. After damage the
reader looks for the next record (a gzip member or a `WARC/` line) and goes on from there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import polars as pl

from tasks.io import interrupt
from tasks.io.readers.audit import Audit
from tasks.io.readers.decode import read_error
from tasks.io.readers.files import InputFile, open_input
from tasks.io.readers.frames import Rechunker, error_frame
from tasks.io.readers.text import decoded

DOCUMENT_TYPES = {"response", "resource", "conversion"}
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
COLUMNS = {"src_file": pl.String, "src_line": pl.Int64, "src_lines": pl.Int64, "text": pl.String, "url": pl.String,
           "timestamp": pl.String, "content_type": pl.String, "charset": pl.String, "warc_record_id": pl.String,
           "warc_type": pl.String, "warc_offset": pl.Int64}
_GZIP_MEMBER = re.compile(rb"\x1f\x8b\x08")
_RECORD_LINE = re.compile(rb"(?:^|\n)(WARC/1\.[01]\r?\n|filedesc://|https?://\S+ \d+\.\d+\.\d+\.\d+ \d{14} )")
RESYNC_BYTES = 1 << 20  # read at a time while looking for the next record after damage


def _mime(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _charset(value: str | None) -> str | None:
    match = re.search(r"charset=[\"']?([\w.:-]+)", value or "", re.I)
    return match.group(1).lower() if match else None


class _Rows:
    """A file's document rows, gathered into frames (up to 1,000 at a time)."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        self.rows.append({"src_file": self.name, "src_lines": 1, **row})

    def frame(self) -> pl.DataFrame:
        out = pl.DataFrame(self.rows, schema=COLUMNS) if self.rows else pl.DataFrame(schema=COLUMNS)
        self.rows = []
        return out


def _quarantine(name: str, number: int, offset: int, code: str, message: str, evidence: bytes | None
                ) -> pl.DataFrame:
    return error_frame(name, number, code, f"byte {offset:,}: {message}", evidence, lines=1)


def _next_record(fh, after: int, gzipped: bool) -> int | None:
    """The offset of the next place a record can start after `after`, or None at the end of the file."""
    pattern = _GZIP_MEMBER if gzipped else _RECORD_LINE
    position = after + 1
    while True:
        fh.seek(position)
        block = fh.read(RESYNC_BYTES)
        if not block:
            return None
        match = pattern.search(block)
        if match:
            return position + match.start(1 if match.lastindex else 0)
        if len(block) < RESYNC_BYTES:
            return None
        position += len(block) - 64  # a marker cut by the block boundary is found in the next one


def read_warc(file: InputFile, params, s3_options: dict | None, audit: Audit, content: bytes | None = None
              ) -> Iterator[pl.DataFrame]:
    """Frames of at most `shard_rows` rows (document records and quarantine rows)."""
    from warcio.archiveiterator import ArchiveIterator

    audit.unit = "records"
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    chunks, rows = Rechunker(params.shard_rows), _Rows(file.name)
    number = 0  # records seen, numbered from 1: a row's src_line
    try:
        with open_input(file, None, s3_options, content) as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            base: int | None = 0
            while base is not None:
                fh.seek(base)
                it = ArchiveIterator(fh, arc2warc=True)
                try:
                    for record in it:
                        interrupt.check()
                        number += 1
                        audit.read += 1
                        if record.rec_type not in DOCUMENT_TYPES:
                            audit.skipped += 1
                            continue
                        rejected = _document(record, it.offset, number, file.name, rows, params)
                        if rejected is not None or len(rows.rows) >= 1_000:
                            yield from chunks.add(rows.frame())
                        if rejected is not None:
                            yield from chunks.add(rejected)
                    base = None
                except interrupt.Interrupted:
                    raise
                except Exception as exc:  # bytes that are no record: quarantined, and reading goes on after them
                    damaged = it.offset  # warcio counts from where the file stood: absolute
                    fh.seek(damaged)
                    number += 1
                    audit.read += 1
                    yield from chunks.add(rows.frame())
                    yield from chunks.add(_quarantine(
                        file.name, number, damaged, "ingest.warc.malformed",
                        f"no WARC/ARC record here ({type(exc).__name__}: {str(exc)[:200]}); reading goes on at the "
                        "next record", fh.read(params.evidence_chars)))
                    base = _next_record(fh, damaged, gzipped)
    except interrupt.Interrupted:
        raise
    except Exception as exc:  # the file cannot be opened or read any more (storage failing after retries)
        yield from chunks.add(rows.frame())
        yield from chunks.add(error_frame(file.name, number + 1, *read_error(exc), lines=0))
    yield from chunks.add(rows.frame())
    yield from chunks.rest()
    if not chunks.produced:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file holds no WARC/ARC record")


def _document(record, offset: int, number: int, name: str, rows: _Rows, params) -> pl.DataFrame | None:
    """Adds a document record to `rows`, or returns its quarantine row."""
    kind, headers, http = record.rec_type, record.rec_headers, record.http_headers
    url = headers.get_header("WARC-Target-URI")
    content_type = http.get_header("Content-Type") if http is not None else headers.get_header("Content-Type")
    status = http.get_statuscode() if http is not None and kind == "response" else None
    where = f"{kind} record {headers.get_header('WARC-Record-ID') or '(no id)'} for {url or '(no URL)'}"
    if status is not None and not str(status).startswith("2"):
        return _quarantine(name, number, offset, "ingest.warc.http_status",
                           f"{where}: HTTP status {status}, not a 2xx answer",
                           str(http).encode()[:params.evidence_chars])
    mime = _mime(content_type)
    if mime and mime not in TEXT_TYPES:
        return _quarantine(name, number, offset, "ingest.warc.not_html",
                           f"{where}: content type {mime!r} is not HTML or text", None)
    payload = record.content_stream().read(params.max_record_bytes + 1)
    if len(payload) > params.max_record_bytes:
        return _quarantine(name, number, offset, "ingest.record.oversize",
                           f"{where}: payload over max_record_bytes={params.max_record_bytes:,} (not read past "
                           "that; the evidence is its start)", payload[:params.evidence_chars])
    cut = headers.get_header("WARC-Truncated")
    missing = getattr(record.raw_stream, "limit", 0) or 0
    if cut or missing:
        why = f"WARC-Truncated: {cut} (the crawler cut it)" if cut else f"the file ends {missing:,} bytes early"
        return _quarantine(name, number, offset, "ingest.warc.truncated", f"{where}: {why}",
                           payload[:params.evidence_chars] or None)
    text, charset = decoded(payload, _charset(content_type))
    rows.add(src_line=number, text=text, url=url, timestamp=headers.get_header("WARC-Date"),
             content_type=mime or None, charset=charset, warc_record_id=headers.get_header("WARC-Record-ID"),
             warc_type=kind, warc_offset=offset)
    return None
