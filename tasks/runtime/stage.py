"""The stage abstraction: a pure polars function plus a declaration the runner enforces.

A stage's function never touches storage, Prefect or Great Expectations. That keeps `stage.fn(df, params)` testable
on its own and makes a new method one function + one declaration; everything else (reading shards, retries, resume,
contracts, manifests, quarantine) belongs to the runner (tasks/runtime/runner.py).

A stage that needs a model declares `setup(params) -> loaded` (run once per worker process, before its first shard)
and `teardown(loaded)`; its function then takes the loaded object as a third argument: `fn(batch, params, loaded)`.
What a setup reads besides the data (benchmark files, a reference set, blocklists) and the cache folders it writes
are declared too (`externals(params)`); the runtime reads and prepares them and hands them to the setup as its
second argument (tasks/runtime/externals.py). The published dataset a global stage compares against is handed to
its steps by the runtime (`StepInputs.published`). The one stage with storage of its own is the sink, publish: its
`SinkSteps` are the commit protocol, called by the runtime with the run's context.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

from schemas.config import SluiceConfig
from schemas.errors import BadInput
from tasks.runtime.externals import Externals
from tasks.runtime.stats import Stats

ROW = "_row"  # the positional row index stages attach while they work; never leaves a stage
PROVENANCE: dict[str, pl.DataType] = {  # every synthetic row says where it came from
    "syn_origin": pl.String(),
    "syn_generator": pl.String(),
    "syn_parent_id": pl.String(),
    "syn_prompt_sha256": pl.String(),
    "syn_seed": pl.Int64(),
}


@dataclass(frozen=True)
class StageResult:
    """`kept` continues downstream; `rejected` goes to quarantine and must carry `reason` and `evidence`;
    `synthetic` are new rows (same columns as `kept`, provenance filled) that join the output after `kept`.
    `synthetic_rejected` counts the generated rows that failed a gate: they are among `rejected` (provenance
    filled), so generated rows are never lost either: in + generated = out + rejected. `edits` records what a
    rewrite removed from kept rows, so parts of rows are never lost silently either."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    stats: Stats = field(default_factory=Stats)
    synthetic: pl.DataFrame | None = None
    synthetic_rejected: int = 0
    edits: pl.DataFrame | None = None  # the edit ledger of kept rows whose text changed (tasks/runtime/edits.py)

    @property
    def rows_synthetic(self) -> int:
        return (0 if self.synthetic is None else self.synthetic.height) + self.synthetic_rejected

    def output(self) -> pl.DataFrame:
        """What the runner writes: kept rows, then synthetic rows."""
        if self.synthetic is None or not self.synthetic.height:
            return self.kept
        return pl.concat([self.kept, self.synthetic.select(self.kept.columns)], how="vertical")


@dataclass(frozen=True)
class SinkSteps:
    """Where a sink's rows go and how that destination is committed (publish: a dataset version).

    `open(ctx, inputs)` claims the destination (the same answer when a run resumes) and may name, as
    `target["drop"]`, columns no part is written with (publish: those no input row fills); `part(target, i)` is
    the path of its i-th part; `close(ctx, manifest, target)` commits it once the stage contract has passed and
    returns what the manifest records under `published`."""

    open: Callable[[Any, list[dict]], dict]
    part: Callable[[dict, int], str]
    close: Callable[[Any, Any, dict], dict]
    # (target, frame) -> the frame as the destination stores it (publish appending: the previous version's schema)
    conform: Callable[[dict, pl.DataFrame], pl.DataFrame] | None = None
    # (ctx, target, i, written frame): what the destination keeps beside each part (publish: its dedup index part),
    # written before the shard's receipt, so a resumed shard has it too
    beside_part: Callable[[Any, dict, int, pl.DataFrame], None] | None = None


Kind = Literal["source", "map", "global", "sink"]


