"""Publish: the sink. A run's last stage output becomes `datasets/<name>/v<N>/`, visible only once its manifest exists.

Versions are claimed with an exclusive create of `datasets/<name>/_claims/v<N>.json` (O_EXCL locally, a conditional
PUT on S3), so two concurrent publishes can never take the same N. A run that crashed mid-publish finds its own claim
on rerun and finishes that version instead of taking a new one. A claimed version whose contract fails is never
committed: the number is skipped, not reused, so a version number always means one set of bytes.

Shards go through the runner like any stage's (receipts, the shard contract, resume); parts are copied byte for byte
from the stage before. The runner calls `close` once the stage contract has passed: it commits the version
(`_manifest.json`, exclusive), writes the dataset card and the diff against the previous version, and emits
`sluice.dataset.published`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
import polars as pl

from schemas.config import PublishConfig
from schemas.record import CANONICAL
from tasks.io import layout
from tasks.io.locks import assert_current
from tasks.io.manifests import StageManifest, Stats, render
from tasks.runtime.stage import SinkSteps, Stage, StageResult

log = logging.getLogger("sluice")
EVENT = "sluice.dataset.published"


# What identifies and checks a row stays in the schema even when empty (the publish suite and diffs read them).
KEPT_EVEN_IF_EMPTY = ("id", "text", "content_sha256", "source")


def publish_rows(batch: pl.DataFrame, params: PublishConfig) -> StageResult:
    """Every row is published as it is; what publishing adds is a count per source, for the card and the event."""
    by_source = dict(batch.group_by("source").agg(pl.len()).sort("source").iter_rows()) if batch.height else {}
    tallies = {"rows_by_source": by_source}
    if "q_lang" in batch.columns and batch.height:
        tallies["rows_by_language"] = dict(batch.drop_nulls("q_lang").group_by("q_lang").agg(pl.len()).iter_rows())
    return StageResult(kept=batch, rejected=batch.clear(), stats=Stats(tallies=tallies))


def _newest_committed(ctx, dataset: str) -> int:
    found = layout.version_numbers(ctx.storage.listdir(layout.dataset_dir(dataset)))
    return max([v for v in found if ctx.storage.exists(layout.version_manifest(dataset, v))], default=0)


def claim_version(ctx, dataset: str) -> int:
    """The next free version number, taken by exclusive create. On resume, the number this run already took, unless
    another run has committed a newer version since: versions never go back in time, so the old claim is abandoned
    (its number is skipped) and a new one is taken."""
    claims = layout.claims_dir(dataset)
    for n in layout.version_numbers(ctx.storage.listdir(claims)):
        claim = ctx.storage.read_json_if_exists(layout.claim(dataset, n))
        if claim and claim.get("run_id") == ctx.run_id:
            committed = ctx.storage.exists(layout.version_manifest(dataset, n))
            newest = _newest_committed(ctx, dataset)
            if committed or newest < n:
                return n
            log.warning(f"dataset {dataset}: this run claimed v{n} before a crash, but v{newest} was published "
                        f"since; publishing as a newer version instead (v{n} stays unused)")
            break
    taken = (layout.version_numbers(ctx.storage.listdir(claims))
             + layout.version_numbers(ctx.storage.listdir(layout.dataset_dir(dataset))))
    n = (max(taken) if taken else 0) + 1
    body = orjson.dumps({"run_id": ctx.run_id, "claimed_at": datetime.now(UTC).isoformat()})
    while not ctx.storage.create_exclusive(layout.claim(dataset, n), body):
        n += 1
    return n


def open_version(ctx, inputs: list[dict]) -> dict:
    """Claim the version, and name the columns that no input row fills: they are left out of the published
    schema (a reader should not meet 11 columns of nulls), and the card lists them."""
    dataset = ctx.config.publish.dataset
    drop = [c for c in ctx.storage.null_only_columns([o["path"] for o in inputs]) if c not in KEPT_EVEN_IF_EMPTY]
    return {"dataset": dataset, "version": claim_version(ctx, dataset), "drop": drop}


def version_part(target: dict, index: int) -> str:
    return layout.version_part(target["dataset"], target["version"], index)


def _run_manifests(ctx) -> list[StageManifest]:
    """The manifests of the stages this run committed before publishing (for the dataset card)."""
    run = ctx.storage.read_json_if_exists(layout.run_json(ctx.run_id)) or {}
    found = []
    for name in run.get("stages", []):
        m = ctx.storage.read_record_if_exists(StageManifest, layout.stage_manifest(ctx.run_id, name))
        if m is not None and name != "publish":
            found.append(m)
    return found


def close_version(ctx, manifest: StageManifest, target: dict) -> dict:
    """Commit the claimed version (after the stage contract passed), then its card, diff and event."""
    from tasks.ops.diff import diff_vs_previous
    from tasks.ops.report.card import dataset_card
    from tasks.ops.retrain_hook import worth_retraining

    dataset, version = target["dataset"], target["version"]
    existing = ctx.storage.read_record_if_exists(StageManifest, layout.version_manifest(dataset, version))
    if existing is None:
        fence(ctx)
        newest = _newest_committed(ctx, dataset)
        if newest > version:
            raise RuntimeError(f"dataset {dataset}: v{newest} was published while this run was publishing v{version}; "
                               "an older version is never published after a newer one. Rerun to publish as "
                               f"v{newest + 1}.")
        published = {"dataset": dataset, "version": version, "published_at": datetime.now(UTC).isoformat(),
                     "rows_by_source": manifest.stats.tallies.get("rows_by_source", {}),
                     "rows_by_language": manifest.stats.tallies.get("rows_by_language", {}),
                     "columns_left_out": target.get("drop", [])}
        committed = manifest.model_copy(update={"published": published})
        card = dataset_card(committed, _run_manifests(ctx), ctx.config.publish, _features(ctx, manifest))
        ctx.storage.write_bytes(layout.version_card(dataset, version), card.encode())
        if not ctx.storage.create_exclusive(layout.version_manifest(dataset, version), render(committed)):
            raise RuntimeError(f"dataset {dataset} v{version} was committed by someone else while publishing")
        log.info(f"published {dataset} v{version}: {manifest.rows_out} rows")
    else:  # resumed after the version was committed but before the stage was
        published = existing.published
    diff = ctx.storage.read_json_if_exists(layout.version_diff(dataset, version))
    if diff is None:
        diff = diff_vs_previous(ctx.storage, dataset, version)
        ctx.storage.write_json(layout.version_diff(dataset, version), diff)
    uri = ctx.storage.uri(layout.version_dir(dataset, version))
    newest = _newest_committed(ctx, dataset)
    if newest > version:  # resumed after a newer version appeared: no event, so nothing retrains on older data
        log.warning(f"dataset {dataset}: v{version} is not the newest (v{newest} is); no published event")
    else:
        fence(ctx)
        emit_published(published, manifest.rows_out, ctx.run_id, uri, diff,
                       worth_retraining(diff, ctx.config.retrain))
    return {**published, "path": layout.version_dir(dataset, version), "diff": diff}


def _features(ctx, manifest: StageManifest) -> dict[str, str]:
    """column -> Arrow type of the published parts (for the card's `dataset_info.features`)."""
    return ctx.storage.parquet_schema(manifest.outputs[0].path) if manifest.outputs else {}


def fence(ctx) -> None:
    """Only the holder of the dataset's current lease may make a version visible or announce it."""
    if ctx.fence:
        assert_current(ctx.storage, ctx.fence["folder"], ctx.fence["generation"], ctx.fence["what"])


def emit_published(published: dict, rows: int, run_id: str, uri: str, diff: dict, retrain: bool) -> None:
    """The Prefect event the `retrain` deployment triggers on; a no-op outside a Prefect run.

    The label `sluice.retrain` carries the retrain hook's threshold decision, so the trigger filters on it and a
    below-threshold publish creates no flow run at all."""
    try:
        from prefect.events import emit_event

        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"sluice.dataset.{published['dataset']}",
                      "sluice.dataset": published["dataset"], "sluice.version": str(published["version"]),
                      "sluice.retrain": "true" if retrain else "false"},
            payload={"dataset": published["dataset"], "version": published["version"], "uri": uri, "rows": rows,
                     "rows_by_source": published["rows_by_source"], "run_id": run_id, "diff": diff},
        )
        log.info(f"emitted {EVENT} for {published['dataset']} v{published['version']} "
                 f"(changed {diff['changed_fraction']:.2%}, retrain {'yes' if retrain else 'no: below threshold'})")
    except Exception as exc:  # an event is a notification; the version is already committed
        log.warning(f"could not emit {EVENT}: {exc}")


STAGE = Stage(
    name="publish",
    fn=publish_rows,
    params=lambda cfg: cfg.publish,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "source": CANONICAL["source"],
              "content_sha256": CANONICAL["content_sha256"]},
    adds={},
    suite="publish",
    kind="sink",
    sink=SinkSteps(open=open_version, part=version_part, close=close_version),
    description="a versioned dataset: parts copied byte for byte, card, diff, and the published event",
)
