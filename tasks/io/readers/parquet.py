"""Parquet: read one row group at a time, so a damaged row group costs its own rows (one error row standing for
them, with the row numbers) and the row groups after it are still read. The footer's row counts are the audit's
`read`: every row the file says it holds ends in a row or in an error row."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import interrupt
from tasks.io.readers.audit import Audit
from tasks.io.readers.decode import read_error
from tasks.io.readers.files import InputFile, open_input
from tasks.io.readers.frames import Rechunker, error_frame


def _as_frame(batch: pa.RecordBatch, name: str, first_row: int) -> pl.DataFrame:
    """Rows numbered from 1 across the file. Dictionary-encoded (categorical) columns are plain strings here: the
    encoding is a storage detail, not a type."""
    df = pl.from_arrow(pa.Table.from_batches([batch]))
    df = df.with_columns([pl.col(c).cast(pl.String) for c, t in df.schema.items()
                          if isinstance(t, pl.Categorical | pl.Enum)])
    return df.with_columns(src_file=pl.lit(name), src_line=pl.int_range(first_row, first_row + df.height,
                                                                        dtype=pl.Int64),
                           src_lines=pl.lit(1, pl.Int64))


def read_parquet(file: InputFile, params, s3_options: dict | None, audit: Audit,
              content: bytes | None = None) -> Iterator[pl.DataFrame]:
    audit.unit = "rows"
    if file.size == 0:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "file is empty (0 bytes)")
        return
    chunks = Rechunker(params.shard_rows)
    try:
        with open_input(file, None, s3_options, content) as fh:
            pf = pq.ParquetFile(fh)
            audit.read = pf.metadata.num_rows
            row = 1
            for group in range(pf.metadata.num_row_groups):
                group_rows = pf.metadata.row_group(group).num_rows
                first, done = row, 0
                try:
                    for batch in pf.iter_batches(batch_size=min(params.shard_rows, 65_536), row_groups=[group]):
                        interrupt.check()
                        yield from chunks.add(_as_frame(batch, file.name, row))
                        row += batch.num_rows
                        done += batch.num_rows
                except interrupt.Interrupted:
                    raise
                except Exception as exc:
                    code, detail = read_error(exc)
                    left = group_rows - done
                    yield from chunks.add(error_frame(
                        file.name, row, code, f"row group {group} (rows {first:,}-{first + group_rows - 1:,}): "
                        f"{left:,} row(s) unreadable: {detail}", lines=left))
                    row = first + group_rows
    except interrupt.Interrupted:
        raise
    except Exception as exc:  # no readable footer: nothing in the file can be located
        yield from chunks.add(error_frame(file.name, 0, "ingest.read.unreadable", read_error(exc)[1]))
    yield from chunks.rest()
    if not chunks.produced:
        yield error_frame(file.name, 0, "ingest.read.empty_file", "Parquet file has no rows")
