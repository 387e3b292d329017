"""The runner: everything a stage does not do — shard I/O, resume, the contract, the manifest (commit marker).

Layout under the output root (DESIGN.md, "commit protocol"):
    runs/<run_id>/<stage>/part-<shard>.parquet            kept rows
    runs/<run_id>/<stage>/rejected/part-<shard>.parquet   quarantined rows (reason, evidence)
    runs/<run_id>/<stage>/_shards/<shard>.json            shard receipt: written after its parts (shard commit)
    runs/<run_id>/<stage>/_manifest.json                  written last, after the contract passed (stage commit)
A receipt or manifest is trusted only when its fingerprint (inputs + params + code version) matches, so rerunning a
run id after a crash redoes exactly the unfinished work and, being deterministic, writes byte-identical parts.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

from schemas.config import SluiceConfig, check_safe_name
from schemas.expectations import columns_of, load_suite, scoped
from tasks.contracts import ContractError, ContractResult, Contracts, contracts_for
from tasks.io.readers import InputFile, detect_format, read_batches
from tasks.io.storage import Storage
from tasks.stage import Stage, check_declaration

log = logging.getLogger("sluice")
PACKAGE_VERSION = "0.1.0"


def _code_version() -> str:
    """Package version + a hash of the code that shapes outputs: a code change invalidates resumable work."""
    here = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("tasks", "schemas"):
        for path in sorted((here / folder).rglob("*")):
            if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(here)).encode())
                digest.update(path.read_bytes())
    return f"{PACKAGE_VERSION}+{digest.hexdigest()[:12]}"


CODE_VERSION = _code_version()


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:6]}"


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def params_of(stage_params) -> dict:
    return stage_params.model_dump(mode="json") if stage_params is not None else {}


@dataclass
class RunContext:
    storage: Storage
    run_id: str
    config: SluiceConfig
    s3_options: dict = field(default_factory=dict, repr=False)
    code_version: str = CODE_VERSION

    def __post_init__(self) -> None:
        check_safe_name(self.run_id, "run id")

    def rel(self, *parts: str) -> str:
        return "/".join(("runs", self.run_id, *parts))


def _reason_examples(rejected: pl.DataFrame, limit: int = 3) -> list[str]:
    """One line per reason (first rows), for the log: where the bad record is and what is wrong with it."""
    if rejected.height == 0:
        return []
    firsts = rejected.group_by("reason", maintain_order=True).head(1).head(limit)
    lines = []
    for row in firsts.iter_rows(named=True):
        ev = orjson.loads(row["evidence"]) if row.get("evidence") else {}
        where = f"{ev.get('file', row.get('src_file', '?'))}:{ev.get('line', row.get('src_line', '?'))}"
        lines.append(f"{row['reason']} at {where}: {ev.get('detail', '')}")
    return lines


def run_shard(ctx: RunContext, stage: Stage, shard: str, load: Callable[[], pl.DataFrame],
              inputs: list[dict]) -> dict:
    """Map step for one shard; returns its receipt. Idempotent: a finished shard is not redone."""
    params = stage.params(ctx.config)
    fp = fingerprint(stage.name, inputs, params_of(params), ctx.code_version)
    receipt_rel = ctx.rel(stage.name, "_shards", f"{shard}.json")
    old = ctx.storage.read_json_if_exists(receipt_rel)
    if old and old.get("fingerprint") == fp:
        return {**old, "skipped": True}
    started = time.perf_counter()
    batch = load()
    result = stage.fn(batch, params)
    check_declaration(stage, batch, result)
    contract = validate_shard(ctx, stage.name, stage.suite_for(params), shard, result.kept)
    kept = ctx.storage.write_parquet(ctx.rel(stage.name, f"part-{shard}.parquet"), result.kept)
    rejected = None
    if result.rejected.height:
        rejected = ctx.storage.write_parquet(ctx.rel(stage.name, "rejected", f"part-{shard}.parquet"), result.rejected)
    by_reason = dict(Counter(result.rejected["reason"].to_list())) if result.rejected.height else {}
    receipt = {
        "shard": shard,
        "fingerprint": fp,
        "inputs": inputs,
        "rows_in": batch.height,
        "rows_out": result.kept.height,
        "rows_rejected": result.rejected.height,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "outputs": [kept.as_dict()],
        "rejected": [rejected.as_dict()] if rejected else [],
        "stats": result.stats,
        "contract": contract.as_dict(),
        "seconds": round(time.perf_counter() - started, 4),
    }
    ctx.storage.write_json(receipt_rel, receipt)
    log.info(f"{stage.name} shard {shard}: {batch.height} in, {result.kept.height} kept, "
             f"{result.rejected.height} quarantined")
    for line in _reason_examples(result.rejected):
        log.warning(f"{stage.name} shard {shard}: {line}")
    return receipt


def ingest_file(ctx: RunContext, stage: Stage, file_index: int, file: InputFile) -> list[dict]:
    """Map step of the source stage: one input file, streamed in `shard_rows` chunks, one receipt per chunk."""
    p = ctx.config.ingest
    fmt, compression = detect_format(file.uri, p.format)
    file_fp = fingerprint(stage.name, file.as_dict(), params_of(p), ctx.code_version)
    done_rel = ctx.rel(stage.name, "_shards", f"file-{file_index:05d}.json")
    done = ctx.storage.read_json_if_exists(done_rel)
    if done and done.get("fingerprint") == file_fp:
        return [{**r, "skipped": True} for r in done["receipts"]]
    receipts = []
    batches = read_batches(file, fmt, compression, p.shard_rows, p.read_block_bytes, p.csv_delimiter, ctx.s3_options)
    for chunk, batch in enumerate(batches):
        shard = f"{file_index:05d}-{chunk:05d}"
        inputs = [{**file.as_dict(), "chunk": chunk, "format": fmt}]
        receipts.append(run_shard(ctx, stage, shard, lambda b=batch: b, inputs))
    ctx.storage.write_json(done_rel, {"fingerprint": file_fp, "file": file.as_dict(),
                                      "receipts": [{k: v for k, v in r.items() if k != "skipped"} for r in receipts]})
    return receipts


def map_shards(manifest: dict) -> list[tuple[str, dict]]:
    """(shard name, input object) for a map stage over the previous stage's committed parts."""
    out = []
    for obj in manifest["outputs"]:
        name = obj["uri"].rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
        out.append((name, obj))
    return out


