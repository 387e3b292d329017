"""Split-view poisoning, checked: an object changed after it was curated, re-curated (every stage but the sink, the
audit among them) and its rows diffed against the rows the first curation read from it.

Carlini et al. 2023 ("Poisoning web-scale training datasets is practical") replace content after it was indexed,
so the bytes a later reader gets are not the ones that were vetted. The watch flow notices the new bytes (the
ledger's sha256); this says which rows changed and what the audit found among them, so a reviewer reads the
changed rows, not the whole object.
"""

from __future__ import annotations

import polars as pl

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.io.storage import Storage

EXAMPLES = 5


def _rows_of(storage: Storage, run_id: str, stage: str, uri: str, columns: list[str]) -> pl.DataFrame | None:
    """The rows `stage` of `run_id` kept from the input object `uri` (its shards read one at a time, only the rows
    of that object kept); None when the run has no such stage."""
    m = storage.read_record_if_exists(StageManifest, layout.stage_manifest(run_id, stage))
    ingest = storage.read_record_if_exists(StageManifest, layout.stage_manifest(run_id, "ingest"))
    if m is None or ingest is None:
        return None
    names = [i.get("name", i.get("uri")) for i in ingest.inputs if i.get("uri") == uri]
    frames = []
    for obj in m.outputs:
        part = storage.read_parquet(obj.path)
        wanted = [c for c in columns if c in part.columns]
        frames.append(part.filter(pl.col("src_file").is_in(names)).select(wanted))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema={c: pl.String
                                                                                        for c in columns})


def diff(storage: Storage, change: dict, run_id: str) -> dict:
    """The changed object's rows now (re-curated by `run_id`) against the rows its first curation read (by content
    hash): how many were added, removed or unchanged, the added rows' audit findings and examples."""
    uri, before_run = change["uri"], change["curated_by_run"]
    before = _rows_of(storage, before_run, "ingest", uri, ["content_sha256"])
    now = _rows_of(storage, run_id, "ingest", uri, ["id", "content_sha256", "src_line", "text"])
    out = {"uri": uri, "curated_by_run": before_run, "recurated_by_run": run_id}
    if before is None or now is None:
        return {**out, "error": f"run {before_run if before is None else run_id} has no ingest records of {uri}"}
    was = set(before["content_sha256"].to_list())
    added = now.filter(~pl.col("content_sha256").is_in(list(was)))
    kept_now = set(now["content_sha256"].to_list())
    out.update(rows_was=before.height, rows_now=now.height, added=added.height,
               removed=sum(1 for h in was if h not in kept_now), unchanged=now.height - added.height)
    audited = _rows_of(storage, run_id, "audit", uri, ["id", "audit_findings"])
    if audited is not None and "audit_findings" in audited.columns:
        flagged = audited.join(added.select("id"), on="id").drop_nulls("audit_findings")
        out["added_flagged_by_audit"] = flagged.height
        out["audit_findings"] = flagged["audit_findings"].unique().sort().head(EXAMPLES).to_list()
    out["added_examples"] = [{"line": line, "text": text[:200]} for line, text in
                             added.sort("src_line").select("src_line", "text").head(EXAMPLES).iter_rows()]
    return out
