"""`[ingest]`: how input records map onto the canonical record."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config.base import Strict


class IngestConfig(Strict):
    """How input records map onto the canonical record (schemas/record.py)."""

    format: Literal["auto", "jsonl", "parquet", "csv", "warc", "html"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"
    id_from: Literal["position", "field"] = Field(
        "position",
        description="'position': id = hash(source uri, line) — always unique; "
        "'field': id = the input's own id field (duplicates then fail the contract)",
    )
    source_field: str | None = "source"
    url_field: str | None = "url"
    timestamp_field: str | None = "timestamp"
    label_field: str | None = "label"
    prompt_field: str | None = "prompt"
    response_field: str | None = "response"
    max_record_bytes: int = Field(1_000_000, gt=0)
    shard_rows: int = Field(50_000, gt=0, description="rows per output shard; bounds memory")
    read_block_bytes: int = Field(8 << 20, gt=0, description="unused since readers decode in 1 MiB blocks; kept so "
                                  "older configs still load")
    max_file_bytes: int = Field(256 << 30, gt=0, description="a file decompressing past this is cut there and "
                                "quarantined as ingest.read.too_large (lines before it are kept)")
    max_compression_ratio: float = Field(200.0, gt=1, description="decompressed/compressed bytes above this, after "
                                         "the first 64 MiB, is a decompression bomb: ingest.read.too_large")
    evidence_chars: int = Field(2_000, gt=0, description="raw lines are cut to this length in quarantine")
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    limit_rows: int | None = Field(None, gt=0, description="read only the first N input rows (files in sorted "
                                   "order, lines in order, bad lines counted): `sluice run --limit N`, to try a "
                                   "config on a little of the data")

    def mapped_fields(self) -> dict[str, str]:
        """canonical column -> input field, for the optional fields that are configured."""
        pairs = {
            "source_id": self.id_field,
            "source": self.source_field,
            "url": self.url_field,
            "timestamp": self.timestamp_field,
            "label": self.label_field,
            "prompt": self.prompt_field,
            "response": self.response_field,
        }
        return {k: v for k, v in pairs.items() if v}