def map_shard(ctx: RunContext, stage: Stage, shard: str, input_obj: dict, decisions: dict | None = None) -> dict:
    """Map step of a map stage, or the apply step of a global stage (with the reduce step's decisions)."""
    def load() -> pl.DataFrame:
        return ctx.storage.read_parquet(ctx.storage.rel_of(input_obj["uri"]))

    if decisions is None:
        return run_shard(ctx, stage, shard, load, [input_obj])
    table = ctx.storage.read_parquet(ctx.storage.rel_of(decisions["uri"]))
    apply = stage.steps.apply
    applied = replace(stage, fn=lambda batch, params: apply(batch, table, params))
    return run_shard(ctx, applied, shard, load, [input_obj, {"decisions": decisions["sha256"]}])


def global_features(ctx: RunContext, stage: Stage, shard: str, input_obj: dict) -> dict:
    """Map step of a global stage: per-shard features (no text), committed like a shard, resumable."""
    params = stage.params(ctx.config)
    fp = fingerprint(stage.name, "features", input_obj, params_of(params), ctx.code_version)
    rel = ctx.rel(stage.name, "_features", f"{shard}.parquet")
    receipt_rel = ctx.rel(stage.name, "_features", f"{shard}.json")
    old = ctx.storage.read_json_if_exists(receipt_rel)
    if old and old.get("fingerprint") == fp:
        return old
    batch = ctx.storage.read_parquet(ctx.storage.rel_of(input_obj["uri"]))
    feats = stage.steps.features(batch, params)
    written = ctx.storage.write_parquet(rel, feats)
    receipt = {"fingerprint": fp, "shard": shard, **written.as_dict()}
    ctx.storage.write_json(receipt_rel, receipt)
    return receipt


