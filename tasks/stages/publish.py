"""Publish: the sink. A run's last stage output becomes `datasets/<name>/v<N>/`, visible only once its manifest exists.

The version number is claimed and the version committed by tasks/io/versions.py (claim_version, commit_version),
as `sluice forget` does. A run that crashed mid-publish finds its own claim on rerun and finishes that version instead
of taking a new one. A claimed version whose contract fails is never committed: the number is skipped, not reused,
so a version number always means one set of bytes.

Shards go through the runner like any stage's (receipts, the shard contract, resume); parts are copied byte for byte
from the stage before. The runner calls `close` once the stage contract has passed: it commits the version. The
dataset card, the diff against the previous version and the `sluice.dataset.published` event follow in the flow
(tasks/ops/announce.py).

Mode `replace`: the version holds this run's rows. Mode `append`: it holds the previous version's data files
(listed in the manifest, not copied) and this run's parts, written in the previous version's schema so that every
reader sees one table. Either way each part gets its dedup index part (tasks/stages/dedup/published.py), which the
next append run deduplicates against.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from schemas.config import PublishConfig
from schemas.record import CANONICAL
from tasks.io import layout
from tasks.io.manifests import DataObject, StageManifest
from tasks.io.versions import claim_version, commit_version, index_objects, newest_version
from tasks.runtime.stage import SinkSteps, Stage, StageInputError, StageResult
from tasks.runtime.stats import Stats

log = logging.getLogger("sluice")


# What identifies and checks a row stays in the schema even when empty (the publish suite and diffs read them).
KEPT_EVEN_IF_EMPTY = ("id", "text", "content_sha256", "source")


def publish_rows(batch: pl.DataFrame, params: PublishConfig) -> StageResult:
    """Every row is published as it is; what publishing adds is a count per source, for the card and the event."""
    by_source = dict(batch.group_by("source").agg(pl.len()).sort("source").iter_rows()) if batch.height else {}
    tallies = {"rows_by_source": by_source}
    if "q_lang" in batch.columns and batch.height:
        tallies["rows_by_language"] = dict(batch.drop_nulls("q_lang").group_by("q_lang").agg(pl.len()).iter_rows())
    return StageResult(kept=batch, rejected=batch.clear(), stats=Stats(tallies=tallies))


def open_version(ctx, inputs: list[dict]) -> dict:
    """Claim the version, and name the columns that no input row fills: they are left out of the published
    schema (a reader should not meet 11 columns of nulls), and the card lists them. Appending, the schema is the
    previous version's instead: columns it lacks are left out (with a warning when they hold values)."""
    dataset = ctx.config.publish.dataset
    paths = [o["path"] for o in inputs]
    excluded = excluded_columns(ctx.storage.parquet_empty(paths[0]).columns if paths else [],
                                ctx.config.publish.columns)
    drop = [c for c in ctx.storage.null_only_columns(paths) if c not in KEPT_EVEN_IF_EMPTY and c not in excluded]
    target = {"dataset": dataset, "version": claim_version(ctx.storage, dataset, ctx.run_id), "drop": drop + excluded,
              "excluded": excluded,
              "mode": ctx.config.publish.mode, "base": None, "embeddings": _embedding_parts(ctx, inputs)}
    base = (newest_version(ctx.storage, dataset) or 0) if ctx.config.publish.mode == "append" else 0
    if base:
        from tasks.io.versions import require_intact, version_manifest

        require_intact(ctx.storage, dataset, base, ctx.config.publish.verify_base)
        manifest = version_manifest(ctx.storage, dataset, base)
        schema = ctx.storage.parquet_empty(manifest.outputs[0].path) if manifest.outputs else None
        if schema is not None:
            columns = ctx.storage.parquet_empty(paths[0]).columns if paths else []
            extra = [c for c in columns if c not in schema.columns]
            filled = [c for c in extra if c not in target["drop"]]
            if filled:
                log.warning(f"publish: appending to {dataset} v{base}, whose files have no column "
                            f"{', '.join(filled)}: those values are left out (publish with --publish-mode replace "
                            "to change the schema)")
            target.update(drop=sorted(set(target["drop"]) | set(extra)), schema=_schema_ipc(schema))
        target["base"] = base
    return target


def excluded_columns(columns: list[str], cfg) -> list[str]:
    """The columns `publish.columns` leaves out of a version (never id or text: readers and the index need them)."""
    from fnmatch import fnmatchcase

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatchcase(name, p) for p in patterns)

    return [c for c in columns if c not in ("id", "text")
            and (not matches(c, cfg.include) or matches(c, cfg.exclude))]


