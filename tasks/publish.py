"""Publish: a run's final stage output becomes `datasets/<name>/v<N>/`, visible only once its manifest exists.

Versions are claimed with an exclusive create of `datasets/<name>/_claims/v<N>.json` (O_EXCL locally, a conditional
PUT on S3), so two concurrent publishes can never take the same N. A run that crashed mid-publish finds its own claim
on rerun and finishes that version instead of taking a new one. A claimed version whose contract fails is never
committed: the number is skipped, not reused, so a version number always means one set of bytes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import orjson

from tasks.contracts import ContractError, Contracts
from tasks.diff import diff_vs_previous, version_numbers
from tasks.io.storage import sha256_bytes
from tasks.runner import RunContext, validate_stage

log = logging.getLogger("sluice")
SUITE = "publish"
EVENT = "sluice.dataset.published"


def claim_version(ctx: RunContext, dataset: str) -> int:
    base = f"datasets/{dataset}"
    claims_dir = f"{base}/_claims"
    for n in version_numbers(ctx.storage.listdir(claims_dir)):
        claim = ctx.storage.read_json_if_exists(f"{claims_dir}/v{n}.json")
        if claim and claim.get("run_id") == ctx.run_id:
            return n
    taken = version_numbers(ctx.storage.listdir(claims_dir)) + version_numbers(ctx.storage.listdir(base))
    n = (max(taken) if taken else 0) + 1
    body = orjson.dumps({"run_id": ctx.run_id, "claimed_at": datetime.now(UTC).isoformat()})
    while not ctx.storage.create_exclusive(f"{claims_dir}/v{n}.json", body):
        n += 1
    return n


def render_card(dataset: str, version: int, manifest: dict, run_manifests: list[dict], description: str) -> str:
    lines = [
        f"# {dataset} v{version}",
        "",
        description or "Curated with Sluice.",
        "",
        f"- run: `{manifest['run_id']}`",
        f"- rows: {manifest['rows_out']:,}",
        f"- published: {manifest['published_at']}",
        f"- code version: `{manifest['code_version']}`",
        "",
        "## Sources",
        "",
        "| source | rows |",
        "|---|---:|",
    ]
    lines += [f"| `{src}` | {rows:,} |" for src, rows in manifest["rows_by_source"].items()]
    lines += ["", "## Stages", "", "| stage | in | out | quarantined | contract |", "|---|---:|---:|---:|---|"]
    for m in run_manifests:
        ok = "passed" if m["contract"]["success"] else "FAILED"
        lines.append(f"| {m['stage']} | {m['rows_in']:,} | {m['rows_out']:,} | {m['rows_rejected']:,} | {ok} |")
    lines += ["", "## Quarantine reasons", ""]
    reasons = {}
    for m in run_manifests:
        for code, count in m["rejected_by_reason"].items():
            reasons[code] = reasons.get(code, 0) + count
    lines += [f"- `{code}`: {count:,}" for code, count in sorted(reasons.items())] or ["- none"]
    lines += ["", "## Contract of this version", ""]
    for r in manifest["contract"]["results"]:
        lines.append(f"- {'✓' if r['success'] else '✗'} `{r['expectation']}` {r['kwargs']}")
    return "\n".join(lines) + "\n"


def _rows_by_source(ctx: RunContext, outputs: list[dict]) -> dict[str, int]:
    import polars as pl

    counts: dict[str, int] = {}
    for obj in outputs:
        df = ctx.storage.read_parquet(ctx.storage.rel_of(obj["uri"]), columns=["source"])
        for row in df.group_by("source").agg(pl.len()).iter_rows():
            counts[row[0]] = counts.get(row[0], 0) + row[1]
    return dict(sorted(counts.items()))


def publish(ctx: RunContext, source: dict, run_manifests: list[dict], contracts: Contracts) -> dict:
    """Copy the committed parts of `source` (a stage manifest) into a new dataset version; returns its manifest."""
    started = time.perf_counter()
    cfg = ctx.config.publish
    stage_rel = ctx.rel("publish", "_manifest.json")
    done = ctx.storage.read_json_if_exists(stage_rel)
    if done and done.get("source_fingerprint") == source["fingerprint"]:
        return done
    version = claim_version(ctx, cfg.dataset)
    base = f"datasets/{cfg.dataset}/v{version}"
    existing = ctx.storage.read_json_if_exists(f"{base}/_manifest.json")
    if existing is None:
        outputs = []
        for i, obj in enumerate(source["outputs"]):
            data = ctx.storage.read_bytes(ctx.storage.rel_of(obj["uri"]))
            if sha256_bytes(data) != obj["sha256"]:
                raise RuntimeError(f"{obj['uri']} does not match the sha256 in its stage manifest: refusing to publish")
            rel = f"{base}/part-{i:05d}.parquet"
            ctx.storage.write_bytes(rel, data)
            outputs.append({**obj, "uri": ctx.storage.uri(rel)})
        result = validate_stage(ctx, contracts, "publish", SUITE, outputs, None, source["rows_out"], 0)
        manifest = {
            "stage": "publish",
            "dataset": cfg.dataset,
            "version": version,
            "run_id": ctx.run_id,
            "rows_in": source["rows_out"],
            "rows_out": sum(o["rows"] for o in outputs),
            "rows_rejected": 0,
            "rows_synthetic": 0,
            "rejected_by_reason": {},
            "rows_by_source": _rows_by_source(ctx, outputs),
            "inputs": source["outputs"],
            "outputs": outputs,
            "source_stage": source["stage"],
            "source_fingerprint": source["fingerprint"],
            "contract": result.as_dict(),
            "params": cfg.model_dump(mode="json"),
            "code_version": ctx.code_version,
            "published_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if not result.success:
            raise ContractError("publish", result)
        card = render_card(cfg.dataset, version, manifest, run_manifests, cfg.description)
        ctx.storage.write_bytes(f"{base}/card.md", card.encode())
        body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        if not ctx.storage.create_exclusive(f"{base}/_manifest.json", body):
            raise RuntimeError(f"dataset {cfg.dataset} v{version} was committed by someone else while publishing")
        existing = manifest
        log.info(f"published {cfg.dataset} v{version}: {manifest['rows_out']} rows")
    diff = ctx.storage.read_json_if_exists(f"{base}/_diff.json")
    if diff is None:
        diff = diff_vs_previous(ctx.storage, cfg.dataset, version)
        ctx.storage.write_json(f"{base}/_diff.json", diff)
    ctx.storage.write_json(stage_rel, {**existing, "uri": ctx.storage.uri(base), "diff": diff})
    emit_published(existing, ctx.storage.uri(base), diff, ctx.config.retrain.min_changed_fraction)
    return {**existing, "uri": ctx.storage.uri(base), "diff": diff}


def retrain_worthy(diff: dict, min_changed_fraction: float) -> bool:
    return diff["a"] is None or diff["changed_fraction"] >= min_changed_fraction


def emit_published(manifest: dict, uri: str, diff: dict, min_changed_fraction: float) -> None:
    """The Prefect event the `retrain` deployment triggers on; a no-op outside a Prefect run.

    The label `sluice.retrain` carries the threshold decision, so the trigger filters on it and a below-threshold
    publish creates no flow run at all."""
    worthy = retrain_worthy(diff, min_changed_fraction)
    try:
        from prefect.events import emit_event

        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"sluice.dataset.{manifest['dataset']}",
                      "sluice.dataset": manifest["dataset"], "sluice.version": str(manifest["version"]),
                      "sluice.retrain": "true" if worthy else "false"},
            payload={"dataset": manifest["dataset"], "version": manifest["version"], "uri": uri,
                     "rows": manifest["rows_out"], "rows_by_source": manifest["rows_by_source"],
                     "run_id": manifest["run_id"], "diff": diff},
        )
        log.info(f"emitted {EVENT} for {manifest['dataset']} v{manifest['version']} "
                 f"(changed {diff['changed_fraction']:.2%}, retrain {'yes' if worthy else 'no: below threshold'})")
    except Exception as exc:  # an event is a notification; the version is already committed
        log.warning(f"could not emit {EVENT}: {exc}")
