"""Streaming readers: input files -> bounded batches of raw rows for the ingest stage.

Readers never raise on bad content. A stream that breaks (truncated or damaged compression, a corrupt Parquet
footer, an empty file, a decompression bomb, an unsupported format) becomes one row with `read_error_code` set, so
ingest quarantines it with file and line and the run goes on; every line before the damage is still read.

Memory is bounded by config whatever the input: decompression yields at most `DECODE_BYTES` at a time (zlib, bz2 and
lzma `max_length`, a zstd stream reader), a line longer than `max_record_bytes` is never assembled (its first
`evidence_chars` bytes are kept as evidence while the rest is skipped), a file that decompresses past
`max_file_bytes` or beyond `max_compression_ratio` is cut there (`ingest.read.too_large`), and batches hold at most
`shard_rows` non-blank lines. Blank lines are dropped before they count, so no batch is ever empty.
"""

from __future__ import annotations

import bz2
import glob as globlib
import lzma
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from tasks.io import interrupt
from tasks.io.storage import _io, filesystem, is_s3

JSONL_EXT = (".jsonl", ".json", ".ndjson")
CSV_EXT = (".csv",)
PARQUET_EXT = (".parquet", ".pq")
COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
DECODE_BYTES = 1 << 20  # decompressed bytes handled at a time
READ_BYTES = 1 << 16  # compressed bytes fed to a decompressor at a time (bounds what a damaged block can cost)
RATIO_AFTER_BYTES = 64 << 20  # the compression ratio is judged once this much has been decompressed

RAW_SCHEMA = {"src_file": pl.String, "src_line": pl.Int64, "raw": pl.Binary, "read_error_code": pl.String,
              "read_error": pl.String}


class InputError(ValueError):
    """An --input that cannot be used at all (matched nothing, unknown scheme)."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    version: str  # etag or mtime: changes when the object changes, so resume never reuses stale shards
    name: str = ""  # what records call their file (`src_file`): relative to the input root for local files

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.uri)

    def as_dict(self) -> dict:
        return {"uri": self.uri, "size": self.size, "version": self.version, "name": self.name}


@dataclass
class Skipped:
    """Files a folder or glob held that are not read, each with why (logged by the source stage)."""

    files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, why: str) -> None:
        self.files.append((path, why))


def _s3_uri(path: str) -> str:
    return path if path.startswith("s3://") else f"s3://{path}"


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _local_base(uri: str) -> str:
    """The folder an --input names: itself, a glob's folder before the first wildcard, or a file's folder."""
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if not os.path.exists(local) and _has_glob(local):
        return os.path.dirname(local[: min(local.index(ch) for ch in "*?[" if ch in local)])
    return local if os.path.isdir(local) else os.path.dirname(local)


def input_root(uris: list[str]) -> str | None:
    """The local folder all --inputs sit under: records name their file relative to it, so published data never
    holds an absolute local path and a corpus moved elsewhere keeps its record ids."""
    bases = [_local_base(u) for u in uris if not is_s3(u)]
    return os.path.commonpath(bases) if bases else None


def _hidden(name: str) -> bool:
    """Dot files and markers such as Spark's `_SUCCESS` are not data."""
    return name.startswith((".", "_"))


def _walk(folder: str, skipped: Skipped) -> list[str]:
    out = []
    for d, dirs, files in os.walk(folder):
        dirs[:] = sorted(x for x in dirs if not _hidden(x))
        for f in sorted(files):
            (skipped.add(os.path.join(d, f), "hidden or marker file") if _hidden(f) else
             out.append(os.path.join(d, f)))
    return out


def _resolve_s3(uri: str, s3_options: dict | None, skipped: Skipped) -> list[InputFile]:
    fs = filesystem(uri, s3_options)
    path = uri.split("://", 1)[1]
    fs.invalidate_cache()  # fsspec reuses instances and their listings; a poll must see new objects
    if fs.exists(path) and not fs.isdir(path):  # an existing key is literal, even with [ or * in it
        paths = [path]
    elif fs.isdir(path):
        paths = []
        for p in fs.find(path):
            (skipped.add(_s3_uri(p), "hidden or marker file") if _hidden(p.rsplit("/", 1)[-1])
             else paths.append(p))
    elif _has_glob(path):
        paths = fs.glob(path)
    else:
        paths = []
    found = []
    for p in paths:
        info = fs.info(p)
        if info.get("type") == "directory":
            continue
        version = str(info.get("ETag") or info.get("LastModified") or "")
        found.append(InputFile(_s3_uri(p), int(info.get("size") or 0), version))
    return found


