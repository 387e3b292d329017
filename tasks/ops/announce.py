"""What follows a version's commit: its dataset card, its diff against the version before, and the
`sluice.dataset.published` event the retrain deployment triggers on. The flows that commit a version (curate's
publish stage, `sluice forget`) compose this step after the commit (tasks/io/versions.commit_version).

Each part is skipped when done, so a rerun after a crash finishes them. The event is sent once per version:
`_event.json`, written after it, records what subscribers were told, and an older version than the newest is never
announced (nothing retrains on older data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.io.storage import Storage
from tasks.io.versions import newest_version, version_manifest
from tasks.ops.diff import diff_vs_previous
from tasks.ops.report.card import dataset_card
from tasks.ops.retrain_hook import worth_retraining

log = logging.getLogger("sluice")
EVENT = "sluice.dataset.published"


def announce_version(storage: Storage, config, dataset: str, version: int, run_id: str,
                     fence: Callable[[], None] | None = None) -> dict:
    """The card, the diff and the event of a committed version, each unless already done. Returns the diff."""
    committed = version_manifest(storage, dataset, version)
    published = committed.published or {}
    if not storage.exists(layout.version_card(dataset, version)):
        card = dataset_card(committed, run_manifests(storage, run_id), config.publish, _features(storage, committed),
                            _examples(storage, committed))
        storage.write_bytes(layout.version_card(dataset, version), card.encode())
    diff = storage.read_json_if_exists(layout.version_diff(dataset, version))
    if diff is None:
        diff = diff_vs_previous(storage, dataset, version)
        storage.write_json(layout.version_diff(dataset, version), diff)
    if storage.exists(layout.version_event(dataset, version)):
        return diff
    newest = newest_version(storage, dataset) or 0
    if newest > version:
        log.warning(f"dataset {dataset}: v{version} is not the newest (v{newest} is); no published event")
        return diff
    if fence is not None:
        fence()
    shards = [storage.uri(p["bin"]["path"]) for p in (published.get("tokens") or {}).get("parts", [])]
    retrain = worth_retraining(diff, config.retrain)
    payload = emit_published(published, committed.rows_out, run_id, storage.uri(layout.version_dir(dataset, version)),
                             diff, retrain, shards)
    storage.write_json(layout.version_event(dataset, version),
                       {"event": EVENT, "sent": payload is not None, "at": datetime.now(UTC).isoformat(),
                        "retrain": retrain, "payload": payload})
    return diff


def run_manifests(storage: Storage, run_id: str) -> list[StageManifest]:
    """The manifests of the stages a run committed before publishing (for the card); none for a forget."""
    run = storage.read_json_if_exists(layout.run_json(run_id)) or {}
    found = []
    for name in run.get("stages", []):
        m = storage.read_record_if_exists(StageManifest, layout.stage_manifest(run_id, name))
        if m is not None and name != "publish":
            found.append(m)
    return found


def _features(storage: Storage, version: StageManifest) -> dict[str, str]:
    """column -> Arrow type of the version's files (for the card's `dataset_info.features`)."""
    return storage.parquet_schema(version.outputs[0].path) if version.outputs else {}


def _examples(storage: Storage, version: StageManifest, n: int = 3) -> list[dict]:
    """The first rows of the version's first file, for the card."""
    if not version.outputs:
        return []
    have = storage.parquet_schema(version.outputs[0].path)
    columns = [c for c in ("id", "source", "label", "text") if c in have]
    return storage.read_parquet(version.outputs[0].path, columns=columns).head(n).to_dicts()


def emit_published(published: dict, rows: int, run_id: str, uri: str, diff: dict, retrain: bool,
                   token_shards: list[str] | None = None) -> dict | None:
    """The Prefect event the `retrain` deployment triggers on; its payload, or None when it could not be sent.

    The label `sluice.retrain` carries the retrain hook's threshold decision, so the trigger filters on it and a
    below-threshold publish creates no flow run at all."""
    payload = {"dataset": published["dataset"], "version": published["version"], "uri": uri, "rows": rows,
               "rows_added": diff.get("rows_added", 0), "rows_removed": diff.get("rows_removed", 0),
               "rows_forgotten": diff.get("rows_forgotten", 0), "changed_fraction": diff["changed_fraction"],
               "rows_by_source": published["rows_by_source"], "run_id": run_id, "diff": diff,
               **({"token_shards": token_shards, "tokens": published["tokens"]["tokens"]} if token_shards else {})}
    try:
        from prefect.events import emit_event

        sent = emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"sluice.dataset.{published['dataset']}",
                      "sluice.dataset": published["dataset"], "sluice.version": str(published["version"]),
                      "sluice.retrain": "true" if retrain else "false"},
            payload=payload,
        )
        if sent is None:  # outside a Prefect run with events off
            log.warning(f"{EVENT} for {published['dataset']} v{published['version']} was not sent: Prefect events "
                        "are off in this process")
            return None
        log.info(f"emitted {EVENT} for {published['dataset']} v{published['version']} "
                 f"(changed {diff['changed_fraction']:.2%}, retrain {'yes' if retrain else 'no: below threshold'})")
        return payload
    except Exception as exc:  # an event is a notification; the version is already committed
        log.warning(f"could not emit {EVENT}: {exc}")
        return None
