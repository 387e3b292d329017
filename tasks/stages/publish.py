"""Publish: the sink. A run's last stage output becomes `datasets/<name>/v<N>/`, visible only once its manifest exists.

Versions are claimed with an exclusive create of `datasets/<name>/_claims/v<N>.json` (O_EXCL locally, a conditional
PUT on S3), so two concurrent publishes can never take the same N. A run that crashed mid-publish finds its own claim
on rerun and finishes that version instead of taking a new one. A claimed version whose contract fails is never
committed: the number is skipped, not reused, so a version number always means one set of bytes.

Shards go through the runner like any stage's (receipts, the shard contract, resume); parts are copied byte for byte
from the stage before. The runner calls `close` once the stage contract has passed: it commits the version
(`_manifest.json`, exclusive), writes the dataset card and the diff against the previous version, and emits
`sluice.dataset.published`.

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

import orjson
import polars as pl

from schemas.config import PublishConfig
from schemas.record import CANONICAL
from tasks.io import layout
from tasks.io.locks import assert_current
from tasks.io.manifests import DataObject, StageManifest, Stats, render
from tasks.io.versions import index_objects
from tasks.runtime.stage import SinkSteps, Stage, StageInputError, StageResult

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
    schema (a reader should not meet 11 columns of nulls), and the card lists them. Appending, the schema is the
    previous version's instead: columns it lacks are left out (with a warning when they hold values)."""
    dataset = ctx.config.publish.dataset
    paths = [o["path"] for o in inputs]
    excluded = excluded_columns(ctx.storage.parquet_empty(paths[0]).columns if paths else [],
                                ctx.config.publish.columns)
    drop = [c for c in ctx.storage.null_only_columns(paths) if c not in KEPT_EVEN_IF_EMPTY and c not in excluded]
    target = {"dataset": dataset, "version": claim_version(ctx, dataset), "drop": drop + excluded,
              "excluded": excluded,
              "mode": ctx.config.publish.mode, "base": None, "embeddings": _embedding_parts(ctx, inputs)}
    base = _newest_committed(ctx, dataset) if ctx.config.publish.mode == "append" else 0
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
        from tasks.stages.score.models import lm_folder

        path = lm_folder(LanguageModelConfig.model_validate_json(lm_json)) / "tokenizer.json"
        name = "SmolLM2-135M-Instruct"
    else:
        path, name = Path(spec).expanduser(), Path(spec).name
    tokenizer = token_shards.load_tokenizer(str(path), sha256)
    eos = token_shards.eos_id(tokenizer, eos_token)
    return tokenizer, {"name": name, "sha256": sha256 or sha256_bytes(path.read_bytes()),
                       "vocab_size": tokenizer.get_vocab_size(), "eos_id": eos,
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
        if target.get("base") and newest != target["base"]:
            raise RuntimeError(f"dataset {dataset}: this run appends to v{target['base']}, but the newest version "
                               f"is v{newest}; rerun to append to it")
        committed = version_record(ctx, manifest, target)
        published = committed.published
        card = dataset_card(committed, _run_manifests(ctx), ctx.config.publish, _features(ctx, manifest),
                            _examples(ctx, manifest))
        ctx.storage.write_bytes(layout.version_card(dataset, version), card.encode())
        if not ctx.storage.create_exclusive(layout.version_manifest(dataset, version), render(committed)):
            raise RuntimeError(f"dataset {dataset} v{version} was committed by someone else while publishing")
        added = f" ({manifest.rows_out:,} added to v{target['base']})" if target.get("base") else ""
        log.info(f"published {dataset} v{version}: {committed.rows_out:,} rows{added}")
    else:  # resumed after the version was committed but before the stage was
        committed, published = existing, existing.published
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
        emit_published(published, committed.rows_out, ctx.run_id, uri, diff,
                       worth_retraining(diff, ctx.config.retrain),
                       [ctx.storage.uri(p["bin"]["path"]) for p in (published.get("tokens") or {}).get("parts", [])])
    return {**published, "path": layout.version_dir(dataset, version), "diff": diff}


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


def _features(ctx, manifest: StageManifest) -> dict[str, str]:
    """column -> Arrow type of the published parts (for the card's `dataset_info.features`)."""
    return ctx.storage.parquet_schema(manifest.outputs[0].path) if manifest.outputs else {}


def _examples(ctx, manifest: StageManifest, n: int = 3) -> list[dict]:
    """The first rows of the version's first part, for the card."""
    if not manifest.outputs:
        return []
    have = ctx.storage.parquet_schema(manifest.outputs[0].path)
    columns = [c for c in ("id", "source", "label", "text") if c in have]
    return ctx.storage.read_parquet(manifest.outputs[0].path, columns=columns).head(n).to_dicts()


def fence(ctx) -> None:
    """Only the holder of the dataset's current lease may make a version visible or announce it."""
    if ctx.fence:
        assert_current(ctx.storage, ctx.fence["folder"], ctx.fence["generation"], ctx.fence["what"])


def emit_published(published: dict, rows: int, run_id: str, uri: str, diff: dict, retrain: bool,
                   token_shards: list[str] | None = None) -> None:
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
                     "rows_added": diff.get("rows_added", 0), "rows_removed": diff.get("rows_removed", 0),
                     "rows_forgotten": diff.get("rows_forgotten", 0), "changed_fraction": diff["changed_fraction"],
                     "rows_by_source": published["rows_by_source"], "run_id": run_id, "diff": diff,
                     **({"token_shards": token_shards, "tokens": published["tokens"]["tokens"]}
                        if token_shards else {})},
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
    sink=SinkSteps(open=open_version, part=version_part, close=close_version, conform=conform_to_base,
                   beside_part=write_beside_part),
    description="a versioned dataset: parts copied byte for byte, card, diff, and the published event",
)