def _resolve_local(uri: str, root: str | None, skipped: Skipped) -> list[InputFile]:
    local = os.path.expanduser(uri.removeprefix("file://"))
    if os.path.isdir(local):
        paths = _walk(local, skipped)
    elif os.path.exists(local):  # an existing path is literal, even with [ or * in its name
        paths = [local]
    elif _has_glob(local):
        paths = globlib.glob(local, recursive=True)
    else:
        paths = []
    found = []
    for p in paths:
        if not os.path.isfile(p):
            continue
        st = os.stat(p)
        ap = os.path.abspath(p)
        found.append(InputFile(ap, st.st_size, f"{st.st_mtime_ns}", os.path.relpath(ap, root)))
    return found


def resolve_inputs(uris: list[str], s3_options: dict | None = None, skipped: Skipped | None = None
                   ) -> list[InputFile]:
    """Expand globs and folders into a sorted, de-duplicated file list (sorted = deterministic shard ids). Every file
    a folder holds is returned (an unsupported one is quarantined by its reader) except hidden and marker files,
    which go to `skipped` with the reason."""
    root = input_root(uris)
    skipped = skipped if skipped is not None else Skipped()
    found: dict[str, InputFile] = {}
    for uri in uris:
        with _io("list", uri):
            files = _resolve_s3(uri, s3_options, skipped) if is_s3(uri) else _resolve_local(uri, root, skipped)
        if not files:
            raise InputError(f"input {uri!r} matched no files")
        found.update((f.uri, f) for f in files)
    return [found[k] for k in sorted(found)]


def detect_format(uri: str, configured: str = "auto") -> tuple[str, str | None]:
    """(format, compression) from the configured format or the file name, case-insensitively; a name Sluice has no
    reader for is format `unsupported` (its reader quarantines it, naming the extension)."""
    name = uri.lower()
    compression = None
    for ext, comp in COMPRESSION.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    if configured != "auto":
        return configured, compression
    if name.endswith(JSONL_EXT):
        return "jsonl", compression
    if name.endswith(CSV_EXT):
        return "csv", compression
    if name.endswith(PARQUET_EXT):
        return ("parquet", None) if compression is None else ("unsupported", compression)
    return "unsupported", compression


def error_frame(name: str, line: int, code: str, message: str, raw: bytes | None = None) -> pl.DataFrame:
    return pl.DataFrame({"src_file": [name], "src_line": [line], "raw": [raw], "read_error_code": [code],
                         "read_error": [message]}, schema=RAW_SCHEMA)


def _lines_frame(name: str, lines: list[bytes], first_line: int) -> pl.DataFrame:
    """Raw lines with 1-based line numbers; blank lines (empty, or a lone CR) are not records and are dropped."""
    df = pl.DataFrame({
        "src_file": pl.repeat(name, len(lines), dtype=pl.String, eager=True),
        "src_line": pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64, eager=True),
        "raw": pl.Series("raw", lines, dtype=pl.Binary),
    })
    size = pl.col("raw").bin.size()
    blank = (size == 0) | ((size == 1) & pl.col("raw").bin.ends_with(b"\r"))
    return df.filter(~blank).with_columns(read_error_code=pl.lit(None, pl.String), read_error=pl.lit(None, pl.String))


# --------------------------------------------------------------------------------------------- bounded decoding

class TooLarge(Exception):
    """The file decompressed past `max_file_bytes` or its compression ratio is a bomb's."""


class _Budget:
    """Counts what a file decompresses to and stops it at the configured size and ratio."""

    def __init__(self, max_file_bytes: int, max_ratio: float):
        self.max_file_bytes, self.max_ratio = max_file_bytes, max_ratio
        self.read = self.decoded = 0

    def take(self, out: bytes, consumed: int = 0) -> bytes:
        self.read += consumed
        self.decoded += len(out)
        if self.decoded > self.max_file_bytes:
            raise TooLarge(f"decompressed past max_file_bytes={self.max_file_bytes:,}")
        if self.decoded > RATIO_AFTER_BYTES and self.read and self.decoded / self.read > self.max_ratio:
            raise TooLarge(f"{self.read:,} compressed bytes decompressed to {self.decoded:,} (ratio "
                           f"{self.decoded / self.read:,.0f} > max_compression_ratio={self.max_ratio:g}): a "
                           "decompression bomb")
        return out


