"""The records of the commit protocol: shard receipts and stage manifests, as typed models (a stage's Stats, which
they carry, is tasks/runtime/stats.py: what a stage returns, not how it is stored).

Built here and rendered (to JSON) here, nowhere else. Format 2 records every object as a path relative to the output
root, so a root can be copied or moved. Format 1 (before the layout change) recorded absolute URIs and flat counter
stats; reading one converts it on the fly (`format` stays 1), so the ops commands read runs of either format.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tasks.io import layout
from tasks.runtime.stats import Stats

FORMAT = 2
INVARIANT = "rows_in + rows_synthetic == rows_out + rows_rejected"


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


class DataObject(Record):
    """A Parquet object written under the root: where, how many rows, and the sha256 of exactly its bytes."""

    path: str
    rows: int
    sha256: str
    bytes: int = 0

    @model_validator(mode="before")
    @classmethod
    def _format1(cls, data: Any, info: ValidationInfo) -> Any:
        """Format 1 wrote `uri` (absolute, of the root at the time); keep the path under runs/ or datasets/."""
        if isinstance(data, dict) and "path" not in data and "uri" in data:
            root = (info.context or {}).get("root", "")
            return {**data, "path": layout.relative_to_root(data["uri"], root)}
        return data


def _objects_or_inputs(value: list, info: ValidationInfo) -> list:
    """A stage's inputs are the previous stage's objects (converted) or, for a source stage, input files (kept)."""
    out = []
    for v in value:
        if isinstance(v, dict) and ("uri" in v or "path" in v) and "sha256" in v and "rows" in v:
            out.append(DataObject.model_validate(v, context=info.context).as_json())
        else:
            out.append(v)
    return out


class Receipt(Record):
    """One shard done: its inputs, counts, written objects and contract result. The shard's commit marker."""

    shard: str
    fingerprint: str | None = None
    inputs: list[dict] = Field(default_factory=list)
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_synthetic: int = 0
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    outputs: list[DataObject] = Field(default_factory=list)
    rejected: list[DataObject] = Field(default_factory=list)
    edits: list[DataObject] = Field(default_factory=list)  # the shard's edit ledger (tasks/runtime/edits.py)
    stats: Stats = Field(default_factory=Stats)
    contract: dict = Field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = Field(False, exclude=True)  # set when read back instead of redone; never written

    _inputs = field_validator("inputs", mode="after")(_objects_or_inputs)


class StageManifest(Record):
    """A committed stage (`_manifest.json`, written last) or, with a failed contract, `_contract_failure.json`.

    A published version's `_manifest.json` is the publish stage's manifest without `published.diff`."""

    format: int = 1
    stage: str
    run_id: str
    fingerprint: str | None = None
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_synthetic: int = 0
    invariant: str = INVARIANT
    invariant_holds: bool = True
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    inputs: list[dict] = Field(default_factory=list)
    outputs: list[DataObject] = Field(default_factory=list)
    rejected: list[DataObject] = Field(default_factory=list)
    edits: list[DataObject] = Field(default_factory=list)  # the edit ledger's parts: `sluice edits`
    shards: int = 0
    shards_resumed: int = 0
    stats: Stats = Field(default_factory=Stats)
    contract: dict = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    rates: list[dict] = Field(default_factory=list)
    summary: dict | None = None
    params: dict = Field(default_factory=dict)
    code_version: str = ""
    seconds: float = 0.0
    replay_of: dict | None = None
    published: dict | None = None  # publish only: dataset, version, published_at, rows_by_source, diff
    side_outputs: dict[str, list[DataObject]] = Field(default_factory=dict)  # e.g. the score stage's embeddings
    plan: dict | None = None  # a partitioned global stage: partition counts, and per step units, seconds, bytes

    _inputs = field_validator("inputs", mode="after")(_objects_or_inputs)

    @model_validator(mode="before")
    @classmethod
    def _format1(cls, data: Any) -> Any:
        """Format 1 publish manifests kept dataset/version/... at the top level."""
        if isinstance(data, dict) and "dataset" in data and "published" not in data:
            data = {**data, "published": {k: data[k] for k in ("dataset", "version", "published_at",
                                                               "rows_by_source", "diff") if k in data}}
        return data

    @property
    def contract_passed(self) -> bool:
        return bool(self.contract.get("success"))


def parse(model: type[Record], data: bytes | dict, root: str) -> Record:
    raw = orjson.loads(data) if isinstance(data, bytes | bytearray) else data
    return model.model_validate(raw, context={"root": root})


def render(record: Record) -> bytes:
    return orjson.dumps(record.as_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
