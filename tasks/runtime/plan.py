"""Partitioned global stages: a plan of map, reduce and combine steps joined by shuffles through storage.

A global stage (dedup, score, select) needs the whole corpus before it decides, but no step may hold it. Its plan
is a sequence of steps (datatrove's MinHash and NeMo Curator's LSH -> shuffle -> Jaccard -> connected components
work this way):

  MapStep      once per shard: reads the shard's rows and what earlier steps routed to that shard;
  ReduceStep   once per partition of a shuffle: reads the rows every map step wrote for that partition;
  CombineStep  once, only where the method needs it (connected components, fitting centroids on a sample): reads
               shuffles one partition at a time, or a bounded sample;
  apply        once per shard, like a map stage: the shard's rows and the decisions routed to it -> kept/rejected.

A step function returns named frames, and the name says where each goes:
  a declared Shuffle's name   rows with `_p` (their partition, from `partition(...)`), written per partition;
  any other name, with `_shard`  rows routed to that shard (its decisions), read by later map steps and apply;
  `side:<folder>`             a map step's public per-shard output (the score stage's embeddings);
  `global:<name>`             a combine step's small result (centroids, a trained head), read by later steps;
  `artifact:<file>`           bytes kept with the run (a trained head), listed in the manifest.

The runner (tasks/runtime/partitioned.py) sets each shuffle's partition count from the rows and its
`bytes_per_row` against `runner.task_memory`, writes everything under the stage's work folder, splits a partition
that would exceed the budget (by a hash of the reduce step's `key`, so groups stay whole), and resumes any step
by fingerprint. `run_in_memory` runs the same plan on frames, for `stage.fn(df)` and unit tests: both executors
call the same functions with the same inputs, so a plan tested in memory is the plan that runs on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

PART = "_p"  # a shuffled row's partition
SHARD = "_shard"  # a routed row's destination shard
SUB = "_sub"  # a shuffled row's sub-partition (a hash of the reduce key), for splitting a partition


def partition(key: pl.Expr, partitions: int, seed: int = 7) -> pl.Expr:
    """The partition of a row by its key: the same key, the same partition, in every map step and executor."""
    return (key.hash(seed=seed) % max(partitions, 1)).cast(pl.Int32).alias(PART)


@dataclass(frozen=True)
class Shuffle:
    name: str
    bytes_per_row: int | Callable[[Any], int]  # of the stage's input rows in this shuffle (or of the params)
    key: str  # the column a reduce groups by: a split partition keeps each key's rows together
    partitions: int | None = None  # a fixed count (a bounded sample for a combine step: 1)


@dataclass(frozen=True)
class MapStep:
    name: str
    fn: Callable[..., dict[str, Any]]  # (batch, inputs: StepInputs, params[, loaded]) -> outputs
    reads: tuple[str, ...] = ()  # routed frames of this shard
    loads: bool = False  # gets what the stage's setup loaded (a model)


@dataclass(frozen=True)
class ReduceStep:
    name: str
    shuffle: str
    fn: Callable[..., dict[str, Any]]  # (rows, inputs: StepInputs, params) -> outputs
    also: tuple[str, ...] = ()  # other shuffles whose same partition it reads whole (in `inputs.routed`)


@dataclass(frozen=True)
class CombineStep:
    name: str
    fn: Callable[..., dict[str, Any]]  # (inputs: StepInputs, params[, loaded]) -> outputs
    loads: bool = False


Step = MapStep | ReduceStep | CombineStep


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    shuffles: tuple[Shuffle, ...]
    apply: Callable[..., Any]  # (batch, routed: dict[str, DataFrame], params) -> StageResult
    apply_reads: tuple[str, ...]
    # (params, published index) -> names of the steps that run (a method switched off skips its steps); None: all
    active: Callable[[Any, Any], set[str]] | None = None
    routed_schemas: dict[str, dict[str, pl.DataType]] = field(default_factory=dict)  # an empty route's columns
    against_published: bool = False  # steps get the dataset's published index (tasks/io/versions.PublishedIndex)

    def shuffle(self, name: str) -> Shuffle | None:
        return next((s for s in self.shuffles if s.name == name), None)

    def active_steps(self, params: Any, published: Any = None) -> list[Step]:
        wanted = self.active(params, published) if self.active else None
        return [s for s in self.steps if wanted is None or s.name in wanted]


@dataclass
class StepInputs:
    """What a step function gets besides its rows: partition counts, routed frames of its shard, small global
    results, a way to stream a shuffle or side outputs, and the published index (against_published stages)."""

    partitions: dict[str, int]
    unit: str = ""  # the shard (map) or partition (reduce) this call is for
    rows: int = 0  # rows of the stage's input (every shard)
    routed: dict[str, pl.DataFrame] = field(default_factory=dict)
    globals: dict[str, pl.DataFrame] = field(default_factory=dict)
    stream: Callable[[str], Iterator[pl.DataFrame]] | None = None  # combine: a shuffle, one partition at a time
    side: Callable[[str], Iterator[tuple[str, pl.DataFrame]]] | None = None  # (shard, frame) of a side output
    own_side: Callable[[str], pl.DataFrame] | None = None  # map: this shard's side output of an earlier step
    # map: (stage, folder) -> this shard's side output of an earlier stage of the run (None when it has none)
    other_side: Callable[[str, str], pl.DataFrame | None] | None = None
    published: Any = None
    loaded: Any = None

    def route(self, name: str, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
        frame = self.routed.get(name)
        if frame is not None and frame.width:
            return frame
        return pl.DataFrame(schema=schema or {})

    def count(self, name: str) -> int:
        return self.partitions[name]


def call_step(step: Step, params: Any, inputs: StepInputs, rows: pl.DataFrame | None = None) -> dict[str, Any]:
    if isinstance(step, CombineStep):
        return step.fn(inputs, params, inputs.loaded) if step.loads else step.fn(inputs, params)
    if isinstance(step, MapStep) and step.loads:
        return step.fn(rows, inputs, params, inputs.loaded)
    return step.fn(rows, inputs, params)


def kind_of(name: str, plan: Plan) -> str:
    """Where a step's output goes: shuffle, side, global, artifact or route."""
    if plan.shuffle(name) is not None:
        return "shuffle"
    for prefix in ("side", "global", "artifact"):
        if name.startswith(prefix + ":"):
            return prefix
    return "route"


# ------------------------------------------------------------------------------------------ in-memory executor

def run_in_memory(plan: Plan, shards: list[pl.DataFrame], params: Any, loaded: Any = None, published: Any = None,
                  partitions: int = 2) -> tuple[list[Any], dict[str, dict[str, pl.DataFrame]], dict[str, bytes]]:
    """The whole plan on frames: each of `shards` is a shard, every shuffle has `partitions` partitions. Returns the
    apply results per shard, the side outputs and the artifacts."""
    names = [f"{i:05d}" for i in range(len(shards))]
    counts = {s.name: s.partitions or partitions for s in plan.shuffles}
    total = sum(b.height for b in shards)
    shuffled: dict[str, dict[int, list[pl.DataFrame]]] = {}
    routed: dict[str, dict[str, list[pl.DataFrame]]] = {}
    globals_: dict[str, pl.DataFrame] = {}
    side: dict[str, dict[str, pl.DataFrame]] = {}
    artifacts: dict[str, bytes] = {}

    def keep(outputs: dict[str, Any], shard: str | None = None) -> None:
        for name, value in outputs.items():
            kind = kind_of(name, plan)
            if kind == "artifact":
                artifacts[name.split(":", 1)[1]] = value
            elif kind == "global":
                globals_[name.split(":", 1)[1]] = value
            elif kind == "side":
                side.setdefault(name.split(":", 1)[1], {})[shard] = value
            elif kind == "shuffle":
                for (p,), part in value.partition_by(PART, as_dict=True).items():
                    shuffled.setdefault(name, {}).setdefault(int(p), []).append(part.drop(PART))
            else:
                if value.height == 0:
                    continue
                for (s,), part in value.partition_by(SHARD, as_dict=True).items():
                    routed.setdefault(name, {}).setdefault(str(s), []).append(part.drop(SHARD))

    def routed_for(shard: str, wanted: tuple[str, ...]) -> dict[str, pl.DataFrame]:
        out = {}
        for name in wanted:
            frames = routed.get(name, {}).get(shard, [])
            out[name] = (pl.concat(frames, how="diagonal_relaxed") if frames else
                         pl.DataFrame(schema=plan.routed_schemas.get(name, {})))
        return out

    def stream(name: str) -> Iterator[pl.DataFrame]:
        for p in range(counts[name]):
            frames = shuffled.get(name, {}).get(p, [])
            if frames:
                yield pl.concat(frames, how="diagonal_relaxed")

    def side_stream(folder: str) -> Iterator[tuple[str, pl.DataFrame]]:
        yield from sorted(side.get(folder, {}).items())

    for step in plan.active_steps(params, published):
        if isinstance(step, MapStep):
            for shard, batch in zip(names, shards, strict=True):
                inputs = StepInputs(counts, shard, total, routed_for(shard, step.reads), globals_,
                                    own_side=lambda folder, s=shard: side[folder][s], published=published,
                                    loaded=loaded)
                keep(_with_shard(_as_one(call_step(step, params, inputs, batch)), shard, plan), shard)
        elif isinstance(step, ReduceStep):
            for p in range(counts[step.shuffle]):
                frames = shuffled.get(step.shuffle, {}).get(p, [])
                if not frames:
                    continue
                also = {name: pl.concat(shuffled.get(name, {}).get(p, [pl.DataFrame()]), how="diagonal_relaxed")
                        for name in step.also}
                inputs = StepInputs(counts, f"p{p:05d}", total, also, globals_, published=published, loaded=loaded)
                keep(_as_one(call_step(step, params, inputs, pl.concat(frames, how="diagonal_relaxed"))))
        else:
            inputs = StepInputs(counts, "combine", total, {}, globals_, stream=stream, side=side_stream,
                                published=published, loaded=loaded)
            keep(_as_one(call_step(step, params, inputs)))
    results = [plan.apply(batch, routed_for(shard, plan.apply_reads), params)
               for shard, batch in zip(names, shards, strict=True)]
    return results, side, artifacts


def _as_one(produced: Any) -> dict[str, Any]:
    """A step may return its outputs at once or yield them in pieces (bounded memory); in memory they are one."""
    if isinstance(produced, dict):
        return produced
    merged: dict[str, Any] = {}
    for piece in produced:
        for name, value in piece.items():
            merged[name] = (pl.concat([merged[name], value], how="diagonal_relaxed")
                            if name in merged and isinstance(value, pl.DataFrame) else value)
    return merged


def _with_shard(outputs: dict[str, Any], shard: str, plan: Plan) -> dict[str, Any]:
    """A map step's shuffled rows carry the shard they came from, so a reduce can route its decisions back."""
    out = {}
    for name, value in outputs.items():
        if kind_of(name, plan) == "shuffle" and SHARD not in value.columns:
            value = value.with_columns(pl.lit(shard).alias(SHARD))
        out[name] = value
    return out
