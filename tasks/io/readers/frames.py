"""The shape every reader yields: raw rows with the file, the physical line a row starts at and how many lines it
covers (`src_lines`), or an error row; and cutting a reader's output into frames of exactly `shard_rows` rows."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

RAW_SCHEMA = {"src_file": pl.String, "src_line": pl.Int64, "src_lines": pl.Int64, "raw": pl.Binary,
              "read_error_code": pl.String, "read_error": pl.String}
READER_COLUMNS = ("src_file", "src_line", "src_lines", "raw", "read_error_code", "read_error")


def error_frame(name: str, line: int, code: str, message: str, raw: bytes | None = None, lines: int = 0
                ) -> pl.DataFrame:
    """One quarantine row from the reader; `lines`: the physical lines (or Parquet rows) it stands for."""
    return pl.DataFrame({"src_file": [name], "src_line": [line], "src_lines": [lines], "raw": [raw],
                         "read_error_code": [code], "read_error": [message]}, schema=RAW_SCHEMA)


def lines_frame(name: str, lines: list[bytes], first_line: int) -> tuple[pl.DataFrame, int]:
    """Raw lines with 1-based line numbers, and how many were blank (empty, or a lone CR): those are no record."""
    df = pl.DataFrame({
        "src_file": pl.repeat(name, len(lines), dtype=pl.String, eager=True),
        "src_line": pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64, eager=True),
        "src_lines": pl.repeat(1, len(lines), dtype=pl.Int64, eager=True),
        "raw": pl.Series("raw", lines, dtype=pl.Binary),
    })
    size = pl.col("raw").bin.size()
    blank = (size == 0) | ((size == 1) & pl.col("raw").bin.ends_with(b"\r"))
    kept = df.filter(~blank).with_columns(read_error_code=pl.lit(None, pl.String), read_error=pl.lit(None, pl.String))
    return kept, df.height - kept.height


class Rechunker:
    """Frames in, frames of exactly `rows` rows out (the last one may be smaller); never an empty frame."""

    def __init__(self, rows: int):
        self.rows = rows
        self.frames: list[pl.DataFrame] = []
        self.held = 0
        self.produced = False

    def add(self, frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
        if frame.height:
            self.frames.append(frame)
            self.held += frame.height
        while self.held >= self.rows:
            whole = pl.concat(self.frames, how="diagonal_relaxed")
            out, rest = whole.head(self.rows), whole.slice(self.rows)
            self.frames, self.held = ([rest] if rest.height else []), rest.height
            self.produced = True
            yield out

    def rest(self) -> Iterator[pl.DataFrame]:
        if self.held:
            self.produced = True
            yield pl.concat(self.frames, how="diagonal_relaxed")
            self.frames, self.held = [], 0