@dataclass(frozen=True)
class Stage:
    """The declaration. `kind`: source (reads input files), map (shard by shard), global (map -> reduce -> apply),
    sink (writes the last stage's rows somewhere lasting: publish). `resources`: gpu stages run one shard at a time
    per device locally and ask Dask for a `GPU` resource. `needs`: importable packages, checked when the stage is
    selected, so a missing optional dependency fails before a run starts, naming the package."""

    name: str
    fn: Callable[..., StageResult]
    params: Callable[[SluiceConfig], BaseModel]
    requires: Mapping[str, pl.DataType]
    adds: Mapping[str, pl.DataType]
    suite: str | Callable[[Any], str]  # file name (no .json) under schemas/suites/, or a function of the params
    resources: Literal["cpu", "gpu"] = "cpu"
    kind: Kind = "map"
    description: str = ""
    plan: Any = None  # kind == "global": partitioned steps (tasks/runtime/plan.Plan), nothing holds the corpus
    sink: SinkSteps | None = None  # kind == "sink" only
    setup: Callable[..., Any] | None = None  # (params) or, with `externals`, (params, ExternalInputs)
    teardown: Callable[[Any], None] | None = None
    externals: Callable[[Any], Externals] | None = None  # files the setup reads, cache folders it writes
    needs: tuple[str, ...] = ()
    # stage-wide checks on the merged stats: [{name, count, rate, warn, max, message?}]; above `max` fails the contract
    rate_checks: Callable[[Stats, int, Any], list[dict]] | None = None
    summarize: Callable[[Stats, Any], dict] | None = None  # a stage-specific section of the manifest
    # problems with these params that only the stage can see (rule codes it knows); checked before a flow starts
    check: Callable[[Any], list[str]] | None = None

    def suite_for(self, params: Any) -> str:
        """The suite that states this stage's contract under these params (some guarantees depend on them)."""
        return self.suite(params) if callable(self.suite) else self.suite

    def call(self, batch: pl.DataFrame, params: Any, loaded: Any = None) -> StageResult:
        """Run the function, handing it what `setup` loaded when the stage has a setup."""
        return self.fn(batch, params, loaded) if self.setup is not None else self.fn(batch, params)

    def missing_packages(self) -> list[str]:
        return [pkg for pkg in self.needs if importlib.util.find_spec(pkg) is None]


class StageInputError(BadInput):
    """The data or the config does not fit what a stage needs (a column its rules read is missing, an earlier stage
    it reads is not in the run): bad input, exit 2, with the message saying what to change."""


class StageFailed(RuntimeError):
    """An exception no stage raises on purpose, raised again naming the stage it came from (exit 1, a bug to
    report), so a numpy or polars error is never mistaken for bad input."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"stage {stage} failed: {type(error).__name__}: {error}")
        self.stage = stage


def deliberate(error: BaseException) -> bool:
    """Errors raised on purpose, with a message for the user: every ValueError subclass (input, config, a
    benchmark, a model pin), and the runtime's own kinds (contract, storage, lock, interrupt)."""
    from tasks.io.interrupt import Interrupted
    from tasks.io.locks import DatasetLocked
    from tasks.io.storage import StorageError
    from tasks.runtime.contracts import ContractError

    if isinstance(error, ValueError):
        return type(error) is not ValueError
    return isinstance(error, ContractError | StorageError | Interrupted | DatasetLocked | OSError | StageFailed)


class StageContractError(TypeError):
    """A stage broke its own declaration (a programming error, not bad data)."""


def check_declaration(stage: Stage, batch: pl.DataFrame, result: StageResult) -> None:
    """Schema half of the contract, checked on every shard: inputs it requires, columns it adds, row accounting."""
    if stage.kind in ("map", "global", "sink"):
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
    if result.rows_synthetic:
        _check_synthetic(stage, result)
    passed = 0 if result.synthetic is None else result.synthetic.height
    if batch.height + result.rows_synthetic != result.kept.height + passed + result.rejected.height:
        raise StageContractError(
            f"stage {stage.name} lost rows: {batch.height} in + {result.rows_synthetic} synthetic != "
            f"{result.kept.height + passed} out + {result.rejected.height} rejected"
        )


def _check_synthetic(stage: Stage, result: StageResult) -> None:
    """Synthetic rows have exactly the kept rows' columns and types, and every provenance column filled; the
    rejected ones are counted exactly."""
    if result.synthetic_rejected:
        marked = (result.rejected["syn_origin"].is_not_null().sum() if "syn_origin" in result.rejected.columns
                  else 0)
        if marked != result.synthetic_rejected:
            raise StageContractError(f"stage {stage.name}: {result.synthetic_rejected} synthetic rows counted as "
                                     f"rejected, {marked} rejected rows carry provenance")
    syn = result.synthetic
    if syn is None:
        return
    if dict(syn.schema) != dict(result.kept.schema):
        extra = sorted(set(syn.columns) ^ set(result.kept.columns))
        raise StageContractError(f"stage {stage.name}: synthetic rows must have the kept rows' schema "
                                 f"(differs in {', '.join(extra) or 'column types'})")
    for col in PROVENANCE:
        if col not in syn.columns:
            raise StageContractError(f"stage {stage.name}: synthetic rows lack provenance column {col!r}")
        if syn[col].null_count():
            raise StageContractError(f"stage {stage.name}: {syn[col].null_count()} synthetic row(s) with a null "
                                     f"{col!r}")
