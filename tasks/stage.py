"""The stage abstraction: a pure polars function plus a declaration the runner enforces.

A stage never touches storage, Prefect or Great Expectations. That keeps `stage.fn(df, params)` testable on its own
and makes a new method one function + one declaration; everything else (reading shards, retries, resume, contracts,
manifests, quarantine) belongs to the runner in tasks/runner.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

from schemas.config import SluiceConfig


@dataclass(frozen=True)
class StageResult:
    """`kept` continues downstream; `rejected` goes to quarantine and must carry `reason` and `evidence`."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GlobalSteps:
    """A stage whose decision needs the whole corpus (dedup, clustering): map -> reduce -> apply.

    `features(batch, params)` runs per shard and returns a small frame (hashes, signatures; never text);
    `decide(features, params)` sees every shard's features at once and returns per-row decisions;
    `apply(batch, decisions, params)` runs per shard again and returns kept/rejected like a map stage.
    """

    features: Callable[[pl.DataFrame, Any], pl.DataFrame]
    decide: Callable[[pl.DataFrame, Any], pl.DataFrame]
    apply: Callable[[pl.DataFrame, pl.DataFrame, Any], StageResult]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[pl.DataFrame, Any], StageResult]
    params: Callable[[SluiceConfig], BaseModel]
    requires: Mapping[str, pl.DataType]
    adds: Mapping[str, pl.DataType]
    suite: str | Callable[[Any], str]  # file name (no .json) under schemas/suites/, or a function of the params
    resources: Literal["cpu", "gpu"] = "cpu"
    kind: Literal["source", "map", "global", "sink"] = "map"
    description: str = ""
    steps: GlobalSteps | None = None  # kind == "global" only
    # stage-wide checks on summed stats: [{name, count, rate, warn, max}]; above `max` fails the contract
    rate_checks: Callable[[dict, int, Any], list[dict]] | None = None
    summarize: Callable[[dict, Any], dict] | None = None  # a stage-specific section of the manifest

    def suite_for(self, params: Any) -> str:
        """The suite that states this stage's contract under these params (some guarantees depend on them)."""
        return self.suite(params) if callable(self.suite) else self.suite


class StageContractError(TypeError):
    """A stage broke its own declaration (a programming error, not bad data)."""


def check_declaration(stage: Stage, batch: pl.DataFrame, result: StageResult) -> None:
    """Schema half of the contract, checked on every shard: inputs it requires, columns it adds, row accounting."""
    if stage.kind in ("map", "global"):
        for col, dtype in stage.requires.items():
            if col not in batch.columns:
                raise StageContractError(f"stage {stage.name} requires column {col!r}, which its input lacks")
            if batch.schema[col] != dtype:
                raise StageContractError(
                    f"stage {stage.name} requires {col}: {dtype}, input has {batch.schema[col]}"
                )
    for col, dtype in stage.adds.items():
        if col not in result.kept.columns:
            raise StageContractError(f"stage {stage.name} declares it adds {col!r}, but its output lacks it")
        if result.kept.schema[col] != dtype:
            raise StageContractError(f"stage {stage.name} adds {col}: {dtype}, output has {result.kept.schema[col]}")
    for col in ("reason", "evidence"):
        if result.rejected.height and col not in result.rejected.columns:
            raise StageContractError(f"stage {stage.name} rejected rows without a {col!r} column")
    if result.rejected.height and result.rejected["reason"].null_count():
        raise StageContractError(f"stage {stage.name} rejected rows with a null reason")
    if batch.height != result.kept.height + result.rejected.height:
        raise StageContractError(
            f"stage {stage.name} lost rows: {batch.height} in, {result.kept.height} kept + "
            f"{result.rejected.height} rejected"
        )
