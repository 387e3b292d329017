"""What a stage counted (its StageResult's `stats`): returned by stage functions, merged by the runtime, stored in
receipts and manifests (tasks/io/manifests.py). It lives with the runtime because stages build it and must not
import storage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Stats(BaseModel):
    """What a stage counted, in three shapes that merge across shards without parsing keys:
    `counts` (a total: pii.email -> 12), `tallies` (a count per value: rows_by_source -> {source: rows}) and
    `records` (small structured rows, e.g. which benchmark item a document matched)."""

    counts: dict[str, int] = Field(default_factory=dict)
    tallies: dict[str, dict[str, int]] = Field(default_factory=dict)
    records: dict[str, list[dict]] = Field(default_factory=dict)
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _format1(cls, data: Any) -> Any:
        """Format 1 stats were one flat {counter: n} dict."""
        if isinstance(data, dict) and data and not set(data) & {"counts", "tallies", "records"}:
            return {"counts": data}
        return data

    @classmethod
    def merge(cls, parts: Iterable[Stats]) -> Stats:
        counts: Counter = Counter()
        tallies: dict[str, Counter] = {}
        records: dict[str, list[dict]] = {}
        for s in parts:
            counts.update(s.counts)
            for name, tally in s.tallies.items():
                tallies.setdefault(name, Counter()).update(tally)
            for name, rows in s.records.items():
                records.setdefault(name, []).extend(rows)
        return cls(counts=dict(sorted(counts.items())),
                   tallies={k: dict(sorted(v.items())) for k, v in sorted(tallies.items())},
                   records=dict(sorted(records.items())))

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)
