"""JSONL: decoded blocks cut into raw lines (parsed later, by the ingest stage). A line longer than
`max_record_bytes` is never assembled: its first `evidence_chars` bytes are kept as evidence while the rest is
skipped. Blank lines are no record (counted as skipped). A stream that breaks ends with one error row."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from tasks.io.readers.audit import Audit
from tasks.io.readers.decode import Budget, parsed
from tasks.io.readers.files import InputFile, open_input
from tasks.io.readers.frames import Rechunker, error_frame, lines_frame


class _Lines:
    """Cuts decoded blocks into numbered lines, never holding a line past `max_record_bytes`."""

    def __init__(self, name: str, params, audit: Audit):
        self.name, self.params, self.audit = name, params, audit
        self.line = 1  # number of the next line to start
        self.carry = b""  # the partial line at the end of the last block
        self.skipping: tuple[int, bytes] | None = None  # (line, evidence) of an oversize line being skipped

    def feed(self, block: bytes) -> Iterator[pl.DataFrame]:
        if self.skipping is not None:
            nl = block.find(b"\n")
            if nl < 0:
                return
            yield self._oversize()
            block = block[nl + 1:]
        if block.startswith(b"\xef\xbb\xbf") and self.line == 1 and not self.carry:
            block = block[3:]  # a UTF-8 byte order mark is not part of the first record
        parts = (self.carry + block).split(b"\n")
        self.carry = parts.pop()
        if parts:
            frame, blank = lines_frame(self.name, parts, self.line)
            self.audit.skipped += blank
            self.line += len(parts)
            yield frame
        if len(self.carry) > self.params.max_record_bytes:
            self.skipping = (self.line, self.carry[: self.params.evidence_chars])
            self.carry = b""

    def _oversize(self) -> pl.DataFrame:
        line, evidence = self.skipping
        self.skipping = None
        self.line += 1
        return error_frame(self.name, line, "ingest.record.oversize",
                           f"record is over max_record_bytes={self.params.max_record_bytes:,} (not read past that; "
                           "the evidence is its start)", evidence, lines=1)

    def finish(self, error: tuple[str, str] | None) -> Iterator[pl.DataFrame]:
        if self.skipping is not None:
            yield self._oversize()
        if self.carry and error is None:
            frame, blank = lines_frame(self.name, [self.carry], self.line)
            self.audit.skipped += blank
            self.carry = b""
            self.line += 1
            yield frame
        if error is not None:  # the partial last line of a broken stream is not a record; it is evidence
            yield error_frame(self.name, self.line, *error, raw=self.carry[: self.params.evidence_chars] or None,
                              lines=1 if self.carry else 0)


def read_jsonl(file: InputFile, compression: str | None, params, s3_options: dict | None, audit: Audit,
              content: bytes | None = None) -> Iterator[pl.DataFrame]:
    """Frames of at most `shard_rows` raw lines; a broken stream ends with one error row."""
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    lines, chunks = _Lines(file.name, params, audit), Rechunker(params.shard_rows)
    budget = Budget(params.max_file_bytes, params.max_compression_ratio)
    for frame in parsed(lambda: open_input(file, None, s3_options, content), compression, budget, audit, lines):
        yield from chunks.add(frame)
    yield from chunks.rest()
    if not chunks.produced:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file has no records after decompression")
