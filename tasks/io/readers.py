"""Streaming readers: input files -> bounded batches of raw rows for the ingest stage.

Readers never raise on bad content. A stream that breaks (truncated gzip, not-gzip bytes behind a .gz name, a
corrupt Parquet footer, an empty file) becomes one row with `read_error_code` set, so ingest can quarantine it with
file and line and the run goes on. Memory is bounded by `shard_rows` lines plus one read block.
"""

from __future__ import annotations

import glob as globlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from tasks.io.storage import filesystem, is_s3

JSONL_EXT = (".jsonl", ".json", ".ndjson")
COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
KNOWN_EXT = tuple(e + c for e in (*JSONL_EXT, ".csv") for c in ("", *COMPRESSION)) + (".parquet", ".pq")


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


def _s3_uri(path: str) -> str:
    return path if path.startswith("s3://") else f"s3://{path}"


def _local_base(uri: str) -> str:
    """The folder an --input names: itself, a glob's folder before the first wildcard, or a file's folder."""
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if any(ch in local for ch in "*?["):
        return os.path.dirname(local[: min(local.index(ch) for ch in "*?[" if ch in local)])
    return local if os.path.isdir(local) else os.path.dirname(local)


def input_root(uris: list[str]) -> str | None:
    """The local folder all --inputs sit under: records name their file relative to it, so published data never
    holds an absolute local path and a corpus moved elsewhere keeps its record ids."""
    bases = [_local_base(u) for u in uris if not is_s3(u)]
    return os.path.commonpath(bases) if bases else None


def resolve_inputs(uris: list[str], s3_options: dict | None = None) -> list[InputFile]:
    """Expand globs and directories into a sorted, de-duplicated file list (sorted = deterministic shard ids)."""
    root = input_root(uris)
    found: dict[str, InputFile] = {}
    for uri in uris:
        matched = 0
        if is_s3(uri):
            fs = filesystem(uri, s3_options)
            path = uri.split("://", 1)[1]
            fs.invalidate_cache()  # fsspec reuses instances and their listings; a poll must see new objects
            if any(ch in path for ch in "*?["):
                paths = fs.glob(path)
            elif fs.isdir(path):
                paths = [p for p in fs.find(path) if p.endswith(KNOWN_EXT)]
            else:
                paths = [path] if fs.exists(path) else []
            for p in paths:
                info = fs.info(p)
                if info.get("type") == "directory":
                    continue
                version = str(info.get("ETag") or info.get("LastModified") or "")
                found[_s3_uri(p)] = InputFile(_s3_uri(p), int(info.get("size") or 0), version)
                matched += 1
        else:
            local = os.path.expanduser(uri.removeprefix("file://"))
            if any(ch in local for ch in "*?["):
                paths = globlib.glob(local, recursive=True)
            elif os.path.isdir(local):
                paths = [
                    os.path.join(d, f) for d, _, fs_ in os.walk(local) for f in fs_ if f.endswith(KNOWN_EXT)
                ]
            else:
                paths = [local] if os.path.exists(local) else []
            for p in paths:
                if not os.path.isfile(p):
                    continue
                st = os.stat(p)
                ap = os.path.abspath(p)
                found[ap] = InputFile(ap, st.st_size, f"{st.st_mtime_ns}", os.path.relpath(ap, root))
                matched += 1
        if matched == 0:
            raise InputError(f"input {uri!r} matched no files")
    return [found[k] for k in sorted(found)]


def detect_format(uri: str, configured: str = "auto") -> tuple[str, str | None]:
    """(format, compression) from the configured format or the file name."""
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
    if name.endswith(".csv"):
        return "csv", compression
    if name.endswith((".parquet", ".pq")):
        return "parquet", None
    return "jsonl", compression