def _embedding_parts(ctx, inputs: list[dict]) -> list[str | None]:
    """Per input part, this run's score-stage embeddings of the same shard (side outputs are named after the shard
    the score stage saw, and later stages keep shard names), for the index; None where there are none."""
    score = ctx.storage.read_record_if_exists(StageManifest, layout.stage_manifest(ctx.run_id, "score"))
    have = {layout.shard_of_part(o.path): o.path for o in (score.side_outputs.get("embeddings", []) if score else [])}
    return [have.get(layout.shard_of_part(o["path"])) for o in inputs]


def _schema_ipc(frame: pl.DataFrame) -> str:
    """A schema travels inside the target (JSON, part of every shard's fingerprint) as a zero-row Arrow IPC."""
    buf = io.BytesIO()
    frame.clear().write_ipc(buf)
    return base64.b64encode(buf.getvalue()).decode()


def conform_to_base(target: dict, frame: pl.DataFrame) -> pl.DataFrame:
    """Appending: this run's rows in the previous version's columns, order and types (missing ones null)."""
    if not target.get("schema"):
        return frame
    schema = pl.read_ipc(io.BytesIO(base64.b64decode(target["schema"]))).schema
    try:
        return frame.select([pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                             for c, t in schema.items()])
    except pl.exceptions.PolarsError as exc:
        raise StageInputError(f"publish: this run's rows do not fit the schema of {target['dataset']} "
                              f"v{target['base']} ({exc}); publish with --publish-mode replace to start a new "
                              "schema") from exc


def write_index_part(ctx, target: dict, index: int, frame: pl.DataFrame) -> None:
    from tasks.stages.dedup.published import index_rows

    rows = index_rows(frame, ctx.config.dedup, target["version"])
    embedding_part = (target.get("embeddings") or [None] * (index + 1))[index]
    if embedding_part:  # the score stage's embeddings of these rows, for semantic dedup against this version
        emb = ctx.storage.read_parquet(embedding_part, columns=["id", "embedding"])
        rows = rows.join(emb, on="id", how="left", maintain_order="left")
    ctx.storage.write_parquet(layout.index_part(target["dataset"], target["version"], index), rows)


TOKEN_FILES = (".bin", ".idx", ".docs.parquet")


def tokenizer_of(ctx):
    """(tokenizer, identity) for publish.tokens: the packaged SmolLM2 tokenizer (its cached conversion, made on
    first use) or the pinned local tokenizer.json. Resolved once per process and settings: finding the packaged
    one checks the whole model cache's hashes (~1 s), which every published part would otherwise repeat."""
    cfg = ctx.config.publish.tokens
    lm = ctx.config.score.lm.model_dump_json() if cfg.tokenizer == "smollm2" else ""
    return _tokenizer(cfg.tokenizer, cfg.sha256, cfg.eos_token, lm)


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: str, sha256: str | None, eos_token: str | None, lm_json: str):
    from schemas.config import LanguageModelConfig
    from tasks.io.storage import sha256_bytes
    from tasks.text import token_shards

    if spec == "smollm2":
        from tasks.models.loading import lm_folder

        path = lm_folder(LanguageModelConfig.model_validate_json(lm_json)) / "tokenizer.json"
        name = "SmolLM2-135M-Instruct"
    else:
        path, name = Path(spec).expanduser(), Path(spec).name
    tokenizer = token_shards.load_tokenizer(str(path), sha256)
    eos = token_shards.eos_id(tokenizer, eos_token)
    return tokenizer, {"name": name, "sha256": sha256 or sha256_bytes(path.read_bytes()),
                       "vocab_size": tokenizer.get_vocab_size(), "eos_id": eos,
                       "engine": token_shards.encoder_for(tokenizer).engine,
                       "dtype": token_shards.dtype_for(tokenizer.get_vocab_size()).name}


