"""Ingest: raw lines or tabular rows -> canonical records, every bad record quarantined with file, line and field.

JSON is parsed by orjson (C) line by line, because one bad line must cost one record, not the rest of the file
(datatrove's JSONL reader skips a line of bad JSON, but stops reading a file at its first invalid UTF-8 byte and
raises on a truncated .gz), and polars' own JSON decoding coerces a number in the text
field to a string instead of flagging it. Everything after the parse — validation, normalization, hashing, ids,
timestamps — is polars expressions over the whole batch.
"""

from __future__ import annotations

import orjson
import polars as pl
import polars_hash as plh

from schemas.config import IngestConfig
from schemas.record import CANONICAL, INGEST_REJECTED, conform
from tasks.runtime.stage import Stage, StageResult
from tasks.runtime.stats import Stats

# what a reader cannot see: whitespace, NUL and other controls, format characters (zero-width space and joiners,
# the word joiner, a byte order mark, soft hyphens)
INVISIBLE = r"[\s\p{Cc}\p{Cf}]"
OPTIONAL = ("source_id", "source", "url", "timestamp", "label", "prompt", "response")
class _Bad:
    """A line orjson rejected; `code` says whether it was the encoding or the syntax."""

    __slots__ = ("code", "detail")

    def __init__(self, exc: orjson.JSONDecodeError):
        self.detail = str(exc)
        self.code = "ingest.utf8.invalid" if "UTF-8" in self.detail else "ingest.json.invalid"


def _parse_lines(lines: list[bytes]) -> list:
    """orjson over every line (`map` calls C directly, no Python frame per line); when a block holds a bad line,
    bisect so each bad line costs itself and O(log n) re-parses, never the block."""
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError as exc:
        if len(lines) == 1:
            return [_Bad(exc)]
    mid = len(lines) // 2
    return _parse_lines(lines[:mid]) + _parse_lines(lines[mid:])


def _json_type(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", str: "string"}.get(
        type(value), type(value).__name__
    )


def _as_text(values: list) -> list:
    """Optional fields are stored as strings; non-string JSON values keep their JSON spelling."""
    return [v if v is None or type(v) is str else orjson.dumps(v).decode() for v in values]


def _from_jsonl(lines: pl.DataFrame, params: IngestConfig) -> pl.DataFrame:
    """Candidate rows from raw JSON lines: parsed fields plus `code`/`detail` for lines that failed to parse.

    Per-row Python here is limited to C calls and one-attribute comprehensions (~50 ns a row each); the
    judgement of the values happens in polars."""
    mapping = params.mapped_fields()
    mapped = frozenset((params.text_field, *mapping.values()))
    oversize = lines["raw"].bin.size() > params.max_record_bytes
    parse_rows = lines.filter(~oversize)
    objs = _parse_lines(parse_rows["raw"].to_list())
    is_obj = [type(o) is dict for o in objs]
    docs = [o if ok else {} for o, ok in zip(objs, is_obj, strict=True)]
    missing = object()
    text = [d.get(params.text_field, missing) for d in docs]
    meta = [orjson.dumps({k: v for k, v in d.items() if k not in mapped}, option=orjson.OPT_SORT_KEYS).decode()
            if len(d) else "{}" for d in docs]
    parse_code = [None if ok else (o.code if type(o) is _Bad else "ingest.json.not_object")
                  for o, ok in zip(objs, is_obj, strict=True)]
    parse_detail = [None if ok else (o.detail if type(o) is _Bad else f"a JSON {_json_type(o)} where an object "
                                     "was expected") for o, ok in zip(objs, is_obj, strict=True)]
    text_kind = [None if t is missing else _json_type(t) if type(t) is not str else "string" for t in text]
    tf = repr(params.text_field)
    out = parse_rows.select("src_file", "src_line", "raw").with_columns(
        pl.Series("parse_code", parse_code, dtype=pl.String),
        pl.Series("parse_detail", parse_detail, dtype=pl.String),
        pl.Series("text_kind", text_kind, dtype=pl.String),
        pl.Series("text", [t if type(t) is str else None for t in text], dtype=pl.String),
        pl.Series("meta", meta, dtype=pl.String),
        *(pl.Series(name, _as_text([d.get(field) for d in docs]), dtype=pl.String)
          for name, field in mapping.items()),
    )
    kind = pl.col("text_kind")
    out = out.with_columns(
        code=pl.when(pl.col("parse_code").is_not_null()).then(pl.col("parse_code"))
        .when(kind.is_null() | (kind == "NoneType")).then(pl.lit("ingest.text.missing"))
        .when(kind != "string").then(pl.lit("ingest.text.not_string")),
        detail=pl.when(pl.col("parse_code").is_not_null()).then(pl.col("parse_detail"))
        .when(kind.is_null()).then(pl.lit(f"field {tf} is missing"))
        .when(kind == "NoneType").then(pl.lit(f"field {tf} is null"))
        .when(kind != "string").then(pl.format(f"field {tf} is a JSON {{}}, not a string", kind)),
    ).drop("parse_code", "parse_detail", "text_kind")
    big = lines.filter(oversize).select("src_file", "src_line", "raw").with_columns(
        code=pl.lit("ingest.record.oversize"),
        detail=pl.format("record is {} bytes, over max_record_bytes={}", pl.col("raw").bin.size(),
                         pl.lit(params.max_record_bytes)),
    )
    return pl.concat([out, big], how="diagonal_relaxed")


