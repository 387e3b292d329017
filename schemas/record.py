"""The canonical record every stage reads and extends (DESIGN.md, "Canonical record")."""

from __future__ import annotations

import polars as pl

CANONICAL: dict[str, pl.DataType] = {
    "id": pl.String(),
    "source_id": pl.String(),
    "text": pl.String(),
    "source": pl.String(),
    "url": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "meta": pl.String(),
    "label": pl.String(),
    "prompt": pl.String(),
    "response": pl.String(),
    "content_sha256": pl.String(),
    "src_file": pl.String(),
    "src_line": pl.Int64(),
}

# Rows that never became a record (bad JSON, bad UTF-8, a truncated stream) keep the raw line instead.
REJECTED_EXTRA: dict[str, pl.DataType] = {
    "raw": pl.String(),
    "reason": pl.String(),
    "evidence": pl.String(),
}

INGEST_REJECTED: dict[str, pl.DataType] = {
    "src_file": pl.String(),
    "src_line": pl.Int64(),
    "source_id": pl.String(),
    **REJECTED_EXTRA,
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast to exactly `schema`, adding absent columns as nulls (stable column order on disk)."""
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )
