"""The storage executor of partitioned global stages (tasks/runtime/plan.py): each step unit as a resumable task.

Every unit (a shard of a map step, a partition of a reduce step, a combine) reads only its own inputs from the run's
storage, writes its outputs there (Parquet, atomically), then its receipt; a unit whose receipt matches its
fingerprint is not redone, so a run killed anywhere resumes with byte-identical results. Working files live under
`runs/<id>/<stage>/_work/<generation>/`:

  shuffle/<name>/p-<p>/<unit>-<seq>.parquet    rows of partition p, from each unit that had some
  route/<name>/<shard>/<unit>-<seq>.parquet    rows routed to a shard (its decisions)
  global/<name>.parquet                        a combine step's small result
  receipts/<step>/<unit>.json                  the unit's commit marker

The generation is a fingerprint of the stage's inputs, params, code and partition counts. Memory per unit is
bounded by `runner.task_memory`: partition counts follow from the rows and each shuffle's bytes per row, and a
partition whose files would still exceed the budget is read and reduced in sub-partitions (by a hash of the
shuffle's key, so every key's rows stay together).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import polars as pl

from tasks.io import interrupt, layout
from tasks.io.manifests import DataObject, Receipt, StageManifest
from tasks.runtime import lifecycle
from tasks.runtime.context import RunContext
from tasks.runtime.fingerprints import fingerprint, reuse_or_redo
from tasks.runtime.plan import (
    PART,
    SHARD,
    SUB,
    CombineStep,
    MapStep,
    Plan,
    ReduceStep,
    Step,
    StepInputs,
    call_step,
    kind_of,
)
from tasks.runtime.stage import Stage

log = logging.getLogger("sluice")
DECODED_PER_STORED = 4  # Parquet (zstd) bytes -> bytes in memory, and working room, for the split decision
MAX_PARTITIONS = 4096


def partition_counts(ctx: RunContext, stage: Stage, rows: int) -> dict[str, int]:
    """Each shuffle's partition count: its rows times bytes per row, over a quarter of the task memory budget (room
    for the reduce's own work), rounded up to a multiple of the workers; `runner.partitions` forces one."""
    workers = ctx.config.runner.workers
    forced = ctx.config.runner.partitions
    budget = ctx.config.runner.task_memory // 4
    params = stage.params(ctx.config)
    counts = {}
    for shuffle in stage.plan.shuffles:
        if shuffle.partitions:
            counts[shuffle.name] = shuffle.partitions
            continue
        per_row = shuffle.bytes_per_row(params) if callable(shuffle.bytes_per_row) else shuffle.bytes_per_row
        need = forced or max(1, math.ceil(rows * per_row / budget))
        counts[shuffle.name] = min(MAX_PARTITIONS, -(-need // workers) * workers if not forced else need)
    return counts


def generation(stage_fp: str, counts: dict[str, int]) -> str:
    return fingerprint(stage_fp, sorted(counts.items()))[:16]


def digest(receipts: list[dict]) -> str:
    """What a step handed on: the fingerprints of all its units (they depend on inputs only, so a unit redone
    after a crash keeps the digest, and everything downstream of it stays valid)."""
    return fingerprint(sorted(r["fingerprint"] for r in receipts))


class Work:
    """Paths and I/O of one stage generation's working files."""

    def __init__(self, ctx: RunContext, stage: Stage, gen: str, counts: dict[str, int], rows: int = 0):
        self.ctx, self.stage, self.gen, self.counts, self.rows = ctx, stage, gen, counts, rows
        self.plan: Plan = stage.plan

    def rel(self, *parts: str) -> str:
        return layout.stage_work(self.ctx.run_id, self.stage.name, self.gen, *parts)

    def write_outputs(self, unit: str, produced: Any) -> dict[str, list[dict]]:
        """Write what a step returned (a dict, or a generator of dicts for output produced in pieces)."""
        written: dict[str, list[dict]] = {}
        pieces = [produced] if isinstance(produced, dict) else produced
        for seq, outputs in enumerate(pieces):
            interrupt.check()
            for name, value in outputs.items():
                for obj in self._write(unit, seq, name, value):
                    written.setdefault(name, []).append(obj)
        return written

    def _write(self, unit: str, seq: int, name: str, value: Any) -> list[dict]:
        storage, kind = self.ctx.storage, kind_of(name, self.plan)
        base = name.split(":", 1)[-1]
        if kind == "artifact":
            rel = layout.stage_artifact(self.ctx.run_id, self.stage.name, base)
            storage.write_bytes(rel, value)
            from tasks.io.storage import sha256_bytes

            return [{"path": rel, "rows": 0, "sha256": sha256_bytes(value), "bytes": len(value)}]
        if kind == "global":
            return [storage.write_parquet(self.rel("global", f"{base}.parquet"), value).as_json()]
        if kind == "side":
            return [storage.write_parquet(layout.features(self.ctx.run_id, self.stage.name, unit, base),
                                          value).as_json()]
        if value.height == 0:
            return []
        if kind == "shuffle":
            key = self.plan.shuffle(name).key
            value = value.with_columns((pl.col(key).hash(seed=99) % 65536).cast(pl.Int32).alias(SUB))
            return [storage.write_parquet(self.rel("shuffle", name, f"p-{int(p):05d}", f"{unit}-{seq:03d}.parquet"),
                                          part.drop(PART)).as_json()
                    for (p,), part in sorted(value.partition_by(PART, as_dict=True).items())]
        return [storage.write_parquet(self.rel("route", name, str(s), f"{unit}-{seq:03d}.parquet"),
                                      part.drop(SHARD)).as_json()
                for (s,), part in sorted(value.partition_by(SHARD, as_dict=True).items())]

    def _files(self, *folder: str) -> list[str]:
        rel = self.rel(*folder)
        return [f"{rel}/{n}" for n in self.ctx.storage.listdir(rel) if n.endswith(".parquet")]

    def routed(self, name: str, shard: str) -> pl.DataFrame:
        files = self._files("route", name, shard)
        if not files:
            return pl.DataFrame(schema=self.plan.routed_schemas.get(name, {}))
        return pl.concat([self.ctx.storage.read_parquet(f) for f in files], how="diagonal_relaxed")

    def partition_files(self, name: str, p: int) -> list[str]:
        return self._files("shuffle", name, f"p-{p:05d}")

    def partition_bytes(self, files: list[str]) -> int:
        storage = self.ctx.storage
        return sum(storage.fs.size(storage._path(f)) for f in files)

    def read_partition(self, files: list[str], split: int = 1, part: int = 0) -> pl.DataFrame:
        frames = []
        for f in files:
            data = self.ctx.storage.read_bytes(f)
            lazy = pl.scan_parquet(io.BytesIO(data))
            if split > 1:
                lazy = lazy.filter(pl.col(SUB) % split == part)
            frames.append(lazy.drop(SUB).collect())
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def stream(self, name: str) -> Iterator[pl.DataFrame]:
        for p in range(self.counts[name]):
            files = self.partition_files(name, p)
            if files:
                yield self.read_partition(files)

    def globals(self) -> dict[str, pl.DataFrame]:
        rel = self.rel("global")
        return {n.removesuffix(".parquet"): self.ctx.storage.read_parquet(f"{rel}/{n}")
                for n in self.ctx.storage.listdir(rel) if n.endswith(".parquet")}

    def side(self, folder: str) -> Iterator[tuple[str, pl.DataFrame]]:
        rel = layout.stage_dir(self.ctx.run_id, self.stage.name) + f"/{folder}"
        for name in self.ctx.storage.listdir(rel):
            if name.endswith(".parquet"):
                yield layout.shard_of_part(name), self.ctx.storage.read_parquet(f"{rel}/{name}")

    def own_side(self, shard: str, folder: str) -> pl.DataFrame:
        return self.ctx.storage.read_parquet(layout.features(self.ctx.run_id, self.stage.name, shard, folder))

    def other_side(self, shard: str, stage: str, folder: str) -> pl.DataFrame | None:
        rel = layout.features(self.ctx.run_id, stage, shard, folder)
        return self.ctx.storage.read_parquet(rel) if self.ctx.storage.exists(rel) else None


def _inputs(work: Work, unit: str, published: Any, routed: dict | None = None) -> StepInputs:
    params = work.stage.params(work.ctx.config)
    loaded = (lifecycle.loaded_for(work.stage, params, work.ctx.s3_options) if work.stage.setup is not None
              else None)
    return StepInputs(work.counts, unit, work.rows, routed or {}, work.globals(), stream=work.stream,
                      side=work.side, own_side=lambda folder: work.own_side(unit, folder),
                      other_side=lambda stage, folder: work.other_side(unit, stage, folder), published=published,
                      loaded=loaded)


def run_unit(ctx: RunContext, stage: Stage, step_name: str, unit: str, gen: str, counts: dict[str, int],
             upstream: str, unit_input: Any = None, published: Any = None) -> dict:
    """One unit of one step, resumable: its receipt (fingerprint, outputs written, seconds)."""
    work = Work(ctx, stage, gen, counts, counts.get("_rows", 0))
    step: Step = next(s for s in stage.plan.steps if s.name == step_name)
    params = stage.params(ctx.config)
    fp = fingerprint(gen, step_name, unit, unit_input, upstream)
    receipt_rel = work.rel("receipts", step_name, f"{unit}.json")

    def redo() -> dict:
        interrupt.check()
        started = time.perf_counter()
        if isinstance(step, MapStep):
            rows = ctx.storage.read_parquet(unit_input["path"])
            inputs = _inputs(work, unit, published, {n: work.routed(n, unit) for n in step.reads})
            with lifecycle.device_slot(stage) if step.loads else _nothing():
                produced = _with_shard(call_step(step, params, inputs, rows), unit, work.plan)
                written = work.write_outputs(unit, produced)
        elif isinstance(step, ReduceStep):
            written, split = _reduce(work, step, params, int(unit.removeprefix("p")), unit, published)
        else:
            inputs = _inputs(work, unit, published)
            with lifecycle.device_slot(stage) if step.loads else _nothing():
                written = work.write_outputs(unit, call_step(step, params, inputs))
        receipt = {"fingerprint": fp, "unit": unit, "step": step_name, "outputs": written,
                   "seconds": round(time.perf_counter() - started, 4), "peak_rss_mb": peak_rss_mb()}
        if isinstance(step, ReduceStep) and split > 1:
            receipt["split"] = split
        ctx.storage.write_json(receipt_rel, receipt)
        return receipt

    receipt, _ = reuse_or_redo(lambda: ctx.storage.read_json_if_exists(receipt_rel), fp,
                               lambda r: r.get("fingerprint"), redo)
    return receipt


def _reduce(work: Work, step: ReduceStep, params: Any, p: int, unit: str, published: Any
            ) -> tuple[dict[str, list[dict]], int]:
    """A partition, reduced whole or, when its files would exceed the memory budget, in sub-partitions."""
    files = work.partition_files(step.shuffle, p)
    if not files:
        return {}, 1
    budget = work.ctx.config.runner.task_memory
    split = max(1, math.ceil(work.partition_bytes(files) * DECODED_PER_STORED / budget))
    if split > 1:
        log.info(f"{work.stage.name} {step.name} partition {p}: {len(files)} files over the task memory budget "
                 f"({budget:,} bytes); reduced in {split} parts")
    also = {name: work.read_partition(work.partition_files(name, p)) for name in step.also}
    inputs = _inputs(work, unit, published, also)

    def pieces():
        for part in range(split):
            rows = work.read_partition(files, split, part)
            if rows.height:
                produced = call_step(step, params, inputs, rows)
                yield from ([produced] if isinstance(produced, dict) else produced)

    return work.write_outputs(unit, pieces()), split


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _with_shard(produced: Any, shard: str, plan: Plan) -> Any:
    from tasks.runtime.plan import _with_shard as tag

    if isinstance(produced, dict):
        return tag(produced, shard, plan)
    return (tag(p, shard, plan) for p in produced)


def execute(ctx: RunContext, stage: Stage, source: StageManifest, run_units, run_apply) -> tuple[list, dict, dict]:
    """The plan's steps in order, then the apply map; `run_units(step, units, unit_inputs, gen, counts, upstream,
    published)` runs a step's units (as Prefect tasks, or in a thread pool) and returns their receipts;
    `run_apply(gen, counts, upstream)` the apply map's shard receipts. Each step's digest feeds the next."""
    from tasks.io.versions import published_index
    from tasks.runtime.runner import shards_of, stage_fingerprint

    params = stage.params(ctx.config)
    plan: Plan = stage.plan
    published = None
    if plan.against_published:
        published = published_index(ctx.storage, ctx.config.publish.dataset,
                                     append=ctx.config.publish.mode == "append", check=ctx.config.publish.verify_base)
    counts = partition_counts(ctx, stage, input_rows(source))
    gen = generation(stage_fingerprint(ctx, stage, [o.as_json() for o in source.outputs]), counts)
    counts = {**counts, "_rows": input_rows(source)}  # what steps see as `inputs.rows`
    shards = shards_of(source)
    upstream = gen
    summary, side, made = [], {}, []
    for step in plan.active_steps(params, published):
        if isinstance(step, MapStep):
            units, unit_inputs = [s for s, _ in shards], [o for _, o in shards]
        elif isinstance(step, ReduceStep):
            units = reduce_units(ctx, stage, step, gen, counts)
            unit_inputs = [None] * len(units)
        else:
            units, unit_inputs = ["combine"], [None]
        receipts = run_units(step, units, unit_inputs, gen, counts, upstream, published) if units else []
        summary.append(step_summary(step, receipts))
        side.update(side_outputs(receipts))
        made += artifacts(receipts)
        upstream = fingerprint(step.name, digest(receipts) if receipts else upstream)
    receipts = run_apply(gen, counts, upstream)
    if made:
        side["artifacts"] = made
    log.debug(f"{stage.name}: " + "; ".join(f"{s['step']} {s['units']} unit(s) {s['seconds']} s "
                                          f"{s['bytes_written'] / 1e6:,.1f} MB" for s in summary))
    return receipts, side, {"steps": summary, "partitions": counts}


def reduce_units(ctx: RunContext, stage: Stage, step: ReduceStep, gen: str, counts: dict[str, int]) -> list[str]:
    """The partitions of a step's shuffle that hold rows (one listing of the shuffle folder)."""
    work = Work(ctx, stage, gen, counts)
    names = ctx.storage.listdir(work.rel("shuffle", step.shuffle))
    return [f"p{int(n.removeprefix('p-')):05d}" for n in names if n.startswith("p-")]


def apply_shard(ctx: RunContext, stage: Stage, shard: str, input_obj: dict, gen: str, counts: dict[str, int],
                upstream: str) -> Receipt:
    """The final map: the shard's rows and the decisions routed to it, through `plan.apply`, as a shard."""
    from tasks.runtime.runner import process_shard

    work = Work(ctx, stage, gen, counts)

    def load() -> pl.DataFrame:
        return ctx.storage.read_parquet(input_obj["path"])

    routed = {}

    def applied_fn(batch: pl.DataFrame, params: Any):
        routed.update({n: work.routed(n, shard) for n in stage.plan.apply_reads})
        return stage.plan.apply(batch, routed, params)

    return process_shard(ctx, stage, shard, load, [input_obj, {"plan": upstream}], call=applied_fn)


def side_outputs(receipts: list[dict]) -> dict[str, list[dict]]:
    """Public per-shard outputs (`side:<folder>`) of a map step, in shard order, for the manifest."""
    out: dict[str, list[dict]] = {}
    for r in sorted(receipts, key=lambda r: r["unit"]):
        for name, objs in r["outputs"].items():
            if name.startswith("side:"):
                out.setdefault(name.split(":", 1)[1], []).extend(objs)
    return out


def artifacts(receipts: list[dict]) -> list[dict]:
    return [o for r in receipts for name, objs in r["outputs"].items() if name.startswith("artifact:") for o in objs]


def step_summary(step: Step, receipts: list[dict]) -> dict:
    """Per step, for the manifest: units, seconds, and what it wrote (rows, bytes and files spilled to storage)."""
    objs = [o for r in receipts for objs in r["outputs"].values() for o in objs]
    return {"step": step.name, "kind": type(step).__name__.removesuffix("Step").lower(), "units": len(receipts),
            "seconds": round(sum(r.get("seconds", 0.0) for r in receipts), 3),
            "rows_written": sum(o.get("rows", 0) for o in objs), "bytes_written": sum(o.get("bytes", 0) for o in objs),
            "files_written": len(objs),
            "partitions_split": sum(1 for r in receipts if r.get("split", 1) > 1),
            "peak_rss_mb": max((r.get("peak_rss_mb", 0) for r in receipts), default=0)}


def peak_rss_mb() -> int:
    """The process's peak resident memory so far (MB). Monotonic, so across a stage's steps the first step whose
    units report the final value is where the peak was reached; with several units per process it is shared."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def clean_work(ctx: RunContext, stage: Stage) -> None:
    """After the stage is committed its working files go (they can be as large as the features)."""
    ctx.storage.delete(layout.stage_dir(ctx.run_id, stage.name) + "/_work")


def input_rows(manifest: StageManifest) -> int:
    return sum(o.rows for o in manifest.outputs)


__all__ = ["CombineStep", "DataObject", "MapStep", "ReduceStep", "Work", "apply_shard", "artifacts", "clean_work",
           "digest", "generation", "input_rows", "partition_counts", "reduce_units", "run_unit", "side_outputs",
           "step_summary"]