def _error_frame(uri: str, line: int, code: str, message: str, raw: bytes | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {"src_file": [uri], "src_line": [line], "raw": [raw], "read_error_code": [code], "read_error": [message]},
        schema={
            "src_file": pl.String,
            "src_line": pl.Int64,
            "raw": pl.Binary,
            "read_error_code": pl.String,
            "read_error": pl.String,
        },
    )


def _lines_frame(uri: str, lines: list[bytes], first_line: int) -> pl.DataFrame:
    """Raw lines with 1-based line numbers; blank lines (empty, or a lone CR) are not records and are dropped."""
    raw = pl.Series("raw", lines, dtype=pl.Binary)
    df = pl.DataFrame(
        {
            "src_file": pl.repeat(uri, len(lines), dtype=pl.String, eager=True),
            "src_line": pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64, eager=True),
            "raw": raw,
        }
    )
    size = pl.col("raw").bin.size()
    blank = (size == 0) | ((size == 1) & pl.col("raw").bin.ends_with(b"\r"))
    return df.filter(~blank).with_columns(
        read_error_code=pl.lit(None, pl.String), read_error=pl.lit(None, pl.String)
    )


def _decompressed_blocks(fh, compression: str | None, block_bytes: int) -> Iterator[bytes]:
    """Decompress incrementally so a truncated stream still yields every byte before the cut, then EOFError."""
    if compression is None:
        while block := fh.read(block_bytes):
            yield block
        return

    def new():
        # wbits=47: gzip or zlib header, auto-detected
        return zlib.decompressobj(wbits=47) if compression == "gzip" else zstandard.ZstdDecompressor().decompressobj()

    dec, in_member = new(), False
    while block := fh.read(block_bytes):
        while block:
            in_member = True
            out = dec.decompress(block)
            if out:
                yield out
            if not dec.eof:
                break
            block = dec.unused_data  # concatenated gzip members / zstd frames
            dec, in_member = new(), False
    if in_member:
        raise EOFError(f"{compression} stream ended before its end marker")


def open_input(file: InputFile, compression: str | None, s3_options: dict | None):
    fs = filesystem(file.uri, s3_options)
    path = file.uri.split("://", 1)[1] if is_s3(file.uri) else file.uri
    return fsspec.core.OpenFile(fs, path, mode="rb", compression=compression).open()


def read_jsonl(file: InputFile, compression: str | None, shard_rows: int, block_bytes: int,
               s3_options: dict | None = None) -> Iterator[pl.DataFrame]:
    """Yield frames of at most `shard_rows` raw lines; a broken stream ends with one error row."""
    if file.size == 0:
        yield _error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    pending: list[bytes] = []
    first_line = 1
    tail = b""
    error: tuple[str, str] | None = None
    try:
        with open_input(file, None, s3_options) as fh:
            for block in _decompressed_blocks(fh, compression, block_bytes):
                parts = (tail + block).split(b"\n")
                tail = parts.pop()
                pending.extend(parts)
                while len(pending) >= shard_rows:
                    chunk, pending = pending[:shard_rows], pending[shard_rows:]
                    yield _lines_frame(file.name, chunk, first_line)
                    first_line += len(chunk)
    except EOFError as exc:
        error = ("ingest.read.truncated", f"compressed stream ended early: {exc}")
    except Exception as exc:  # corrupt compression, network failure after retries, ...
        error = ("ingest.read.unreadable", f"{type(exc).__name__}: {exc}")
    if tail and error is None:
        pending.append(tail)
        tail = b""
    total_lines = first_line - 1 + len(pending)
    frames = []
    if pending:
        frames.append(_lines_frame(file.name, pending, first_line))
    if error is not None:
        # the partial last line of a broken stream is not a record; it is evidence
        frames.append(_error_frame(file.name, total_lines + 1, *error, raw=tail or None))
    elif total_lines == 0:
        frames.append(_error_frame(file.name, 0, "ingest.read.empty_file", "file has no content after decompression"))
    if frames:
        yield pl.concat(frames, how="vertical")