def write_token_part(ctx, target: dict, index: int, frame: pl.DataFrame) -> None:
    """The part's token shard (.bin, .idx, .docs.parquet), written before its receipt like the index part."""
    import numpy as np

    from tasks.text import token_shards

    cfg = ctx.config.publish.tokens
    tokenizer, identity = tokenizer_of(ctx)
    encoded = token_shards.encode(frame["text"], tokenizer, identity["eos_id"], np.dtype(identity["dtype"]),
                                  token_shards.order_of(frame.height, cfg.shuffle_seed, index), cfg.seq_len)
    base = layout.token_part(target["dataset"], target["version"], index)
    docs = frame.select("id", "source")[encoded.order].with_columns(
        tokens=pl.Series(np.diff(encoded.offsets).astype(np.int64)))
    ctx.storage.write_bytes(base + ".bin", encoded.tokens.tobytes())
    ctx.storage.write_bytes(base + ".idx", encoded.offsets.tobytes())
    ctx.storage.write_parquet(base + ".docs.parquet", docs)


def write_beside_part(ctx, target: dict, index: int, frame: pl.DataFrame) -> None:
    write_index_part(ctx, target, index, frame)
    if ctx.config.publish.tokens.enabled:
        write_token_part(ctx, target, index, frame)


def token_part_entry(ctx, rel: str) -> tuple[dict, dict[str, int]]:
    """One token shard as the manifest lists it (each file's path, sha256 and bytes; documents; tokens), and its
    tokens by source."""
    from tasks.io.storage import sha256_bytes

    files = {}
    for suffix in TOKEN_FILES:
        data = ctx.storage.read_bytes(rel + suffix)
        files[suffix.lstrip(".").replace(".", "_")] = {"path": rel + suffix, "sha256": sha256_bytes(data),
                                                       "bytes": len(data)}
    docs = ctx.storage.read_parquet(rel + ".docs.parquet", columns=["source", "tokens"])
    return {**files, "documents": docs.height, "tokens": int(docs["tokens"].sum() or 0)}, tokens_by_source(docs)


def tokens_by_source(docs: pl.DataFrame) -> dict[str, int]:
    """A shard's tokens per source, from its .docs.parquet rows."""
    return {str(k): int(n) for k, n in docs.group_by("source").agg(pl.col("tokens").sum()).iter_rows()}


def tokens_summary(ctx, parts: list[dict], by_source: dict[str, int]) -> dict:
    """The manifest's `published.tokens`: tokenizer, layout, the parts, tokens in all and by source, and the rows
    the shards cover (fewer than the version's when an append builds on a version without shards)."""
    _, identity = tokenizer_of(ctx)
    cfg = ctx.config.publish.tokens
    return {"tokenizer": identity, "seq_len": cfg.seq_len, "shuffle_seed": cfg.shuffle_seed,
            "layout": "tokens/part-NNNNN.bin (ids, EOS after each document) + .idx (uint64 offsets) + .docs.parquet",
            "parts": parts, "tokens": sum(p["tokens"] for p in parts), "rows": sum(p["documents"] for p in parts),
            "tokens_by_source": dict(sorted(by_source.items()))}


def same_tokens_settings(ctx, recorded: dict) -> bool:
    """Whether this config tokenizes as the recorded shards were (same tokenizer file, packing and shuffle)."""
    cfg = ctx.config.publish.tokens
    return (cfg.enabled and recorded.get("seq_len") == cfg.seq_len and recorded.get("shuffle_seed") == cfg.shuffle_seed
            and recorded.get("tokenizer", {}).get("sha256") == tokenizer_of(ctx)[1]["sha256"])


def tokens_record(ctx, manifest: StageManifest, target: dict, base: StageManifest | None) -> dict | None:
    """The version's token shards: this run's parts, after the previous version's when appending to one whose
    shards were made the same way (otherwise the shards cover this run's rows only, and `rows` says so)."""
    if not ctx.config.publish.tokens.enabled:
        return None
    before = ((base.published or {}).get("tokens") or {}) if base is not None else {}
    if before and not same_tokens_settings(ctx, before):
        log.warning(f"publish: v{target['base']}'s token shards were made with other settings; v{target['version']}'s "
                    "shards cover this run's rows only")
        before = {}
    parts, by_source = list(before.get("parts", [])), dict(before.get("tokens_by_source", {}))
    for i, _ in enumerate(manifest.outputs):
        entry, sources = token_part_entry(ctx, layout.token_part(target["dataset"], target["version"], i))
        parts.append(entry)
        by_source = merged_counts(by_source, sources)
    return tokens_summary(ctx, parts, by_source)


def version_part(target: dict, index: int) -> str:
    return layout.version_part(target["dataset"], target["version"], index)


