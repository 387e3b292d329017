"""Replay: quarantined rows of one stage and reason, re-run after a fix (a raised limit, a corrected rule).

The replayed rows become one extra input shard of that stage in a new run; the original run's kept rows of the stage
are carried into the new run by reference (a receipt pointing at the committed parts, not a copy), so the stages
after it see old and replayed rows together: dedup judges the replayed rows against everything kept before, and
publish makes a version of the whole. The original run is never modified.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from schemas.config import IngestConfig
from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.io.readers import detect_format, read_batches, resolve_inputs
from tasks.io.storage import Storage
from tasks.runtime.stage import Stage


class ReplayError(BadInput):
    pass


def stage_manifest(storage: Storage, run_id: str, stage: str) -> StageManifest:
    manifest = storage.read_record_if_exists(StageManifest, layout.stage_manifest(run_id, stage))
    if manifest is None:
        raise ReplayError(f"run {run_id} has no committed stage {stage} under {storage.uri(layout.RUNS)}")
    return manifest


def quarantined(storage: Storage, manifest: StageManifest, reason: str) -> pl.DataFrame:
    """The stage's rejected rows whose reason starts with `reason` (a code or a family, e.g. quality.gopher)."""
    frames = [storage.read_parquet(obj.path) for obj in manifest.rejected]
    if not frames:
        return pl.DataFrame()
    df = pl.concat(frames, how="diagonal_relaxed")
    return df.filter(pl.col("reason").str.starts_with(reason))


def _reread_source_lines(rows: pl.DataFrame, manifest: StageManifest, ingest: IngestConfig, s3_options: dict
                         ) -> pl.DataFrame:
    """Ingest quarantine keeps raw lines cut to `evidence_chars`, so the lines are read again from their files.
    Records name their file relative to the input root; the ingest manifest's inputs say where each one is."""
    where = {i["name"]: i["uri"] for i in manifest.inputs if "name" in i and "uri" in i}
    frames = []
    for (src_file,), lines in rows.group_by("src_file", maintain_order=True):
        wanted = lines["src_line"].unique()
        uri = where.get(src_file, src_file)  # format 1 recorded the absolute path itself
        fmt, compression = detect_format(uri, ingest.format)
        found = resolve_inputs([uri], s3_options)
        if not found:
            raise ReplayError(f"source file {uri} of the quarantined lines no longer exists")
        file = replace(found[0], name=src_file)  # the same record ids as in the original run
        for batch in read_batches(file, fmt, compression, ingest, s3_options):
            frames.append(batch.filter(pl.col("src_line").is_in(wanted.implode())))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


def replay_batch(storage: Storage, run_id: str, stage: Stage, reason: str, ingest: IngestConfig,
                 s3_options: dict) -> pl.DataFrame:
    """The rows to replay, in the shape the stage takes as input."""
    if stage.kind == "global":
        raise ReplayError(f"stage {stage.name} decides over the whole corpus; replay its input by rerunning it")
    manifest = stage_manifest(storage, run_id, stage.name)
    rows = quarantined(storage, manifest, reason)
    if rows.height == 0:
        known = ", ".join(sorted(manifest.rejected_by_reason)) or "none"
        raise ReplayError(f"run {run_id}, stage {stage.name}: no quarantined rows with reason {reason!r} "
                          f"(reasons there: {known})")
    if stage.kind == "source":
        batch = _reread_source_lines(rows, manifest, ingest, s3_options)
        if batch.height != rows.height:
            raise ReplayError(f"found {batch.height} of {rows.height} quarantined lines in their source files; "
                              "the inputs changed since the run, so they cannot be replayed faithfully")
        return batch
    # the stage's own input schema: quarantine rows also carry the signals the stage computed on them
    first_input = next((obj for obj in manifest.inputs if "path" in obj), None)
    if first_input is None:
        raise ReplayError(f"run {run_id}, stage {stage.name}: its manifest names no input parts")
    schema = pl.read_parquet_schema(storage.read_bytes(first_input["path"]))
    missing = [c for c in schema if c not in rows.columns]
    if missing:
        raise ReplayError(f"quarantined rows of stage {stage.name} lack input column(s) {', '.join(missing)}")
    return rows.select([pl.col(c).cast(t) for c, t in schema.items()])