def global_decide(ctx: RunContext, stage: Stage, feature_receipts: list[dict]) -> dict:
    """Reduce step of a global stage: all shards' features -> one decisions table (resumable by fingerprint)."""
    params = stage.params(ctx.config)
    receipts = sorted(feature_receipts, key=lambda r: r["shard"])
    fp = fingerprint(stage.name, "decide", [r["sha256"] for r in receipts], params_of(params), ctx.code_version)
    rel = ctx.rel(stage.name, "_decisions.parquet")
    receipt_rel = ctx.rel(stage.name, "_decisions.json")
    old = ctx.storage.read_json_if_exists(receipt_rel)
    if old and old.get("fingerprint") == fp:
        return old
    features = pl.concat([ctx.storage.read_parquet(ctx.storage.rel_of(r["uri"])) for r in receipts],
                         how="vertical")
    started = time.perf_counter()
    decisions = stage.steps.decide(features, params)
    written = ctx.storage.write_parquet(rel, decisions)
    receipt = {"fingerprint": fp, **written.as_dict(), "seconds": round(time.perf_counter() - started, 3)}
    ctx.storage.write_json(receipt_rel, receipt)
    log.info(f"{stage.name}: decided over {features.height} rows in {receipt['seconds']} s")
    return receipt


def stage_fingerprint(ctx: RunContext, stage_name: str, inputs: list[dict], params: dict) -> str:
    return fingerprint(stage_name, inputs, params, ctx.code_version)


def committed_manifest(ctx: RunContext, stage_name: str, fp: str) -> dict | None:
    """The stage's manifest if it commits exactly this work; a stale one (other inputs/params) is removed first,
    so a crash while redoing the stage can never leave an old manifest pointing at half-rewritten parts."""
    rel = ctx.rel(stage_name, "_manifest.json")
    manifest = ctx.storage.read_json_if_exists(rel)
    if manifest is None:
        return None
    if manifest.get("fingerprint") == fp:
        return manifest
    ctx.storage.delete(rel)
    return None


def validate_shard(ctx: RunContext, stage_name: str, suite_name: str, shard: str, kept: pl.DataFrame
                   ) -> ContractResult:
    """Row-level ('shard' scope) expectations on one shard's kept rows, before they are written."""
    suite = scoped(load_suite(suite_name), "shard")
    cols = [c for c in columns_of(suite) if c in kept.columns]
    return contracts_for(ctx.run_id).validate(f"{ctx.run_id}.{stage_name}.{shard}", suite,
                                              kept.select(cols).to_pandas(), docs=False)


def _read_columns(ctx: RunContext, outputs: Iterable[dict], columns: list[str]) -> pl.DataFrame:
    frames = []
    for obj in outputs:
        rel = ctx.storage.rel_of(obj["uri"])
        data = ctx.storage.read_bytes(rel)
        present = [c for c in columns if c in pl.read_parquet_schema(data)]
        frames.append(pl.read_parquet(data, columns=present))
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


UNIQUENESS = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique",
              "expect_select_column_values_to_be_unique_within_record"}