def _tabular_batches(batches: Iterator[pa.RecordBatch], uri: str, shard_rows: int) -> Iterator[pl.DataFrame]:
    """Re-chunk Arrow batches to `shard_rows` and number rows (line = 1-based row; CSV adds the header line)."""
    buffered: list[pl.DataFrame] = []
    held = 0
    row = 1
    for batch in batches:
        df = pl.from_arrow(pa.Table.from_batches([batch]))
        buffered.append(df)
        held += df.height
        while held >= shard_rows:
            whole = pl.concat(buffered, how="vertical_relaxed")
            out, rest = whole.head(shard_rows), whole.slice(shard_rows)
            yield out.with_columns(src_file=pl.lit(uri), src_line=pl.int_range(row, row + out.height, dtype=pl.Int64))
            row += out.height
            buffered, held = ([rest] if rest.height else []), rest.height
    if held:
        whole = pl.concat(buffered, how="vertical_relaxed")
        yield whole.with_columns(src_file=pl.lit(uri), src_line=pl.int_range(row, row + whole.height, dtype=pl.Int64))


def read_parquet(file: InputFile, shard_rows: int, s3_options: dict | None = None) -> Iterator[pl.DataFrame]:
    if file.size == 0:
        yield _error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    try:
        with open_input(file, None, s3_options) as fh:
            pf = pq.ParquetFile(fh)
            yield from _tabular_batches(pf.iter_batches(batch_size=min(shard_rows, 65_536)), file.name, shard_rows)
    except Exception as exc:
        yield _error_frame(file.name, 0, "ingest.read.unreadable", f"{type(exc).__name__}: {exc}")


def read_csv(file: InputFile, compression: str | None, shard_rows: int, delimiter: str,
             s3_options: dict | None = None) -> Iterator[pl.DataFrame]:
    """All CSV columns are read as strings (types are the mapping's business, not the reader's)."""
    if file.size == 0:
        yield _error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    bad_rows: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append((row.number or 0, row.text or ""))
        return "skip"

    produced = False
    try:
        with open_input(file, compression, s3_options) as fh:
            header = pacsv.open_csv(
                fh, parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda _row: "skip")
            ).schema.names
        with open_input(file, compression, s3_options) as fh:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                                 newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in header},
                                                     strings_can_be_null=False),
            )
            for frame in _tabular_batches(iter(reader), file.name, shard_rows):
                produced = True
                # CSV line numbers: data row k sits on line k+1 (header first), assuming no multi-line values
                yield frame.with_columns(pl.col("src_line") + 1)
    except Exception as exc:
        yield _error_frame(file.name, 0, "ingest.read.unreadable", f"{type(exc).__name__}: {exc}")
        return
    if bad_rows:
        yield pl.DataFrame(
            {
                "src_file": [file.name] * len(bad_rows),
                "src_line": [n for n, _ in bad_rows],
                "raw": [t.encode() for _, t in bad_rows],
                "read_error_code": ["ingest.csv.invalid_row"] * len(bad_rows),
                "read_error": ["row has the wrong number of columns"] * len(bad_rows),
            },
            schema={"src_file": pl.String, "src_line": pl.Int64, "raw": pl.Binary,
                    "read_error_code": pl.String, "read_error": pl.String},
        )
    elif not produced:
        yield _error_frame(file.name, 0, "ingest.read.empty_file", "CSV has a header but no rows")


def read_batches(file: InputFile, fmt: str, compression: str | None, shard_rows: int, block_bytes: int,
                 delimiter: str = ",", s3_options: dict | None = None) -> Iterator[pl.DataFrame]:
    if fmt == "jsonl":
        return read_jsonl(file, compression, shard_rows, block_bytes, s3_options)
    if fmt == "parquet":
        return read_parquet(file, shard_rows, s3_options)
    if fmt == "csv":
        return read_csv(file, compression, shard_rows, delimiter, s3_options)
    raise InputError(f"unknown input format {fmt!r} for {file.uri}")