def _zlib_salvage(dec, data: bytes) -> Iterator[bytes]:
    """Feed a damaged chunk one byte at a time to a copy of the decompressor from before it: every byte that
    decodes before the damage comes out, then the error is raised again."""
    for i in range(len(data)):
        out = dec.decompress(data[i:i + 1], DECODE_BYTES)
        if out:
            yield out
        while dec.unconsumed_tail:
            yield dec.decompress(dec.unconsumed_tail, DECODE_BYTES)


def _gzip_blocks(fh, budget: _Budget) -> Iterator[bytes]:
    """gzip/zlib, concatenated members included, never more than DECODE_BYTES of output at a time."""
    dec, in_member = zlib.decompressobj(wbits=47), False  # gzip or zlib header, auto-detected
    while chunk := fh.read(READ_BYTES):
        budget.read += len(chunk)
        data, pending = chunk, False
        while data or pending:
            in_member = True
            before = dec.copy()
            try:
                out = dec.decompress(data, DECODE_BYTES)
            except zlib.error:
                for piece in _zlib_salvage(before, data):
                    yield budget.take(piece)
                raise
            yield budget.take(out)
            pending = len(out) == DECODE_BYTES  # more output may wait inside with no input left
            data = dec.unconsumed_tail
            if dec.eof:
                data, pending = dec.unused_data, False  # the next gzip member, if any
                dec, in_member = zlib.decompressobj(wbits=47), False
                if not data.strip(b"\x00"):  # zero padding after the last member
                    data = b""
    if in_member:
        raise EOFError("gzip stream ended before its end marker")


def _bz2_xz_blocks(fh, compression: str, budget: _Budget) -> Iterator[bytes]:
    def new():
        return bz2.BZ2Decompressor() if compression == "bz2" else lzma.LZMADecompressor()

    dec, in_stream = new(), False
    while chunk := fh.read(READ_BYTES):
        data, consumed = chunk, len(chunk)
        while True:
            in_stream = True
            out = dec.decompress(data, DECODE_BYTES)
            yield budget.take(out, consumed)
            data, consumed = b"", 0
            if dec.eof:
                rest = dec.unused_data
                dec, in_stream = new(), False
                if not rest:
                    break
                data = rest
            elif dec.needs_input:
                break
    if in_stream:
        raise EOFError(f"{compression} stream ended before its end marker")


def _zstd_blocks(fh, budget: _Budget) -> Iterator[bytes]:
    class Counting:  # what the zstd reader consumed, for the ratio
        def read(self, n: int) -> bytes:
            data = fh.read(n)
            budget.read += len(data)
            return data

    reader = zstandard.ZstdDecompressor().stream_reader(Counting(), read_size=READ_BYTES, read_across_frames=True)
    while out := reader.read(DECODE_BYTES):
        yield budget.take(out)


def decoded_blocks(fh, compression: str | None, budget: _Budget) -> Iterator[bytes]:
    """Decompressed blocks of at most DECODE_BYTES; a stream that ends early yields everything before the cut and
    then raises EOFError. The stop flag is checked between blocks."""
    if compression is None:
        gen = iter(lambda: budget.take(fh.read(DECODE_BYTES), 0), b"")
    elif compression == "gzip":
        gen = _gzip_blocks(fh, budget)
    elif compression == "zstd":
        gen = _zstd_blocks(fh, budget)
    else:
        gen = _bz2_xz_blocks(fh, compression, budget)
    for block in gen:
        interrupt.check()
        if block:
            yield block


def open_input(file: InputFile, compression: str | None, s3_options: dict | None):
    fs = filesystem(file.uri, s3_options)
    path = file.uri.split("://", 1)[1] if is_s3(file.uri) else file.uri
    return fsspec.core.OpenFile(fs, path, mode="rb", compression=compression).open()


