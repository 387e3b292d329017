"""The runner: everything a stage does not do — shard I/O, resume, the contract, the manifest (commit marker).

Every step here is idempotent: it first looks for its own commit marker (a shard receipt, a features or decisions
receipt, the stage manifest) and reuses it when the fingerprint (inputs + params + code version) matches. Paths come
from tasks/io/layout.py, records from tasks/io/manifests.py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import polars as pl

from tasks.io import interrupt, layout
from tasks.io.manifests import FORMAT, DataObject, Receipt, StageManifest
from tasks.io.readers import InputFile, detect_format, read_batches
from tasks.io.readers.frames import Rechunker
from tasks.io.storage import sha256_bytes
from tasks.runtime import edits, lifecycle
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import ContractError, Contracts, validate_shard, validate_stage
from tasks.runtime.fingerprints import fingerprint, reuse_or_redo
from tasks.runtime.stage import Stage, StageContractError, StageResult, check_declaration
from tasks.runtime.stats import Stats

log = logging.getLogger("sluice")


def params_json(stage: Stage, ctx: RunContext) -> dict:
    return stage.params(ctx.config).model_dump(mode="json")


def stage_fingerprint(ctx: RunContext, stage: Stage, inputs: list[dict]) -> str:
    return fingerprint(stage.name, inputs, params_json(stage, ctx), ctx.code_version)


def _reason_examples(rejected: pl.DataFrame, limit: int = 3) -> list[str]:
    """One line per reason (first rows), for the log: where the bad record is and what is wrong with it."""
    if rejected.height == 0:
        return []
    firsts = rejected.group_by("reason", maintain_order=True).head(1).head(limit)
    lines = []
    for row in firsts.iter_rows(named=True):
        ev = orjson.loads(row["evidence"]) if row.get("evidence") else {}
        ev = ev if isinstance(ev, dict) else {"evidence": ev}
        file, line = ev.get("file") or row.get("src_file"), ev.get("line") or row.get("src_line")
        where = f" at {file}:{line}" if file else (f" (id {row['id']})" if row.get("id") else "")
        lines.append(f"{row['reason']}{where}: {evidence_detail(ev)}")
    return lines


def evidence_detail(ev: dict) -> str:
    """The part of a row's evidence a log line can hold: ingest's detail, a rule's failed test with the values it
    read, or the evidence itself, cut short; never empty."""
    if ev.get("detail"):
        return str(ev["detail"])
    if ev.get("test"):
        values = ", ".join(f"{k} = {v}" for k, v in ev.items() if k not in ("rule", "test"))
        return f"failed {ev['test']} ({values})"
    shown = {k: v for k, v in ev.items() if k not in ("file", "line", "field")}
    text = orjson.dumps(shown).decode() if shown else "no evidence recorded"
    return text if len(text) <= 200 else text[:199] + "…"


ORIGINAL = "text_original"  # publish.keep_original_text: a row's text as it arrived, where a stage edited it


def _ledger_checked(stage: Stage, batch: pl.DataFrame, result: StageResult, keep_original: bool) -> StageResult:
    """Holds the stage to its edit ledger (a changed kept row with no ledger row is a bug in the stage) and, with
    `publish.keep_original_text`, keeps the text an edited row had before its first edit."""
    missing = edits.unrecorded(batch, result.kept, result.edits)
    if missing:
        raise StageContractError(f"stage {stage.name} changed the text of kept rows without recording the edit "
                                 f"(ids {', '.join(map(str, missing))}): a rewrite returns its ledger "
                                 "(tasks/runtime/edits.py)")
    if not keep_original or result.edits is None or not result.edits.height or ORIGINAL not in result.kept.columns:
        return result
    originals = (batch.select("id", pl.col("text").alias("_original"))
                 .join(result.edits.select("id").unique(), on="id", how="semi"))
    kept = (result.kept.join(originals, on="id", how="left", maintain_order="left")
            .with_columns(pl.coalesce(ORIGINAL, "_original").alias(ORIGINAL)).drop("_original"))
    return replace(result, kept=kept)


def _read_receipt(ctx: RunContext, rel: str) -> Receipt | None:
    receipt = ctx.storage.read_record_if_exists(Receipt, rel)
    return receipt.model_copy(update={"resumed": True}) if receipt is not None else None


def process_shard(ctx: RunContext, stage: Stage, shard: str, load: Callable[[], pl.DataFrame], inputs: list[dict],
                  write: Callable[[pl.DataFrame, StageResult], DataObject] | None = None,
                  call: Callable[[pl.DataFrame, Any], StageResult] | None = None) -> Receipt:
    """One shard through the stage: load, call, check the declaration and the shard contract, write kept and
    rejected rows, then the receipt (the shard's commit marker). `write` overrides where kept rows go (a sink);
    `call` what computes the result (a global stage's apply, with the decisions routed to the shard)."""
    params = stage.params(ctx.config)
    fp = fingerprint(stage.name, inputs, params.model_dump(mode="json"), ctx.code_version)
    receipt_rel = layout.shard_receipt(ctx.run_id, stage.name, shard)

    def redo() -> Receipt:
        interrupt.check()  # a stopped run starts no new shard
        started = time.perf_counter()
        batch = load()
        keep_original = ctx.config.publish.keep_original_text and "text" in batch.columns
        if keep_original and ORIGINAL not in batch.columns:
            batch = batch.with_columns(pl.lit(None, pl.String).alias(ORIGINAL))
        if call is not None:
            result = call(batch, params)
        else:
            with lifecycle.device_slot(stage):
                result = stage.call(batch, params, lifecycle.loaded_for(stage, params, ctx.s3_options))
        check_declaration(stage, batch, result)
        result = _ledger_checked(stage, batch, result, keep_original)
        output = result.output()
        contract = validate_shard(ctx, stage.name, stage.suite_for(params), shard, output)
        if write is not None:
            kept = write(batch, result)
        else:
            kept = ctx.storage.write_parquet(layout.kept_part(ctx.run_id, stage.name, shard), output)
        rejected = []
        if result.rejected.height:
            rejected.append(ctx.storage.write_parquet(layout.rejected_part(ctx.run_id, stage.name, shard),
                                                      result.rejected))
        ledger = []
        if result.edits is not None and result.edits.height:
            ledger.append(ctx.storage.write_parquet(layout.edits_part(ctx.run_id, stage.name, shard), result.edits))
        stats = Stats.merge([result.stats, Stats(counts=edits.counts(result.edits, batch))])
        by_reason = Counter(result.rejected["reason"].to_list()) if result.rejected.height else Counter()
        receipt = Receipt(
            shard=shard, fingerprint=fp, inputs=inputs, rows_in=batch.height, rows_out=output.height,
            rows_rejected=result.rejected.height, rows_synthetic=result.rows_synthetic,
            rejected_by_reason=dict(sorted(by_reason.items())), outputs=[kept], rejected=rejected, edits=ledger,
            stats=stats, contract=contract.as_dict(), seconds=round(time.perf_counter() - started, 4))
        ctx.storage.write_record(receipt_rel, receipt)
        synthetic = f", {result.rows_synthetic} synthetic" if result.rows_synthetic else ""
        log.debug(f"{stage.name} shard {shard}: {batch.height} in, {result.kept.height} kept{synthetic}, "
                  f"{result.rejected.height} quarantined")
        for line in _reason_examples(result.rejected):  # the rows themselves: `sluice quarantine`, the report
            log.debug(f"{stage.name} shard {shard}: {line}")
        return receipt

    receipt, _ = reuse_or_redo(lambda: _read_receipt(ctx, receipt_rel), fp, lambda r: r.fingerprint, redo)
    return receipt


SMALL_FILE_BYTES = 8 << 20  # files below this share a Prefect task and their shards with their neighbours
GROUP_BYTES = 256 << 20  # at most this many bytes of small files in one group
GROUP_FILES = 2_000  # and at most this many files
PREFETCH_FILES = 256  # small remote files fetched concurrently (one fsspec `cat` call)


def file_groups(files: list[InputFile], workers: int) -> list[list[int]]:
    """Consecutive small files in groups (one Prefect task, shards shared across files); a file of
    SMALL_FILE_BYTES or more is a group of its own. A prefix of 10,000 one-row objects is then a handful of tasks
    and shards, not 10,000 of each (9 files/s before issue 24). At least `workers` groups when there are enough
    small files, so no worker idles."""
    small = sum(1 for f in files if f.size < SMALL_FILE_BYTES)
    workers = max(workers, 1)
    count = -(-max(-(-small // GROUP_FILES), 1) // workers) * workers  # a multiple of the workers
    per_group = max(1, -(-small // count))
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for i, file in enumerate(files):
        if file.size >= SMALL_FILE_BYTES:
            if current:
                groups.append(current)
                current, held = [], 0
            groups.append([i])
            continue
        if current and (len(current) >= per_group or held + file.size > GROUP_BYTES):
            groups.append(current)
            current, held = [], 0
        current.append(i)
        held += file.size
    if current:
        groups.append(current)
    return groups


def _prefetched(ctx: RunContext, files: list[InputFile]) -> dict[str, bytes]:
    """The bytes of small remote files, fetched concurrently: one request each, but in flight together."""
    remote = [f for f in files if f.uri.startswith("s3://") and f.size < SMALL_FILE_BYTES]
    if not remote:
        return {}
    from tasks.io.storage import _io, filesystem

    fs = filesystem(remote[0].uri, ctx.s3_options)
    with _io("read", remote[0].uri.rsplit("/", 1)[0]):
        got = fs.cat([f.uri.split("://", 1)[1] for f in remote], on_error="return")
    return {f.uri: got[f.uri.split("://", 1)[1]] for f in remote
            if isinstance(got.get(f.uri.split("://", 1)[1]), bytes)}


def source_group(ctx: RunContext, stage: Stage, group_index: int, files: list[InputFile], budget: int | None = None
                 ) -> list[Receipt]:
    """Map step of a source stage: a group of input files (one large file, or many small ones) streamed in
    `shard_rows` chunks across files, one receipt per chunk. `budget`: read at most that many rows
    (`ingest.limit_rows`; what earlier groups left). Each file's line audit joins the stats of the group's last
    shard."""
    params = ctx.config.ingest
    group_fp = fingerprint(stage.name, [f.as_dict() for f in files], params.model_dump(mode="json"),
                           ctx.code_version, budget)
    done_rel = layout.file_receipt(ctx.run_id, stage.name, group_index)
    done = ctx.storage.read_json_if_exists(done_rel)
    if done and done.get("fingerprint") == group_fp:
        return [Receipt.model_validate(r, context={"root": ctx.storage.root}).model_copy(update={"resumed": True})
                for r in done["receipts"]]
    receipts: list[Receipt] = []
    audits: list[tuple[InputFile, object]] = []
    left = budget
    formats = sorted({detect_format(f.uri, params.format)[0] for f in files})

    def shards():
        nonlocal left
        chunks = Rechunker(params.shard_rows)
        for start in range(0, len(files), PREFETCH_FILES):
            part = files[start:start + PREFETCH_FILES]
            fetched = _prefetched(ctx, part)
            for file in part:
                fmt, compression = detect_format(file.uri, params.format)
                read = read_batches(file, fmt, compression, params, ctx.s3_options, fetched.get(file.uri))
                for batch in read:
                    if left is not None:
                        if left <= 0:
                            return
                        batch = batch.head(left)
                        left -= batch.height
                    yield from chunks.add(batch)
                audits.append((file, read.audit))
        yield from chunks.rest()

    for chunk, batch in enumerate(shards()):
        shard = f"{group_index:05d}-{chunk:05d}"
        inputs = [{"group": group_index, "files": len(files), "group_fingerprint": group_fp, "chunk": chunk,
                   "format": ",".join(formats), **({"uri": files[0].uri} if len(files) == 1 else {})}]
        receipts.append(process_shard(ctx, stage, shard, lambda b=batch: b, inputs))
    if budget is None and receipts:  # a limited read stops early on purpose: nothing to audit
        receipts[-1] = _with_audits(receipts[-1], audits)
    ctx.storage.write_json(done_rel, {"fingerprint": group_fp, "files": [f.as_dict() for f in files],
                                      "receipts": [r.as_json() for r in receipts]})
    return receipts


def _with_audits(receipt: Receipt, audits: list) -> Receipt:
    """The files' line audits, carried by the group's last shard receipt into the stage's stats (and its contract)."""
    counts: dict[str, int] = {}
    lost: dict[str, int] = {}
    for file, audit in audits:
        for key, value in audit.counts().items():
            counts[key] = counts.get(key, 0) + value
        if audit.unaccounted:
            lost[file.name] = audit.unaccounted
            log.error(f"{file.name}: {audit.unaccounted:,} of {audit.read:,} {audit.unit} are in no row and no "
                      "quarantine row")
    tallies = {"input.unaccounted_by_file": lost} if lost else {}
    return receipt.model_copy(update={"stats": Stats.merge([receipt.stats, Stats(counts=counts, tallies=tallies)])})


def shards_of(manifest: StageManifest) -> list[tuple[str, dict]]:
    """(shard name, input object) for a stage over the previous stage's committed parts."""
    return [(layout.shard_of_part(obj.path), obj.as_json()) for obj in manifest.outputs]


def map_shard(ctx: RunContext, stage: Stage, shard: str, input_obj: dict) -> Receipt:
    """One shard of a map stage."""
    def load() -> pl.DataFrame:
        return ctx.storage.read_parquet(input_obj["path"])

    return process_shard(ctx, stage, shard, load, [input_obj])


def sink_shard(ctx: RunContext, stage: Stage, index: int, input_obj: dict, target: dict) -> Receipt:
    """A sink's shard: its input part checked against the sha256 its stage recorded, then written to the sink's
    destination. Rows the sink passes through unchanged are copied byte for byte."""
    data = ctx.storage.read_bytes(input_obj["path"])
    if sha256_bytes(data) != input_obj["sha256"]:
        raise RuntimeError(f"{input_obj['path']} does not match the sha256 in its stage manifest: refusing to "
                           f"{stage.name}")
    batch = pl.read_parquet(data)
    dest = stage.sink.part(target, index)

    drop = [c for c in target.get("drop", []) if c in batch.columns]
    sink = stage.sink

    def write(loaded: pl.DataFrame, result: StageResult) -> DataObject:
        out = result.output().drop(drop)
        if sink.conform is not None:
            out = sink.conform(target, out)
        if result.kept is loaded and not result.rows_synthetic and out.schema == loaded.schema:
            ctx.storage.write_bytes(dest, data)
            written = DataObject(path=dest, rows=loaded.height, sha256=input_obj["sha256"], bytes=len(data))
        else:
            written = ctx.storage.write_parquet(dest, out)
        if sink.beside_part is not None:
            sink.beside_part(ctx, target, index, out)
        return written

    return process_shard(ctx, stage, f"{index:05d}", lambda: batch, [input_obj, {"target": target}], write)


def committed_manifest(ctx: RunContext, stage: Stage, inputs: list[dict]) -> StageManifest | None:
    """The stage's manifest if it commits exactly this work; a stale one (other inputs/params) is removed, so a
    crash while redoing the stage can never leave an old manifest pointing at half-rewritten parts."""
    rel = layout.stage_manifest(ctx.run_id, stage.name)
    fp = stage_fingerprint(ctx, stage, inputs)
    manifest, reused = reuse_or_redo(lambda: ctx.storage.read_record_if_exists(StageManifest, rel), fp,
                                     lambda m: m.fingerprint, lambda: None, lambda: ctx.storage.delete(rel))
    return manifest if reused else None


def _warnings(stage_name: str, checks: list[dict], rows_in: int) -> list[str]:
    """A check above its warning level (and within its ceiling) warns, in its own words when it has them."""
    warnings = [c.get("warning") or f"{c['name']}: {c['count']:,} of {rows_in:,} documents ({c['rate']:.2%}) > "
                f"warning level {c['warn']:.2%}" for c in checks if c["warn"] < c["rate"] <= c["max"]]
    for w in warnings:
        log.warning(f"{stage_name}: {w}")
    return warnings


def rejected_share_check(contracts_cfg, stage_name: str, rows_in: int, rows_rejected: int) -> list[dict]:
    """Every stage: above `warn_reject_rate` it warns; rejecting all of a non-empty input fails the contract unless
    the stage is in `allow_reject_all` (a run that keeps nothing must not end with exit 0)."""
    if rows_in == 0:
        return []
    allowed = stage_name in contracts_cfg.allow_reject_all
    rate = rows_rejected / rows_in
    return [{"name": "rejected_share", "count": rows_rejected, "rate": rate, "warn": contracts_cfg.warn_reject_rate,
             "max": 1.0 if allowed else 1.0 - 0.5 / rows_in,
             "message": f"{stage_name} rejected all {rows_in:,} rows (reasons in the quarantine); if that is "
                        f"intended, set contracts.allow_reject_all = [\"{stage_name}\"]"}]


def build_manifest(ctx: RunContext, stage: Stage, receipts: list[Receipt], inputs: list[dict], started: float,
                   contracts: Contracts, replay_of: dict | None = None) -> StageManifest:
    """Reconcile the receipts, run the stage-wide contract, and build the manifest (not yet written)."""
    receipts = sorted(receipts, key=lambda r: r.shard)
    rows_in = sum(r.rows_in for r in receipts)
    rows_out = sum(r.rows_out for r in receipts)
    rows_rejected = sum(r.rows_rejected for r in receipts)
    rows_synthetic = sum(r.rows_synthetic for r in receipts)
    if rows_in + rows_synthetic != rows_out + rows_rejected:
        raise RuntimeError(f"{stage.name}: rows_in {rows_in} + rows_synthetic {rows_synthetic} != rows_out "
                           f"{rows_out} + rows_rejected {rows_rejected}")
    by_reason: Counter = Counter()
    for r in receipts:
        by_reason.update(r.rejected_by_reason)
    stats = Stats.merge([r.stats for r in receipts])
    params = stage.params(ctx.config)
    checks = stage.rate_checks(stats, rows_in, params) if stage.rate_checks else []
    checks += rejected_share_check(ctx.config.contracts, stage.name, rows_in, rows_rejected)
    checks += edits.removed_share_check(ctx.config.contracts, stage.name, stats.counts)
    outputs = [o for r in receipts for o in r.outputs]
    result = validate_stage(ctx, contracts, stage.name, stage.suite_for(params), outputs,
                            [(r.shard, r.contract) for r in receipts], rows_in, rows_rejected, checks)
    return StageManifest(
        format=FORMAT, stage=stage.name, run_id=ctx.run_id, fingerprint=stage_fingerprint(ctx, stage, inputs),
        rows_in=rows_in, rows_out=rows_out, rows_rejected=rows_rejected, rows_synthetic=rows_synthetic,
        invariant_holds=True, rejected_by_reason=dict(sorted(by_reason.items())), inputs=inputs, outputs=outputs,
        rejected=[o for r in receipts for o in r.rejected], edits=[o for r in receipts for o in r.edits],
        shards=len(receipts),
        shards_resumed=sum(1 for r in receipts if r.resumed), stats=stats, contract=result.as_dict(),
        warnings=_warnings(stage.name, checks, rows_in), rates=checks,
        summary=stage.summarize(stats, params) if stage.summarize else None,
        params=params.model_dump(mode="json"), code_version=ctx.code_version,
        seconds=round(time.perf_counter() - started, 3), replay_of=replay_of)


def commit_stage(ctx: RunContext, stage: Stage, receipts: list[Receipt], inputs: list[dict], contracts: Contracts,
                 started: float, replay_of: dict | None = None, sink_target: dict | None = None,
                 side_outputs: dict[str, list[dict]] | None = None, plan_summary: dict | None = None
                 ) -> StageManifest:
    """Reduce step: the manifest is written last — the commit marker — and only when the contract passed; a
    failed contract writes `_contract_failure.json` instead. A sink commits its destination first."""
    manifest = build_manifest(ctx, stage, receipts, inputs, started, contracts, replay_of)
    if plan_summary:
        manifest = manifest.model_copy(update={"plan": plan_summary})
    if side_outputs:
        manifest = manifest.model_copy(update={"side_outputs": {
            name: [DataObject.model_validate(o) for o in objs] for name, objs in side_outputs.items()}})
    if not manifest.contract_passed:
        ctx.storage.write_record(layout.contract_failure(ctx.run_id, stage.name), manifest)
        raise ContractError(stage.name, manifest.contract)
    ctx.storage.delete(layout.contract_failure(ctx.run_id, stage.name))
    if stage.kind == "sink":
        manifest = manifest.model_copy(update={"published": stage.sink.close(ctx, manifest, sink_target)})
    ctx.storage.write_record(layout.stage_manifest(ctx.run_id, stage.name), manifest)
    synthetic = f", {manifest.rows_synthetic} synthetic" if manifest.rows_synthetic else ""
    log.info(f"{stage.name} committed: {manifest.rows_in} in, {manifest.rows_out} out{synthetic}, "
             f"{manifest.rows_rejected} quarantined")
    return manifest


def carried_receipt(manifest: StageManifest) -> Receipt:
    """A receipt standing for a committed stage's kept rows, carried into another run by reference: counted in and
    out, already validated."""
    shard_results = [r for r in manifest.contract.get("results", []) if r.get("scope", "shard") == "shard"]
    return Receipt(shard="carried", inputs=[o.as_json() for o in manifest.outputs], rows_in=manifest.rows_out,
                   rows_out=manifest.rows_out, rows_rejected=0, outputs=manifest.outputs,
                   contract={"results": shard_results, "failures": []}, resumed=True)


