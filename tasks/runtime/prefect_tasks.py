"""The Prefect side of the runtime: the runner's steps as tasks (retries with backoff, no result caching), and
`run_stage`, which maps a stage's shard tasks with the executor of its kind (`EXECUTORS`: source, map, global,
sink; the one place that dispatches on a stage's kind) and commits it.

Resume is done by the storage commit protocol (receipts and manifests fingerprinted by inputs + params + code
version), not by Prefect's result cache: it survives a kill -9, works the same on S3, and never pickles frames.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.io import layout
from tasks.io.interrupt import Interrupted
from tasks.io.locks import DatasetLocked
from tasks.io.manifests import StageManifest
from tasks.io.readers import InputError, Skipped, resolve_inputs
from tasks.runtime import lifecycle, partitioned, registry, runner
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import ContractError, Contracts
from tasks.runtime.plan import MapStep
from tasks.runtime.progress import StageProgress
from tasks.runtime.stage import Stage, StageContractError, StageFailed, StageInputError, deliberate

log = logging.getLogger("sluice")
NOT_RETRIED = (ContractError, StageContractError, InputError, ValueError, Interrupted, DatasetLocked)


def _retry_unless_permanent(task, task_run, state) -> bool:
    """Retry I/O trouble; a broken contract or bad input fails the same way every time."""
    try:
        state.result()
    except NOT_RETRIED:
        return False
    except Exception:
        return True
    return False


def _io_task(name: str, fn, run_name: str, retries: int = 3):
    """`run_name`: the task run's name in the Prefect UI, from its parameters (`quality-00003-00000`)."""
    return task(fn, name=name, task_run_name=run_name, retries=retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_condition_fn=_retry_unless_permanent,
                cache_policy=NO_CACHE, persist_result=False)