def _from_tabular(rows: pl.DataFrame, params: IngestConfig) -> pl.DataFrame:
    """Candidate rows from Parquet/CSV columns: the same shape `_from_jsonl` produces."""
    mapping = {k: v for k, v in params.mapped_fields().items() if v in rows.columns}
    source_cols = [c for c in rows.columns if c not in ("src_file", "src_line")]
    unmapped = [c for c in source_cols if c not in (params.text_field, *mapping.values())]

    def as_string(col: str) -> pl.Expr:
        dtype = rows.schema[col]
        if dtype == pl.String:
            return pl.col(col)
        if dtype.is_float():  # a missing float label is NaN in many writers: it is no class named "NaN"
            return pl.when(pl.col(col).is_nan()).then(None).otherwise(pl.col(col)).cast(pl.String)
        if dtype.is_nested():
            return pl.when(pl.col(col).is_not_null()).then(pl.struct(pl.col(col)).struct.json_encode()
                                                           .str.extract(r"^\{\"[^\"]*\":(.*)\}$"))
        return pl.col(col).cast(pl.String)

    raw = pl.struct(source_cols).struct.json_encode() if source_cols else pl.lit("{}")
    meta = pl.struct(unmapped).struct.json_encode() if unmapped else pl.lit("{}")
    tf = params.text_field
    if tf not in rows.columns:
        code, detail, text = pl.lit("ingest.text.missing"), pl.lit(f"column {tf!r} is missing"), pl.lit(None)
    elif rows.schema[tf] != pl.String:
        code = pl.when(pl.col(tf).is_null()).then(pl.lit("ingest.text.missing")).otherwise(
            pl.lit("ingest.text.not_string"))
        detail = pl.lit(f"column {tf!r} has type {rows.schema[tf]}, not a string")
        text = pl.lit(None)
    else:
        text = pl.col(tf)
        too_big = pl.col(tf).str.len_bytes() > params.max_record_bytes
        code = (pl.when(pl.col(tf).is_null()).then(pl.lit("ingest.text.missing"))
                .when(too_big).then(pl.lit("ingest.record.oversize")))
        detail = (pl.when(pl.col(tf).is_null()).then(pl.lit(f"field {tf!r} is null"))
                  .when(too_big).then(pl.format("text is {} bytes, over max_record_bytes={}",
                                                pl.col(tf).str.len_bytes(), pl.lit(params.max_record_bytes))))
    return rows.select(
        "src_file",
        "src_line",
        raw.cast(pl.String).cast(pl.Binary).alias("raw"),
        code.cast(pl.String).alias("code"),
        detail.cast(pl.String).alias("detail"),
        text.cast(pl.String).alias("text"),
        meta.cast(pl.String).alias("meta"),
        *(as_string(col).alias(name) for name, col in mapping.items()),
    )


def _parse_timestamp(col: str) -> pl.Expr:
    """ISO 8601 (with or without offset), 'YYYY-MM-DD[ HH:MM:SS]', or epoch seconds -> UTC microseconds."""
    s = pl.col(col).str.strip_chars()
    naive = [
        s.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")
    ]
    return pl.coalesce(
        s.str.to_datetime("%+", strict=False, time_unit="us").dt.convert_time_zone("UTC"),
        *naive,
        s.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        (s.cast(pl.Float64, strict=False) * 1_000_000).cast(pl.Int64, strict=False)
        .cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    )


def _rejections(frame: pl.DataFrame, params: IngestConfig) -> pl.DataFrame:
    return frame.with_columns(
        raw=pl.col("raw").str.slice(0, params.evidence_chars),
        reason=pl.col("code"),
        evidence=pl.struct(
            file=pl.col("src_file"), line=pl.col("src_line"), field=pl.col("field"), detail=pl.col("detail")
        ).struct.json_encode(),
    )


def _decode_lossy(df: pl.DataFrame) -> pl.DataFrame:
    """Quarantined raw bytes may be invalid UTF-8; keep them readable (U+FFFD) instead of losing them."""
    if df.height == 0:
        return df.with_columns(pl.col("raw").cast(pl.String))
    decoded = [None if b is None else b.decode("utf-8", "replace") for b in df["raw"].to_list()]
    return df.with_columns(pl.Series("raw", decoded, dtype=pl.String))


FIELD_OF_CODE = {
    "ingest.text.missing": "text",
    "ingest.text.not_string": "text",
    "ingest.text.empty": "text",
    "ingest.timestamp.invalid": "timestamp",
    "ingest.id.missing": "id",
}