def _read_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, TooLarge):
        return "ingest.read.too_large", str(exc)
    if isinstance(exc, EOFError):
        return "ingest.read.truncated", f"compressed stream ended early: {exc}"
    return "ingest.read.unreadable", f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------------ JSONL

class _LineBatcher:
    """Cuts decoded blocks into lines with their numbers, never assembling a line past `max_record_bytes`, and
    hands out frames of exactly `shard_rows` non-blank lines."""

    def __init__(self, name: str, params):
        self.name, self.params = name, params
        self.line = 1  # number of the next line to start
        self.carry = b""  # the partial line at the end of the last block
        self.skipping: tuple[int, bytes] | None = None  # (line, evidence) of an oversize line being skipped
        self.frames: list[pl.DataFrame] = []
        self.held = 0

    def feed(self, block: bytes) -> Iterator[pl.DataFrame]:
        if self.skipping is not None:
            nl = block.find(b"\n")
            if nl < 0:
                return
            self._oversize()
            block = block[nl + 1:]
        if block.startswith(b"\xef\xbb\xbf") and self.line == 1 and not self.carry:
            block = block[3:]  # a UTF-8 byte order mark is not part of the first record
        parts = (self.carry + block).split(b"\n")
        self.carry = parts.pop()
        if parts:
            self._add(_lines_frame(self.name, parts, self.line))
            self.line += len(parts)
        if len(self.carry) > self.params.max_record_bytes:
            self.skipping = (self.line, self.carry[: self.params.evidence_chars])
            self.carry = b""
        yield from self._full()

    def _oversize(self) -> None:
        line, evidence = self.skipping
        self._add(error_frame(self.name, line, "ingest.record.oversize",
                              f"record is over max_record_bytes={self.params.max_record_bytes:,} (not read "
                              "past that; the evidence is its start)", evidence))
        self.skipping = None
        self.line += 1

    def _add(self, frame: pl.DataFrame) -> None:
        if frame.height:
            self.frames.append(frame)
            self.held += frame.height

    def _full(self) -> Iterator[pl.DataFrame]:
        rows = self.params.shard_rows
        while self.held >= rows:
            whole = pl.concat(self.frames, how="vertical")
            yield whole.head(rows)
            rest = whole.slice(rows)
            self.frames, self.held = ([rest] if rest.height else []), rest.height

    def finish(self, error: tuple[str, str] | None) -> Iterator[pl.DataFrame]:
        if self.skipping is not None:
            self._oversize()
        if self.carry and error is None:
            self._add(_lines_frame(self.name, [self.carry], self.line))
            self.carry = b""
            self.line += 1
        if error is not None:  # the partial last line of a broken stream is not a record; it is evidence
            self._add(error_frame(self.name, self.line, *error,
                                  raw=self.carry[: self.params.evidence_chars] or None))
        yield from self._full()
        if self.held:
            yield pl.concat(self.frames, how="vertical")


def read_jsonl(file: InputFile, compression: str | None, params, s3_options: dict | None = None
               ) -> Iterator[pl.DataFrame]:
    """Yield frames of at most `shard_rows` raw lines; a broken stream ends with one error row."""
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    batcher = _LineBatcher(file.name, params)
    budget = _Budget(params.max_file_bytes, params.max_compression_ratio)
    error = None
    produced = False
    try:
        with open_input(file, None, s3_options) as fh:
            for block in decoded_blocks(fh, compression, budget):
                for frame in batcher.feed(block):
                    produced = True
                    yield frame
    except interrupt.Interrupted:
        raise
    except Exception as exc:  # damaged compression, a bomb, network failure after retries, ...
        error = _read_error(exc)
    for frame in batcher.finish(error):
        produced = True
        yield frame
    if not produced:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file has no records after decompression")


# ---------------------------------------------------------------------------------------------------- Parquet