def _gather(futures: list, stage: str, rows_of, what: str = "shards", total: int | None = None) -> list:
    """Results in submission order, with the stage's progress advanced as each task finishes. With `total`, each
    result is a list (a batch of shards) and progress counts its items. `rows_of` None: the units' rows are not
    known (a plan step's receipts), and progress counts units only."""
    from prefect.futures import as_completed

    progress = StageProgress(stage, len(futures) if total is None else total, what, rows=rows_of is not None)
    rows_of = rows_of or (lambda result: 0)
    position = {id(f): i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        for future in as_completed(futures):
            result = future.result()
            results[position[id(future)]] = result
            progress.advance(rows_of(result), 1 if total is None else len(result))
    finally:
        progress.close()
    return results


def _list_inputs(inputs: list[str], s3_options: dict) -> list:
    """The input files, logging every file a folder or glob held that is not read, and why."""
    skipped = Skipped()
    files = resolve_inputs(inputs, s3_options, skipped)
    log.info(f"{len(files)} input file(s)" + (f"; skipped {len(skipped.files)}: " + ", ".join(
        f"{path} ({why})" for path, why in skipped.files[:20]) if skipped.files else ""))
    return files


def _map_shards(ctx: RunContext, stage: Stage, label: str, shards: list[str], objs: list[dict]) -> list:
    return [runner.map_shard(ctx, stage, shard, obj) for shard, obj in zip(shards, objs, strict=True)]


def _sink_shards(ctx: RunContext, stage: Stage, label: str, indexes: list[int], objs: list[dict], target: dict
                 ) -> list:
    return [runner.sink_shard(ctx, stage, index, obj, target) for index, obj in zip(indexes, objs, strict=True)]


def task_batches(objs: list[dict], task_rows: int, workers: int) -> list[list[int]]:
    """Consecutive shards grouped into about `task_rows` rows per task, in a multiple of `workers` groups of equal
    rows, so that no worker idles at the end. A Prefect task run costs 0.05-0.1 s on 2 cores, as much as the work
    of a 1,000-row shard. Each shard in a group keeps its own receipt, so a retried group redoes only the shards it
    had not committed. Shards of `task_rows` rows or more get a task each, as with `task_rows = 0`."""
    total = sum(o.get("rows", 0) for o in objs)
    if not task_rows or not objs or total == 0:
        return [[i] for i in range(len(objs))]
    groups = -(-total // task_rows)
    groups = min(len(objs), -(-groups // workers) * workers)
    batches: list[list[int]] = [[] for _ in range(groups)]
    before = 0
    for i, obj in enumerate(objs):
        batches[min(groups - 1, before * groups // total)].append(i)
        before += obj.get("rows", 0)
    return [b for b in batches if b]


def _label(names: list[str]) -> str:
    """A batch's task run name: `00003-00000` for one shard, `00003-00000..00004-00002` for several."""
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


list_inputs = _io_task("list-inputs", _list_inputs, "list-inputs")
source_group = _io_task("source-group", runner.source_group, "{stage.name}-files-{group_index}")
map_shard = _io_task("map-shard", runner.map_shard, "{stage.name}-{shard}")
map_shards = _io_task("map-shards", _map_shards, "{stage.name}-{label}")
sink_shards = _io_task("sink-shards", _sink_shards, "{stage.name}-{label}")


def _plan_units(ctx: RunContext, stage: Stage, step_name: str, label: str, units: list[str], unit_inputs: list,
                gen: str, counts: dict, upstream: str, published) -> list[dict]:
    return [partitioned.run_unit(ctx, stage, step_name, unit, gen, counts, upstream, unit_input, published)
            for unit, unit_input in zip(units, unit_inputs, strict=True)]


def _plan_apply(ctx: RunContext, stage: Stage, label: str, shards: list[str], objs: list[dict], gen: str,
                counts: dict, upstream: str) -> list:
    return [partitioned.apply_shard(ctx, stage, shard, obj, gen, counts, upstream)
            for shard, obj in zip(shards, objs, strict=True)]


plan_units = _io_task("plan-units", _plan_units, "{stage.name}-{step_name}-{label}")
plan_apply = _io_task("plan-apply", _plan_apply, "{stage.name}-{label}")
commit_stage = _io_task("commit-stage", runner.commit_stage, "{stage.name}-commit", retries=1)


def previous_manifest(ctx: RunContext, stage: Stage) -> StageManifest:
    """Input of a stage run on its own (--stages): the latest committed stage before it in pipeline order."""
    for name in registry.previous_stages(stage.name):
        manifest = ctx.storage.read_record_if_exists(StageManifest, layout.stage_manifest(ctx.run_id, name))
        if manifest is not None:
            return manifest
    raise StageInputError(f"stage {stage.name} needs the output of an earlier stage, and run {ctx.run_id} has none "
                     "committed")


def _resources(stage: Stage):
    """A gpu stage's tasks ask a Dask scheduler for one `GPU` each (workers declare how many they have)."""
    if stage.resources != "gpu":
        return nullcontext()
    from prefect.context import FlowRunContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or type(flow_ctx.task_runner).__name__ != "DaskTaskRunner":
        return nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})


@dataclass
class Mapped:
    """What a stage's shard tasks produced: receipts, a sink's claimed destination, side outputs (a global stage's
    public per-shard outputs, like the score stage's embeddings) and a global stage's plan summary (its steps and
    partitions, for the manifest)."""

    receipts: list
    target: dict | None = None
    side: dict = field(default_factory=dict)
    summary: dict | None = None


def _batched(ctx: RunContext, source: StageManifest) -> tuple[list[str], list[dict], list[list[int]]]:
    """The input shards' names and objects, and the batches of them one task takes."""
    shards = runner.shards_of(source)
    names, objs = [s for s, _ in shards], [o for _, o in shards]
    return names, objs, task_batches(objs, ctx.config.runner.task_rows, ctx.config.runner.workers)


def _run_source(ctx: RunContext, stage: Stage, files: list) -> Mapped:
    """A source stage: file groups, one task each (or, with `--limit`, one group after another until N rows)."""
    if ctx.config.ingest.limit_rows:
        return Mapped(_first_rows(ctx, stage, files, ctx.config.ingest.limit_rows))
    groups = runner.file_groups(files, ctx.config.runner.workers)
    futures = source_group.with_options(retries=ctx.config.runner.retries).map(
        ctx, stage, list(range(len(groups))), [[files[i] for i in g] for g in groups])
    per_group = _gather(futures, stage.name, lambda rs: sum(r.rows_in for r in rs), "file groups")
    return Mapped([r for rs in per_group for r in rs])


def _run_map(ctx: RunContext, stage: Stage, source: StageManifest) -> Mapped:
    """A map stage: batches of shards, one task each."""
    names, objs, batches = _batched(ctx, source)
    futures = map_shards.with_options(retries=ctx.config.runner.retries).map(
        ctx, stage, [_label([names[i] for i in b]) for b in batches], [[names[i] for i in b] for b in batches],
        [[objs[i] for i in b] for b in batches])
    return Mapped(_flat(_gather(futures, stage.name, _batch_rows, total=len(names))))


def _run_sink(ctx: RunContext, stage: Stage, source: StageManifest) -> Mapped:
    """A sink: claim the destination, then batches of shards, each written as the destination's parts."""
    names, objs, batches = _batched(ctx, source)
    target = stage.sink.open(ctx, objs)
    indexes = [_label([str(i) for i in b]) for b in batches]  # `publish-3`: the part it writes
    futures = sink_shards.with_options(retries=ctx.config.runner.retries).map(
        ctx, stage, indexes, batches, [[objs[i] for i in b] for b in batches], unmapped(target))
    return Mapped(_flat(_gather(futures, stage.name, _batch_rows, total=len(names))), target=target)


def _run_global(ctx: RunContext, stage: Stage, source: StageManifest) -> Mapped:
    """A global stage: its plan's partitioned steps, then the apply map (tasks/runtime/partitioned.py)."""
    names, objs, batches = _batched(ctx, source)
    labels = [_label([names[i] for i in b]) for b in batches]
    receipts, side, summary = _plan_receipts(ctx, stage, source, names, objs, batches, labels,
                                             ctx.config.runner.retries)
    return Mapped(receipts, side=side, summary=summary)


EXECUTORS = {"source": _run_source, "map": _run_map, "global": _run_global, "sink": _run_sink}


def _plan_receipts(ctx: RunContext, stage: Stage, source: StageManifest, names: list[str], objs: list[dict],
                   batches: list[list[int]], labels: list[str], retries: int) -> tuple:
    """A partitioned global stage (tasks/runtime/partitioned.execute): map steps as tasks over the same shard
    batches as a map stage, reduce steps as tasks over the partitions that hold rows (spread over the workers),
    a combine step as one task, then the apply map."""
    workers = ctx.config.runner.workers

    def run_units(step, units, unit_inputs, gen, counts, upstream, published):
        runs = plan_units.with_options(retries=retries)
        if isinstance(step, MapStep):  # the shard batches of the stage's input, as for a map stage
            position = {u: i for i, u in enumerate(units)}
            groups = [[units[position[names[i]]] for i in b] for b in batches]
        else:
            groups = [g for g in (units[i::workers] for i in range(min(len(units), workers))) if g]
        given = dict(zip(units, unit_inputs, strict=True))
        futures = runs.map(ctx, stage, step.name, [_label(g) for g in groups], groups,
                           [[given[u] for u in g] for g in groups], gen, unmapped(counts), upstream,
                           unmapped(published))
        what = "shards" if isinstance(step, MapStep) else "partitions"
        return _flat(_gather(futures, f"{stage.name} {step.name}", None, what, total=len(units)))

    def run_apply(gen, counts, upstream):
        futures = plan_apply.with_options(retries=retries).map(
            ctx, stage, labels, [[names[i] for i in b] for b in batches], [[objs[i] for i in b] for b in batches],
            gen, unmapped(counts), upstream)
        return _flat(_gather(futures, stage.name, _batch_rows, total=len(names)))

    return partitioned.execute(ctx, stage, source, run_units, run_apply)


def _batch_rows(receipts: list) -> int:
    return sum(r.rows_in for r in receipts)


def _flat(batches: list[list]) -> list:
    return [item for batch in batches for item in batch]


def run_stage(ctx: RunContext, stage: Stage, inputs: list[str], previous: StageManifest | None,
              contracts: Contracts) -> StageManifest:
    """One stage of a run: skipped when already committed for these inputs and params, otherwise its shard tasks
    mapped by kind, then the commit task. What the stage's setup loaded is freed once it is committed."""
    started = time.perf_counter()
    if stage.kind == "source":  # what the stage reads: input files, or the previous stage's committed parts
        feed = list_inputs(inputs, ctx.s3_options)
        stage_inputs = [f.as_dict() for f in feed]
    else:
        feed = previous or previous_manifest(ctx, stage)
        stage_inputs = [o.as_json() for o in feed.outputs]
    manifest = runner.committed_manifest(ctx, stage, stage_inputs)
    if manifest is not None:
        log.info(f"{stage.name}: already committed for these inputs and params, skipped")
        if stage.plan is not None and not ctx.config.runner.keep_work:
            partitioned.clean_work(ctx, stage)  # a run killed between the commit and the cleaning left them
        return manifest
    try:
        with _resources(stage):
            mapped = EXECUTORS[stage.kind](ctx, stage, feed)
        manifest = commit_stage(ctx, stage, mapped.receipts, stage_inputs, contracts, started,
                                sink_target=mapped.target, side_outputs=mapped.side, plan_summary=mapped.summary)
        if stage.plan is not None and not ctx.config.runner.keep_work:
            partitioned.clean_work(ctx, stage)
        return manifest
    except Exception as exc:
        if deliberate(exc):
            raise
        raise StageFailed(stage.name, exc) from exc
    finally:
        lifecycle.release(stage.name)


def _first_rows(ctx: RunContext, stage: Stage, files: list, limit: int) -> list:
    """`--limit N`: file groups one after another, each given what the ones before left of N, until N rows are
    read. Progress counts rows toward the limit."""
    receipts, left = [], limit
    progress = StageProgress(stage.name, limit, "rows")
    groups = runner.file_groups(files, 1)
    for index, group in enumerate(groups):
        if left <= 0:
            break
        read = source_group.with_options(retries=ctx.config.runner.retries).submit(
            ctx, stage, index, [files[i] for i in group], left).result()
        receipts += read
        got = sum(r.rows_in for r in read)
        left -= got
        progress.advance(got, got)
    progress.close()
    log.info(f"{stage.name}: read the first {limit - max(left, 0):,} rows (--limit {limit:,})")
    return receipts


def run_replayed_stage(ctx: RunContext, stage: Stage, replay: dict, contracts: Contracts) -> StageManifest:
    """The first stage of a replay run: the original kept rows (carried) plus the replayed rows, run again."""
    from tasks.ops.replay import replay_batch

    started = time.perf_counter()
    rel = layout.replay_input(ctx.run_id, stage.name)
    original = ctx.storage.read_record(StageManifest, layout.stage_manifest(replay["run_id"], stage.name))
    if ctx.storage.exists(rel):  # resumed: the replay input was fixed when the run started
        batch = ctx.storage.read_parquet(rel)
    else:
        batch = replay_batch(ctx.storage, replay["run_id"], stage, replay["reason"], ctx.config.ingest,
                             ctx.s3_options)
    obj = ctx.storage.write_parquet(rel, batch).as_json()
    log.info(f"{stage.name}: replaying {batch.height} row(s) of run {replay['run_id']} with reason "
             f"{replay['reason']!r}, on top of its {original.rows_out} kept row(s)")
    stage_inputs = [*(o.as_json() for o in original.outputs), obj]
    manifest = runner.committed_manifest(ctx, stage, stage_inputs)
    if manifest is not None:
        return manifest
    try:
        future = map_shard.with_options(retries=ctx.config.runner.retries).submit(ctx, stage, "replay-00000", obj)
        receipts = [runner.carried_receipt(original), future.result()]
        return commit_stage(ctx, stage, receipts, stage_inputs, contracts, started, replay_of=replay)
    finally:
        lifecycle.release(stage.name)