def close_version(ctx, manifest: StageManifest, target: dict) -> dict:
    """Commit the claimed version once the stage contract passed (on resume, the version this run committed)."""
    dataset, version = target["dataset"], target["version"]
    committed = ctx.storage.read_record_if_exists(StageManifest, layout.version_manifest(dataset, version))
    if committed is None:
        committed = version_record(ctx, manifest, target)
        commit_version(ctx.storage, committed, target.get("base"), fence=ctx.check_fence)
        added = f" ({manifest.rows_out:,} added to v{target['base']})" if target.get("base") else ""
        log.info(f"published {dataset} v{version}: {committed.rows_out:,} rows{added}")
    return {**committed.published, "path": layout.version_dir(dataset, version)}


def merged_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


def version_record(ctx, manifest: StageManifest, target: dict) -> StageManifest:
    """The version's `_manifest.json`: the run's publish manifest, and for an append the previous version's files,
    index parts and counts before this run's (the run's own counts stay in `published.run`)."""
    from tasks.stages.dedup.published import index_format

    dataset, version = target["dataset"], target["version"]
    index = [_index_object(ctx, dataset, version, i, o.rows) for i, o in enumerate(manifest.outputs)]
    published = {"dataset": dataset, "version": version, "published_at": datetime.now(UTC).isoformat(),
                 "mode": target.get("mode", "replace"), "base_version": target.get("base"),
                 "rows_added": manifest.rows_out,
                 "rows_by_source": manifest.stats.tallies.get("rows_by_source", {}),
                 "rows_by_language": manifest.stats.tallies.get("rows_by_language", {}),
                 "columns_left_out": [c for c in target.get("drop", []) if c not in target.get("excluded", [])],
                 "columns_excluded": target.get("excluded", []),
                 "run": {"rows_in": manifest.rows_in, "rows_out": manifest.rows_out},
                 **({"trial": {"limit_rows": ctx.config.ingest.limit_rows}} if ctx.config.ingest.limit_rows else {})}
    update: dict = {}
    if target.get("base"):
        from tasks.io.versions import version_manifest

        base = version_manifest(ctx.storage, dataset, target["base"])
        before = base.published or {}
        index = index_objects(base) + index
        published.update(rows_by_source=merged_counts(before.get("rows_by_source", {}), published["rows_by_source"]),
                         rows_by_language=merged_counts(before.get("rows_by_language", {}),
                                                  published["rows_by_language"]),
                         columns_left_out=sorted(set(before.get("columns_left_out", []))
                                                 | set(published["columns_left_out"])))
        update = {"outputs": base.outputs + manifest.outputs, "rows_in": base.rows_out + manifest.rows_in,
                  "rows_out": base.rows_out + manifest.rows_out}
    fmt = index_format(ctx.config.dedup)
    if any(target.get("embeddings") or []):
        from tasks.stages.score import embedder_identity

        fmt["embedder"] = embedder_identity(ctx.config.score)
    elif target.get("base"):
        from tasks.io.versions import version_manifest

        before_fmt = ((version_manifest(ctx.storage, dataset, target["base"]).published or {}).get("index") or {})
        if (before_fmt.get("format") or {}).get("embedder"):
            fmt["embedder"] = before_fmt["format"]["embedder"]
    published["index"] = {"format": fmt, "parts": [o.as_json() for o in index]}
    base_manifest = None
    if target.get("base"):
        from tasks.io.versions import version_manifest

        base_manifest = version_manifest(ctx.storage, dataset, target["base"])
    tokens = tokens_record(ctx, manifest, target, base_manifest)
    if tokens is not None:
        published["tokens"] = tokens
    return manifest.model_copy(update={**update, "published": published})


def _index_object(ctx, dataset: str, version: int, i: int, rows: int) -> DataObject:
    from tasks.io.storage import sha256_bytes

    rel = layout.index_part(dataset, version, i)
    data = ctx.storage.read_bytes(rel)
    return DataObject(path=rel, rows=rows, sha256=sha256_bytes(data), bytes=len(data))


STAGE = Stage(
    name="publish",
    fn=publish_rows,
    params=lambda cfg: cfg.publish,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "source": CANONICAL["source"],
              "content_sha256": CANONICAL["content_sha256"]},
    adds={},
    suite="publish",
    kind="sink",
    sink=SinkSteps(open=open_version, part=version_part, close=close_version, conform=conform_to_base,
                   beside_part=write_beside_part),
    description="a versioned dataset: parts copied byte for byte, committed once the contract passed",
)
