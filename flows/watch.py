"""The `watch` flow: poll a prefix, curate only objects not curated before, report objects changed after curation."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.curate import curate, task_runner
from schemas.config import load_config
from tasks.io import layout
from tasks.io.readers import InputError, resolve_inputs
from tasks.io.storage import Storage
from tasks.ops.watch_ledger import content_sha256, ledger_entry, load_ledger, save_ledger, scan
from tasks.runtime.fingerprints import new_run_id

CHANGED_EVENT = "sluice.watch.object-changed"


def _emit_changed(change: dict) -> None:
    from prefect.events import emit_event

    emit_event(event=CHANGED_EVENT, resource={"prefect.resource.id": f"sluice.object.{change['uri']}"},
               payload=change)


def recurate(changed: list[dict], output: str, config_path: str | None, cfg, storage: Storage, stamp: str) -> dict:
    """Curate the changed objects again as a trial (never published), with the audit stage, and diff their rows
    against the first curation's (tasks/ops/split_view.py)."""
    from tasks.ops import split_view
    from tasks.runtime import registry

    logger = get_run_logger()
    stages = [s for s in (cfg.stages or registry.DEFAULT_PIPELINE) if registry.STAGES[s].kind != "sink"]
    if "audit" not in stages:
        stages = sorted([*stages, "audit"], key=registry.ORDER.index)
    run_id = f"watch-changed-{new_run_id()}"
    runner = task_runner(cfg.runner.kind, cfg.runner.workers, cfg.runner.dask_address)
    run = curate.with_options(task_runner=runner)(inputs=[c["uri"] for c in changed], output=output,
                                                   config_path=config_path, run_id=run_id, stages=stages,
                                                   trial=True)
    diffs = [split_view.diff(storage, c, run_id) for c in changed]
    storage.write_json(layout.watch_alert(f"{stamp}-diff"), {"run_id": run_id, "objects": diffs})
    for d in diffs:
        logger.warning(f"{d['uri']} re-curated by {run_id}: {d.get('added', '?')} row(s) not in the first "
                       f"curation, {d.get('removed', '?')} gone, {d.get('added_flagged_by_audit', 0)} of the new "
                       "ones flagged by the audit")
    return {"run_id": run_id, "status": run.get("status"), "objects": diffs}


@flow(name="watch", flow_run_name="watch-{output}", validate_parameters=True)
def watch(inputs: list[str], output: str, config_path: str | None = None) -> dict:
    """One poll: list `inputs`, start `curate` (as a subflow) on the objects the ledger has not seen, and record
    them in the ledger only once that run succeeded, so a failed run's objects are picked up again next poll."""
    logger = get_run_logger()
    cfg = load_config(config_path)
    s3 = cfg.storage.s3_options()
    storage = Storage(output, s3)
    try:
        files = resolve_inputs(inputs, s3)
    except InputError:
        files = []
    ledger = load_ledger(storage)
    found = scan(files, ledger, s3)
    summary = {"listed": len(files), "new": [f.uri for f in found.new], "changed": found.changed,
               "retagged": [f.uri for f in found.retagged], "unchanged": found.unchanged, "run": None}
    for f in found.retagged:
        logger.info(f"{f.uri}: new etag/mtime but the same bytes as when curated; ledger updated")
        ledger[f.uri] = {**ledger[f.uri], "etag": f.version, "size": f.size}
    if found.changed:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        if cfg.deploy.recurate_changed:
            summary["recurated"] = recurate(found.changed, output, config_path, cfg, storage, stamp)
        storage.write_json(layout.watch_alert(stamp), {"detected_at": datetime.now(UTC).isoformat(),
                                                      "objects": found.changed})
        for change in found.changed:
            logger.warning(
                f"CHANGED AFTER CURATION: {change['uri']} (curated by run {change['curated_by_run']}) now has "
                f"sha256 {change['now']['sha256'][:16]}…, was {str(change['was']['sha256'])[:16]}…; not re-ingested. "
                "Someone replaced data that was already vetted; inspect it before trusting this prefix again."
            )
            try:
                _emit_changed(change)
            except Exception as exc:
                logger.warning(f"could not emit {CHANGED_EVENT}: {exc}")
    if found.retagged and not found.new:
        save_ledger(storage, ledger)
    if found.new:
        hashes = {f.uri: content_sha256(f, s3) if cfg.deploy.hash_new_objects else None for f in found.new}
        run_id = f"watch-{new_run_id()}"
        logger.info(f"{len(found.new)} new object(s) under {', '.join(inputs)}: starting curate run {run_id}")
        runner = task_runner(cfg.runner.kind, cfg.runner.workers, cfg.runner.dask_address)
        run = curate.with_options(task_runner=runner)(inputs=[f.uri for f in found.new], output=output,
                                                       config_path=config_path, run_id=run_id,
                                                       publish_mode="append" if cfg.publish.mode == "auto"
                                                       else cfg.publish.mode)
        for f in found.new:
            ledger[f.uri] = ledger_entry(f, hashes[f.uri], run_id)
        save_ledger(storage, ledger)
        summary["run"] = {k: run.get(k) for k in ("run_id", "status", "published")}
    else:
        logger.info(f"nothing new under {', '.join(inputs)} ({found.unchanged} object(s) already curated)")
    lines = [f"# watch {datetime.now(UTC).isoformat()}", "", f"- listed: {len(files)}",
             f"- new: {len(found.new)}", f"- changed after curation: {len(found.changed)}",
             f"- unchanged: {found.unchanged}"]
    lines += [f"  - **changed**: `{c['uri']}` (curated by `{c['curated_by_run']}`)" for c in found.changed]
    try:
        create_markdown_artifact(key="sluice-watch", markdown="\n".join(lines), description="Sluice watch poll")
    except Exception as exc:
        logger.warning(f"could not create the watch artifact: {exc}")
    return summary
