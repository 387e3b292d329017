"""CSV: quote-aware records with their physical lines, every record ending in a row or a quarantine row.

Two paths over each decoded block (plus the partial record carried from the block before):
- fast, vectorized: records split at newlines outside quotes (quote parity by a cumulative count), every quote
  checked against the CSV grammar (a quote opens only at the start of a field and closes only before a delimiter,
  a line end or its doubled twin), a bare CR outside quotes refused; the well-formed records are parsed by pyarrow,
  all columns as strings;
- careful, from the first record the grammar check refused to the end of the block: Python's C `csv` reader in
  strict mode, one physical line at a time. A record that does not parse (a stray quote, a quote that never
  closes, a field over `max_record_bytes`) becomes one quarantine row for its first line, and reading resumes at
  the next line, the next plausible record start. The next block starts on the fast path again.

So a stray quote costs its own line, never the rest of the file: the parity split alone (the reader before issue 24)
read `2,"never closed` as the start of one record running to the end of the file, and lost it silently.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from tasks.io import interrupt
from tasks.io.readers.audit import Audit
from tasks.io.readers.decode import Budget, parsed
from tasks.io.readers.files import InputFile, open_input
from tasks.io.readers.frames import RAW_SCHEMA, Rechunker, error_frame

QUOTE, NL, CR = ord('"'), ord("\n"), ord("\r")


@dataclass
class _Split:
    """The complete records of `data` by quote parity: spans (end exclusive, without the newline), physical first
    line and line count, field count; `tail` is where the incomplete rest begins; `first_bad` the index of the first
    record (len(starts) = the tail) the grammar check refused, or None."""

    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    spans: np.ndarray
    fields: np.ndarray
    tail: int
    first_bad: int | None


def _split(data: bytes, first_line: int, delimiter: int) -> _Split:
    arr = np.frombuffer(data, dtype=np.uint8)
    is_quote = arr == QUOTE
    inside = (np.cumsum(is_quote) & 1).astype(bool)  # after each byte: inside a quoted value?
    newline = arr == NL
    ends = np.flatnonzero(newline & ~inside)
    starts = np.r_[0, ends[:-1] + 1].astype(np.int64) if ends.size else np.empty(0, np.int64)
    lines_upto = np.cumsum(newline)  # newlines at or before each byte
    before = np.where(starts > 0, lines_upto[np.maximum(starts - 1, 0)], 0) if ends.size else starts
    lines = first_line + before
    spans = lines_upto[ends] - before if ends.size else starts  # a record's newlines, its own included
    delims = np.flatnonzero((arr == delimiter) & ~inside)
    fields = np.searchsorted(delims, ends) - np.searchsorted(delims, starts) + 1
    tail = int(ends[-1]) + 1 if ends.size else 0
    # the grammar: the k-th quote opens a value when k is even, closes it when k is odd
    q = np.flatnonzero(is_quote)
    opening = (np.arange(q.size) & 1) == 0
    prev = arr[np.maximum(q - 1, 0)]
    nxt = arr[np.minimum(q + 1, arr.size - 1)]
    ok_open = (q == 0) | (prev == delimiter) | (prev == NL) | (prev == QUOTE)
    ok_close = (q == arr.size - 1) | (nxt == delimiter) | (nxt == NL) | (nxt == CR) | (nxt == QUOTE)
    bad = q[np.where(opening, ~ok_open, ~ok_close)]
    cr = np.flatnonzero((arr == CR) & ~inside)
    bad_cr = cr[(cr + 1 < arr.size) & (arr[np.minimum(cr + 1, arr.size - 1)] != NL)]
    first = min((int(x.min()) for x in (bad, bad_cr) if x.size), default=None)
    first_bad = None if first is None else int(np.searchsorted(ends, first)) if ends.size else 0
    return _Split(starts, ends, lines, spans, fields, tail, first_bad)


def _utf8_invalid(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which records hold bytes that are not UTF-8. One decode of the whole span in the usual case; only a block
    that fails is checked record by record."""
    bad = np.zeros(starts.size, dtype=bool)
    if not starts.size:
        return bad
    try:
        data[starts[0]:ends[-1]].decode("utf-8")
        return bad
    except UnicodeDecodeError:
        pass
    for i in range(starts.size):
        try:
            data[starts[i]:ends[i]].decode("utf-8")
        except UnicodeDecodeError:
            bad[i] = True
    return bad


def _utf8(row: list[str]) -> bool:
    """Fields decoded with surrogateescape hold lone surrogates exactly where the bytes were not UTF-8."""
    try:
        "\x1f".join(row).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Feed:
    """Physical lines from `start` on to Python's csv reader, counting how many it has taken."""

    def __init__(self, lines: list[str], start: int = 0):
        self.lines, self.start, self.taken = lines, start, 0
        self.available = len(lines) - start

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.taken >= self.available:
            raise StopIteration
        self.taken += 1
        return self.lines[self.start + self.taken - 1]


class CsvParser:
    """Records of one CSV file, fed decoded blocks; yields raw frames (the header's columns as strings, plus the
    reader's columns) and error rows. Tracks the audit's skipped lines (the header, blank lines)."""

    def __init__(self, name: str, params, audit: Audit):
        self.name, self.params, self.audit = name, params, audit
        self.delimiter = params.csv_delimiter
        self.names: list[str] | None = None
        self.carry, self.line = b"", 1
        self.started = False
        self.header_failed, self.header_problem, self.header_raw = False, "", b""
        csv.field_size_limit(max(csv.field_size_limit(), params.max_record_bytes))

    # -- public

    def feed(self, block: bytes) -> Iterator[pl.DataFrame]:
        if not self.started:
            self.started = True
            block = block.removeprefix(b"\xef\xbb\xbf")
        yield from self._parse(self.carry + block, final=False)

    def finish(self, error: tuple[str, str] | None) -> Iterator[pl.DataFrame]:
        data, self.carry = self.carry, b""
        if error is None:
            yield from self._parse(data, final=True)
            return
        # a broken stream: its complete lines are still records; the partial last line is the evidence
        cut = data.rfind(b"\n") + 1
        yield from self._parse(data[:cut], final=True)
        partial = data[cut:]
        yield error_frame(self.name, self.line, *error, raw=partial[: self.params.evidence_chars] or None,
                          lines=1 if partial else 0)

    # -- the two paths

    def _parse(self, data: bytes, final: bool) -> Iterator[pl.DataFrame]:
        while data:
            interrupt.check()
            if self.names is None and not self.header_failed:
                data = self._header(data, final)
                if data is None:
                    return
                continue
            if self.header_failed:  # no record can be read without a header: one error row stands for them all
                self.carry = b""
                return
            split = _split(data, self.line, ord(self.delimiter))
            good_upto = split.first_bad if split.first_bad is not None else split.ends.size
            if good_upto:
                yield from self._fast(data, split, good_upto)
            if split.first_bad is None:
                rest = data[split.tail:]
                if final and rest:
                    yield from self._careful(rest, final=True)
                elif len(rest) > self.params.max_record_bytes:
                    # a record that has not closed after max_record_bytes: its first line goes, the rest is re-read
                    yield from self._give_up_first_line(rest, "ingest.csv.unclosed_quote",
                                                        f"a quoted value opened on this line runs past "
                                                        f"max_record_bytes={self.params.max_record_bytes:,} "
                                                        "without closing")
                    data = self.carry
                    self.carry = b""
                    continue
                else:
                    self.carry = rest
                return
            start = int(split.starts[split.first_bad]) if split.first_bad < split.ends.size else split.tail
            yield from self._careful(data[start:], final)
            return

    def _header(self, data: bytes, final: bool) -> bytes | None:
        """Parse the header record (blank lines before it skipped) with the careful reader; returns the data after
        it, or None to wait for more. A header that does not parse, is not UTF-8 or repeats a name fails the file:
        `read_csv` then writes one error row standing for every line."""
        lines = data.split(b"\n")
        complete = [ln + b"\n" for ln in lines[:-1]] + ([lines[-1]] if final and lines[-1] else [])
        feed = _Feed([ln.decode("utf-8", "surrogateescape") for ln in complete])
        reader = csv.reader(feed, delimiter=self.delimiter, strict=True)
        blank = 0
        try:
            names = next(reader)
            while not names:
                blank = feed.taken
                names = next(reader)
        except StopIteration:
            self.carry = b"" if final else data
            self.audit.skipped += blank if final else 0
            return None
        except csv.Error as exc:
            ran_out = feed.taken >= feed.available and "unexpected end of data" in str(exc)
            if ran_out and not final and len(data) <= self.params.max_record_bytes:
                self.carry = data
                return None
            return self._fail_header(f"the header does not parse as CSV: {exc}", complete, blank)
        used = feed.taken
        try:
            "\x1f".join(names).encode("utf-8")
        except UnicodeEncodeError:
            return self._fail_header("the header holds bytes that are not UTF-8", complete, blank)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            return self._fail_header(f"the header repeats column name(s) {dupes}", complete, blank)
        self.audit.skipped += used
        self.line += used
        self.names = names
        return b"".join(complete[used:]) + (b"" if final else lines[-1])

    def _fail_header(self, problem: str, lines: list[bytes], blank: int) -> bytes:
        self.header_failed = True
        self.header_problem = problem
        self.header_raw = (lines[blank] if blank < len(lines) else b"")[: self.params.evidence_chars]
        self.audit.skipped += blank
        return b""

    def _fast(self, data: bytes, split: _Split, upto: int) -> Iterator[pl.DataFrame]:
        starts, ends = split.starts[:upto], split.ends[:upto]
        lines, spans, fields = split.lines[:upto], split.spans[:upto], split.fields[:upto]
        size = ends - starts
        ends_in_cr = (size > 0) & (np.frombuffer(data, np.uint8)[np.maximum(ends - 1, 0)] == CR)
        blank = (size - ends_in_cr) <= 0
        oversize = size > self.params.max_record_bytes
        not_utf8 = _utf8_invalid(data, starts, ends) & ~blank & ~oversize
        good = ~blank & ~oversize & ~not_utf8 & (fields == len(self.names))
        self.audit.skipped += int(spans[blank].sum())
        self.line = int(lines[upto - 1] + spans[upto - 1])
        frames = []
        if good.any():
            frames.append(self._arrow(data, starts[good], ends[good], lines[good], spans[good]))
        bad = np.flatnonzero(~blank & ~good)
        if bad.size:
            detail = []
            codes = []
            for i in bad:
                if oversize[i]:
                    codes.append("ingest.record.oversize")
                    detail.append(f"record is {size[i]:,} bytes, over max_record_bytes="
                                  f"{self.params.max_record_bytes:,}")
                elif not_utf8[i]:
                    codes.append("ingest.utf8.invalid")
                    detail.append("record holds bytes that are not UTF-8")
                else:
                    codes.append("ingest.csv.invalid_row")
                    detail.append(f"row has {fields[i]} fields, the header has {len(self.names)}")
            frames.append(self._errors(data, starts[bad], ends[bad], lines[bad], spans[bad], codes, detail))
        if frames:
            yield pl.concat(frames, how="diagonal_relaxed").sort("src_line")

    def _arrow(self, data: bytes, starts, ends, lines, spans) -> pl.DataFrame:
        runs = np.split(np.arange(starts.size), np.flatnonzero(starts[1:] != ends[:-1] + 1) + 1)
        body = b"\n".join(data[starts[r[0]]:ends[r[-1]]] for r in runs)
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, len(body) + 1), column_names=self.names),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in self.names},
                                                 strings_can_be_null=False))
        if table.num_rows != starts.size:
            raise RuntimeError(f"pyarrow parsed {table.num_rows} rows from {starts.size} records")
        return pl.from_arrow(table).with_columns(src_file=pl.lit(self.name),
                                                 src_line=pl.Series(lines, dtype=pl.Int64),
                                                 src_lines=pl.Series(spans, dtype=pl.Int64))

    def _errors(self, data: bytes, starts, ends, lines, spans, codes: list[str], detail: list[str]) -> pl.DataFrame:
        cap = self.params.evidence_chars
        raw = [data[s:min(e, s + cap)] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        return pl.DataFrame({"src_file": [self.name] * len(raw), "src_line": lines.tolist(),
                             "src_lines": spans.tolist(), "raw": raw, "read_error_code": codes,
                             "read_error": detail}, schema=RAW_SCHEMA)

    def _careful(self, data: bytes, final: bool) -> Iterator[pl.DataFrame]:
        """Python's csv reader from a record start to the end of `data`, line by line; a record that fails costs
        its first line. Not final: a record still open at the end is carried to the next block."""
        raw_lines = data.split(b"\n")
        partial = raw_lines.pop()
        lines = [ln + b"\n" for ln in raw_lines] + ([partial] if final and partial else [])
        if not final:
            self.carry = partial
        texts = [ln.decode("utf-8", "surrogateescape") for ln in lines]
        rows: list[list[str]] = []
        row_lines: list[int] = []
        row_spans: list[int] = []
        errors: list[tuple[int, int, str, str]] = []  # (index of first line, lines, code, detail)
        i = 0
        columns = len(self.names)
        while i < len(texts):
            feed = _Feed(texts, i)
            reader = csv.reader(feed, delimiter=self.delimiter, strict=True)
            taken = 0
            try:
                for row in reader:
                    span = feed.taken - taken
                    if not row:  # a blank line
                        self.audit.skipped += span
                    elif len(row) != columns:
                        errors.append((i + taken, span, "ingest.csv.invalid_row",
                                       f"row has {len(row)} fields, the header has {columns}"))
                    elif sum(len(ln) for ln in lines[i + taken:i + feed.taken]) > self.params.max_record_bytes:
                        errors.append((i + taken, span, "ingest.record.oversize",
                                       f"record is over max_record_bytes={self.params.max_record_bytes:,}"))
                    elif not _utf8(row):
                        errors.append((i + taken, span, "ingest.utf8.invalid", "record holds bytes that are not "
                                       "UTF-8"))
                    else:
                        rows.append(row)
                        row_lines.append(i + taken)
                        row_spans.append(span)
                    taken = feed.taken
                i += taken
                break
            except csv.Error as exc:
                i += taken
                ran_out = feed.taken >= feed.available and "unexpected end of data" in str(exc)
                if ran_out and not final and sum(len(ln) for ln in lines[i:]) <= self.params.max_record_bytes:
                    self.carry = b"".join(lines[i:]) + self.carry  # may close in the next block
                    break
                code, detail = self._why(str(exc), ran_out, feed.taken - taken, first_line=self.line + i)
                errors.append((i, 1, code, detail))
                i += 1
        first = self.line
        self.line = first + i
        frames = []
        if rows:
            frame = pl.DataFrame([list(col) for col in zip(*rows, strict=True)] if rows else None,
                                 schema={n: pl.String for n in self.names}, orient="col")
            frames.append(frame.with_columns(src_file=pl.lit(self.name),
                                             src_line=pl.Series([first + x for x in row_lines], dtype=pl.Int64),
                                             src_lines=pl.Series(row_spans, dtype=pl.Int64)))
        if errors:
            cap = self.params.evidence_chars
            frames.append(pl.DataFrame({
                "src_file": [self.name] * len(errors),
                "src_line": [first + e[0] for e in errors],
                "src_lines": [e[1] for e in errors],
                "raw": [b"".join(lines[e[0]:e[0] + e[1]])[:cap] for e in errors],
                "read_error_code": [e[2] for e in errors],
                "read_error": [e[3] for e in errors]}, schema=RAW_SCHEMA))
        if frames:
            yield pl.concat(frames, how="diagonal_relaxed").sort("src_line")

    def _why(self, message: str, ran_out: bool, lines_taken: int, first_line: int) -> tuple[str, str]:
        """A record that failed after its first line did so because a quote opened there never closed properly."""
        if ran_out or "field larger than field limit" in message:
            return ("ingest.csv.unclosed_quote", "a quoted value opened on this line does not close before "
                    + ("the end of the file" if ran_out else f"max_record_bytes={self.params.max_record_bytes:,}")
                    + "; reading resumed at the next line")
        if lines_taken > 1:
            return ("ingest.csv.unclosed_quote", f"a quoted value opened on this line does not close on it, and "
                    f"line {first_line + lines_taken - 1:,} does not continue it as CSV ({message}); reading "
                    "resumed at the next line")
        return "ingest.csv.invalid_row", f"does not parse as CSV ({message}); reading resumed at the next line"

    def _give_up_first_line(self, data: bytes, code: str, detail: str) -> Iterator[pl.DataFrame]:
        nl = data.find(b"\n")
        first = data[: nl + 1] if nl >= 0 else data
        yield error_frame(self.name, self.line, code, detail, raw=first[: self.params.evidence_chars], lines=1)
        self.line += 1
        self.carry = data[len(first):]


def read_csv(file: InputFile, compression: str | None, params, s3_options: dict | None, audit: Audit,
              content: bytes | None = None) -> Iterator[pl.DataFrame]:
    """All CSV columns are read as strings (types are the mapping's business, not the reader's)."""
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    budget = Budget(params.max_file_bytes, params.max_compression_ratio)
    parser, chunks = CsvParser(file.name, params, audit), Rechunker(params.shard_rows)
    for frame in parsed(lambda: open_input(file, None, s3_options, content), compression, budget, audit, parser):
        yield from chunks.add(frame)
    if parser.header_failed:  # one row stands for every line after the blank ones: none can be read without it
        yield from chunks.add(error_frame(file.name, 1 + audit.skipped, "ingest.csv.invalid_header",
                                          parser.header_problem, raw=parser.header_raw or None,
                                          lines=audit.read - audit.skipped))
    yield from chunks.rest()
    if not chunks.produced:
        what = ("CSV has a header but no rows" if parser.names is not None
                else "file has no records after decompression")
        yield error_frame(file.name, 0, "ingest.read.empty_file", what)