def _validate_global(ctx: RunContext, contracts: Contracts, stage_name: str, suite: dict, outputs: list[dict]
                     ) -> ContractResult:
    """Stage-wide expectations. Uniqueness is checked in hash buckets of at most `shard_rows` rows (equal values
    share a bucket, so per-bucket uniqueness is exact): GE holds ~400 bytes a row while checking, the bucketed
    column itself stays in Arrow (~40 bytes a row for a 32-char id)."""
    frame = _read_columns(ctx, outputs, columns_of(suite))
    partitioned = {**suite, "expectations": [e for e in suite["expectations"] if e["type"] in UNIQUENESS]}
    whole = {**suite, "expectations": [e for e in suite["expectations"] if e["type"] not in UNIQUENESS]}
    parts: list[tuple[str, dict]] = []
    if whole["expectations"]:
        res = contracts.validate(f"{ctx.run_id}.{stage_name}.global", whole, frame.to_pandas())
        parts.append(("all", res.as_dict()))
    if partitioned["expectations"]:
        buckets = max(1, -(-frame.height // ctx.config.ingest.shard_rows))
        cols = columns_of(partitioned)
        keyed = frame.select(cols).with_columns(
            (pl.struct(cols).hash(seed=0) % buckets).alias("_bucket")
        ).partition_by("_bucket", as_dict=True, include_key=False, maintain_order=True)
        for b in range(buckets):
            part = keyed.get((b,), frame.select(cols).clear())
            res = contracts.validate(f"{ctx.run_id}.{stage_name}.unique-{b}", partitioned, part.to_pandas(),
                                     docs=buckets == 1)
            parts.append((f"bucket {b}", res.as_dict()))
    merged = ContractResult.merge(suite["name"], [p for _, p in parts], [label for label, _ in parts])
    merged.failures = [f.replace("[shard ", "[") for f in merged.failures]
    for r in merged.results:
        r.pop("failed_shards", None)
        r.pop("scope", None)
    return merged


def validate_stage(ctx: RunContext, contracts: Contracts, stage_name: str, suite_name: str, outputs: list[dict],
                   shard_contracts: list[tuple[str, dict]] | None, rows_in: int, rows_rejected: int,
                   rate_checks: list[dict] | None = None) -> ContractResult:
    """The stage's contract: shard results (or, when not yet validated, each part now), the 'global'
    expectations on just the columns they name, the configured reject-rate ceiling, and the stage's own rate
    checks (e.g. the share of documents one benchmark hit)."""
    import pandas as pd

    suite = load_suite(suite_name)
    if shard_contracts is None:
        shard_suite = scoped(suite, "shard")
        shard_contracts = []
        for obj in outputs:
            part = _read_columns(ctx, [obj], columns_of(shard_suite))
            label = obj["uri"].rsplit("/", 1)[-1]
            res = contracts.validate(f"{ctx.run_id}.{stage_name}.{label}", shard_suite, part.to_pandas(), docs=False)
            shard_contracts.append((label, res.as_dict()))
    result = ContractResult.merge(suite_name, [c for _, c in shard_contracts], [s for s, _ in shard_contracts])
    global_suite = scoped(suite, "global")
    if global_suite["expectations"]:
        whole = _validate_global(ctx, contracts, stage_name, global_suite, outputs)
        result.results += [{**r, "scope": "global"} for r in whole.results]
        result.failures += whole.failures
        result.success = result.success and whole.success
    ceiling = ctx.config.contracts.max_reject_rate.get(stage_name)
    if ceiling is not None:
        rate = rows_rejected / rows_in if rows_in else 0.0
        stats_suite = {"expectations": [{"type": "expect_column_values_to_be_between",
                                         "kwargs": {"column": "reject_rate", "min_value": 0, "max_value": ceiling}}]}
        stats = contracts.validate(f"{ctx.run_id}.{stage_name}.rates", stats_suite,
                                   pd.DataFrame({"reject_rate": [rate]}))
        result.results += [{**r, "scope": "stage"} for r in stats.results]
        result.failures += [f"{f} (reject rate {rate:.4f} > ceiling {ceiling})" for f in stats.failures]
        result.success = result.success and stats.success
    if rate_checks:
        suite = {"expectations": [{"type": "expect_column_values_to_be_between",
                                   "kwargs": {"column": c["name"], "min_value": 0, "max_value": c["max"]}}
                                  for c in rate_checks]}
        frame = pd.DataFrame({c["name"]: [c["rate"]] for c in rate_checks})
        checked = contracts.validate(f"{ctx.run_id}.{stage_name}.stage-rates", suite, frame)
        over = {c["name"]: c for c in rate_checks if c["rate"] > c["max"]}
        result.results += [{**r, "scope": "stage"} for r in checked.results]
        result.failures += [
            f"{c['name']}: {c['count']:,} of {rows_in:,} documents ({c['rate']:.2%}) > ceiling {c['max']:.2%}; a "
            "mass hit usually means a broken benchmark file or normalizer, not a contaminated corpus"
            for c in over.values()]
        result.success = result.success and checked.success
    return result


def commit_stage(ctx: RunContext, stage_name: str, suite_name: str, receipts: list[dict], inputs: list[dict],
                 params: dict, contracts: Contracts, started: float, extra: dict | None = None) -> dict:
    """Reduce step: reconcile counts, enforce the contract, then write the manifest — the commit marker — last."""
    receipts = sorted(receipts, key=lambda r: r["shard"])
    rows_in = sum(r["rows_in"] for r in receipts)
    rows_out = sum(r["rows_out"] for r in receipts)
    rows_rejected = sum(r["rows_rejected"] for r in receipts)
    if rows_in != rows_out + rows_rejected:
        raise RuntimeError(f"{stage_name}: rows_in {rows_in} != rows_out {rows_out} + rows_rejected {rows_rejected}")
    by_reason: Counter = Counter()
    stats: Counter = Counter()
    for r in receipts:
        by_reason.update(r["rejected_by_reason"])
        stats.update(r.get("stats", {}))
    outputs = [o for r in receipts for o in r["outputs"]]
    rejected = [o for r in receipts for o in r["rejected"]]
    shard_contracts = [(r["shard"], r["contract"]) for r in receipts]
    from tasks.registry import STAGES  # the registry imports stage modules, which must not import the runner

    stage = STAGES.get(stage_name)
    stage_params = stage.params(ctx.config) if stage else None
    checks = stage.rate_checks(dict(stats), rows_in, stage_params) if stage and stage.rate_checks else []
    warnings = [f"{c['name']}: {c['count']:,} of {rows_in:,} documents ({c['rate']:.2%}) > warning level "
                f"{c['warn']:.2%}" for c in checks if c["warn"] < c["rate"] <= c["max"]]
    for w in warnings:
        log.warning(f"{stage_name}: {w}")
    result = validate_stage(ctx, contracts, stage_name, suite_name, outputs, shard_contracts, rows_in, rows_rejected,
                            checks)
    manifest = {
        "stage": stage_name,
        "run_id": ctx.run_id,
        "fingerprint": stage_fingerprint(ctx, stage_name, inputs, params),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "rows_synthetic": 0,
        "invariant": "rows_in + rows_synthetic == rows_out + rows_rejected",
        "invariant_holds": True,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "inputs": inputs,
        "outputs": outputs,
        "rejected": rejected,
        "shards": len(receipts),
        "shards_resumed": sum(1 for r in receipts if r.get("skipped")),
        "stats": dict(stats),
        "contract": result.as_dict(),
        "warnings": warnings,
        "rates": checks,
        **({"summary": stage.summarize(dict(stats), stage_params)} if stage and stage.summarize else {}),
        "params": params,
        "code_version": ctx.code_version,
        "seconds": round(time.perf_counter() - started, 3),
        **(extra or {}),
    }
    if not result.success:
        ctx.storage.write_json(ctx.rel(stage_name, "_contract_failure.json"), manifest)
        raise ContractError(stage_name, result)
    ctx.storage.write_json(ctx.rel(stage_name, "_manifest.json"), manifest)
    log.info(f"{stage_name} committed: {rows_in} in, {rows_out} out, {rows_rejected} quarantined")
    return manifest


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:60]