def ingest(batch: pl.DataFrame, params: IngestConfig) -> StageResult:
    """Raw batch (from tasks/io/readers.py) -> canonical records + quarantined rows."""
    reader_cols = ("raw", "read_error_code", "read_error", "src_lines")
    batch = batch if "src_lines" in batch.columns else batch.with_columns(src_lines=pl.lit(1, pl.Int64))
    has_errors = "read_error_code" in batch.columns
    broken = batch.filter(pl.col("read_error_code").is_not_null()) if has_errors else batch.clear()
    rows = batch.filter(pl.col("read_error_code").is_null()) if has_errors else batch
    tabular = [c for c in rows.columns if c not in (*reader_cols, "src_file", "src_line")]
    if tabular:  # Parquet/CSV columns (CSV frames may also hold the reader's error rows)
        candidates = _from_tabular(rows.drop([c for c in reader_cols if c in rows.columns]), params)
    else:  # raw JSONL lines
        candidates = _from_jsonl(rows, params) if "raw" in rows.columns and rows.height else pl.DataFrame()
    if candidates.height == 0:
        candidates = pl.DataFrame(schema={"src_file": pl.String, "src_line": pl.Int64, "raw": pl.Binary,
                                          "code": pl.String, "detail": pl.String, "text": pl.String,
                                          "meta": pl.String})
    for name in OPTIONAL:
        if name not in candidates.columns:
            candidates = candidates.with_columns(pl.lit(None, pl.String).alias(name))

    ts = _parse_timestamp("timestamp")
    blank = pl.col("text").str.replace_all(INVISIBLE, "").str.len_bytes() == 0
    code = (
        pl.when(pl.col("code").is_not_null()).then(pl.col("code"))
        .when(blank).then(pl.lit("ingest.text.empty"))
        .when(pl.col("timestamp").is_not_null() & ts.is_null()).then(pl.lit("ingest.timestamp.invalid"))
    )
    detail = (
        pl.when(pl.col("code").is_not_null()).then(pl.col("detail"))
        .when(blank)
        .then(pl.lit(f"field {params.text_field!r} is empty, or only whitespace, NUL, control or zero-width "
                     "characters"))
        .when(pl.col("timestamp").is_not_null() & ts.is_null())
        .then(pl.format("field {} = {} is not a recognised date/time", pl.lit(repr(params.timestamp_field)),
                        pl.col("timestamp")))
    )
    if params.id_from == "field":
        code = code.when(pl.col("source_id").is_null()).then(pl.lit("ingest.id.missing"))
        detail = detail.when(pl.col("source_id").is_null()).then(pl.lit(f"id field {params.id_field!r} is missing"))
    judged = candidates.with_columns(code.alias("code"), detail.alias("detail"), ts.alias("timestamp_parsed"))

    good = judged.filter(pl.col("code").is_null())
    position_id = plh.concat_str(pl.col("src_file"), pl.lit("\n"), pl.col("src_line").cast(pl.String)).chash.sha2_256()
    kept = good.with_columns(
        id=(pl.col("source_id") if params.id_from == "field" else position_id.str.slice(0, 32)),
        content_sha256=plh.col("text").chash.sha2_256(),
        text=pl.col("text").str.normalize("NFC"),
        source=pl.coalesce(pl.col("source"), pl.col("src_file")),
        timestamp=pl.col("timestamp_parsed"),
    )
    kept = conform(kept, CANONICAL)

    bad = judged.filter(pl.col("code").is_not_null()).with_columns(
        field=pl.col("code").replace_strict(FIELD_OF_CODE, default=None, return_dtype=pl.String)
    )
    if broken.height:
        broken = broken.select(
            "src_file", "src_line", "raw", code=pl.col("read_error_code"), detail=pl.col("read_error"),
            field=pl.lit(None, pl.String), source_id=pl.lit(None, pl.String),
        )
        bad = pl.concat([bad, broken], how="diagonal_relaxed")
    bad = _decode_lossy(bad.with_columns(pl.col("raw").cast(pl.Binary)))
    rejected = conform(_rejections(bad, params), INGEST_REJECTED)
    return StageResult(kept=kept, rejected=rejected)


def rate_checks(stats: Stats, rows_in: int, params: IngestConfig) -> list[dict]:
    """Every line (Parquet: row) the input files hold is in a row or a quarantine row, or is blank or a header: the
    readers' audit (tasks/io/readers/audit.py). Any line in neither fails the contract, naming the files."""
    unaccounted = stats.tallies.get("input.unaccounted_by_file", {})
    missing = sum(abs(n) for n in unaccounted.values())
    where = ", ".join(f"{f} ({n:,})" for f, n in sorted(unaccounted.items())[:10])
    return [{"name": "input.unaccounted", "count": missing, "rate": missing / max(rows_in, 1), "warn": 0.0,
             "max": 0.0, "message": f"{missing:,} input line(s) are in no row and no quarantine row: {where}. This "
             "is a reader bug; please report it with the file"}]


STAGE = Stage(
    name="ingest",
    fn=ingest,
    params=lambda cfg: cfg.ingest,
    requires={},
    adds=CANONICAL,
    suite="ingest",
    kind="source",
    rate_checks=rate_checks,
    description="JSONL/Parquet/CSV (gz, zst; local or s3://) -> canonical records; bad records quarantined",
)