def _tabular_batches(batches: Iterator[pa.RecordBatch], name: str, shard_rows: int) -> Iterator[pl.DataFrame]:
    """Re-chunk Arrow batches to `shard_rows` and number rows (1-based). Dictionary-encoded (categorical) columns are
    plain strings here: the encoding is a storage detail, not a type."""
    buffered: list[pl.DataFrame] = []
    held = 0
    row = 1
    for batch in batches:
        interrupt.check()
        df = pl.from_arrow(pa.Table.from_batches([batch]))
        df = df.with_columns([pl.col(c).cast(pl.String) for c, t in df.schema.items()
                              if isinstance(t, pl.Categorical | pl.Enum)])
        buffered.append(df)
        held += df.height
        while held >= shard_rows:
            whole = pl.concat(buffered, how="vertical_relaxed")
            out, rest = whole.head(shard_rows), whole.slice(shard_rows)
            yield out.with_columns(src_file=pl.lit(name), src_line=pl.int_range(row, row + out.height, dtype=pl.Int64))
            row += out.height
            buffered, held = ([rest] if rest.height else []), rest.height
    if held:
        whole = pl.concat(buffered, how="vertical_relaxed")
        yield whole.with_columns(src_file=pl.lit(name), src_line=pl.int_range(row, row + whole.height, dtype=pl.Int64))


def read_parquet(file: InputFile, params, s3_options: dict | None = None) -> Iterator[pl.DataFrame]:
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    try:
        with open_input(file, None, s3_options) as fh:
            pf = pq.ParquetFile(fh)
            yield from _tabular_batches(pf.iter_batches(batch_size=min(params.shard_rows, 65_536)), file.name,
                                        params.shard_rows)
    except interrupt.Interrupted:
        raise
    except Exception as exc:
        yield error_frame(file.name, 0, "ingest.read.unreadable", f"{type(exc).__name__}: {exc}")


# -------------------------------------------------------------------------------------------------------- CSV

@dataclass
class _Records:
    """Complete CSV records of one decoded block: the bytes, and per record its span, physical first line and
    number of fields (quote-aware: a newline or delimiter inside quotes belongs to the value)."""

    data: bytes
    arr: np.ndarray
    starts: np.ndarray
    ends: np.ndarray  # exclusive, without the newline
    lines: np.ndarray
    fields: np.ndarray


def _split_records(data: bytes, first_line: int, delimiter: str) -> tuple[_Records, bytes]:
    """Split at newlines outside quotes (quote parity by a cumulative count, vectorized); returns the complete
    records and the partial record left at the end."""
    arr = np.frombuffer(data, dtype=np.uint8)
    inside = (np.cumsum(arr == ord('"')) & 1).astype(bool)
    newline = arr == ord("\n")
    ends = np.flatnonzero(newline & ~inside)
    starts = np.r_[0, ends[:-1] + 1] if ends.size else np.empty(0, dtype=np.int64)
    lines_before = np.cumsum(newline)
    lines = first_line + np.r_[0, lines_before[ends[:-1]]] if ends.size else np.empty(0, dtype=np.int64)
    delims = np.flatnonzero((arr == ord(delimiter)) & ~inside)
    fields = np.searchsorted(delims, ends) - np.searchsorted(delims, starts) + 1
    rest = data[ends[-1] + 1:] if ends.size else data
    return _Records(data, arr, starts, ends, lines, fields), rest


def _csv_frame(records: _Records, header: bytes, names: list[str], name: str, params) -> pl.DataFrame:
    """Parse the well-formed records (pyarrow, all columns as strings) and turn the others into error rows."""
    columns = len(names)
    size = records.ends - records.starts
    ends_in_cr = (size > 0) & (records.arr[np.maximum(records.ends - 1, 0)] == ord("\r"))
    blank = (size - ends_in_cr) <= 0
    oversize = size > params.max_record_bytes
    good = ~blank & ~oversize & (records.fields == columns)
    frames = []
    if good.any():
        keep = np.flatnonzero(good)
        runs = np.split(keep, np.flatnonzero(np.diff(keep) != 1) + 1)  # consecutive good records: one slice each
        body = b"\n".join(records.data[records.starts[r[0]]:records.ends[r[-1]]] for r in runs)
        table = pacsv.read_csv(
            pa.py_buffer(header + b"\n" + body),
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, len(body) + len(header) + 2)),
            parse_options=pacsv.ParseOptions(delimiter=params.csv_delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        frames.append(pl.from_arrow(table).with_columns(src_file=pl.lit(name),
                                                        src_line=pl.Series(records.lines[keep], dtype=pl.Int64)))
    bad = np.flatnonzero(~blank & ~good)
    if bad.size:
        raw = [records.data[records.starts[i]:min(records.ends[i], records.starts[i] + params.evidence_chars)]
               for i in bad]
        detail = [f"record is {size[i]:,} bytes, over max_record_bytes={params.max_record_bytes:,}" if oversize[i]
                  else f"row has {records.fields[i]} fields, the header has {columns}" for i in bad]
        frames.append(pl.DataFrame({
            "src_file": [name] * bad.size, "src_line": records.lines[bad].tolist(), "raw": raw,
            "read_error_code": ["ingest.record.oversize" if oversize[i] else "ingest.csv.invalid_row" for i in bad],
            "read_error": detail}, schema=RAW_SCHEMA))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def read_csv(file: InputFile, compression: str | None, params, s3_options: dict | None = None
             ) -> Iterator[pl.DataFrame]:
    """All CSV columns are read as strings (types are the mapping's business, not the reader's). Records are split
    by Sluice (quote-aware), so every row knows its physical line, multi-line values included."""
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    budget = _Budget(params.max_file_bytes, params.max_compression_ratio)
    header: bytes | None = None
    names: list[str] = []
    carry, line = b"", 1
    buffered: list[pl.DataFrame] = []
    held, produced, error = 0, False, None
    try:
        with open_input(file, None, s3_options) as fh:
            for block in decoded_blocks(fh, compression, budget):
                if header is None and not carry and block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]
                records, rest = _split_records(carry + block, line, params.csv_delimiter)
                line += (carry + block).count(b"\n") - rest.count(b"\n")
                carry = rest
                if header is None and records.ends.size:
                    header = records.data[: records.ends[0]].rstrip(b"\r")
                    names = pacsv.read_csv(pa.py_buffer(header + b"\n"), parse_options=pacsv.ParseOptions(
                        delimiter=params.csv_delimiter)).column_names
                    records = _Records(records.data, records.arr, records.starts[1:], records.ends[1:],
                                       records.lines[1:], records.fields[1:])
                if len(carry) > params.max_record_bytes:
                    raise TooLarge(f"a record starting at line {line} runs past max_record_bytes="
                                   f"{params.max_record_bytes:,} (an unclosed quote?)")
                if header is not None and records.ends.size:
                    frame = _csv_frame(records, header, names, file.name, params)
                    if frame.height:
                        buffered.append(frame)
                        held += frame.height
                while held >= params.shard_rows:
                    whole = pl.concat(buffered, how="diagonal_relaxed")
                    produced = True
                    yield whole.head(params.shard_rows)
                    rest_frame = whole.slice(params.shard_rows)
                    buffered, held = ([rest_frame] if rest_frame.height else []), rest_frame.height
    except interrupt.Interrupted:
        raise
    except Exception as exc:
        error = _read_error(exc)
    if carry.strip() and error is None and header is not None:  # a last record without a final newline
        records, _ = _split_records(carry + b"\n", line, params.csv_delimiter)
        frame = _csv_frame(records, header, names, file.name, params)
        if frame.height:
            buffered.append(frame)
    if error is not None:
        buffered.append(error_frame(file.name, line, *error, raw=carry[: params.evidence_chars] or None))
    if buffered:
        produced = True
        yield pl.concat(buffered, how="diagonal_relaxed")
    if not produced:
        what = "CSV has a header but no rows" if header is not None else "file has no records after decompression"
        yield error_frame(file.name, 0, "ingest.read.empty_file", what)


def read_batches(file: InputFile, fmt: str, compression: str | None, params, s3_options: dict | None = None
                 ) -> Iterator[pl.DataFrame]:
    """Batches of raw rows of one file; `params` is the ingest config (sizes and limits)."""
    if fmt == "jsonl":
        return read_jsonl(file, compression, params, s3_options)
    if fmt == "parquet":
        return read_parquet(file, params, s3_options)
    if fmt == "csv":
        return read_csv(file, compression, params, s3_options)
    ext = os.path.basename(file.uri)
    return iter([error_frame(file.name, 0, "ingest.read.unsupported",
                             f"no reader for {ext!r}: Sluice reads .jsonl/.json/.ndjson, .csv and .parquet, "
                             "optionally .gz, .zst, .bz2 or .xz compressed (set ingest.format to force one)")])
