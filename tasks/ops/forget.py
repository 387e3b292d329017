"""Takedowns: `sluice forget` makes the next version of a dataset without some rows, and keeps them from coming back.

The new version lists the previous version's data files that hold none of the rows as they are (no copy) and
rewrites only the files that do, without them (with their dedup index parts). A tombstone records who asked, what
was selected, why and how many rows went: `datasets/<name>/_tombstones/<stamp>.json`, beside a Parquet file with
the forgotten rows' index rows. Every later run's dedup reads those as blocked (`dedup.forgotten`), in append and
replace mode alike, so re-ingesting the same source, or a near copy of its content, publishes nothing of it.
"""

from __future__ import annotations

import getpass
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from schemas.config import SluiceConfig
from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.locks import dataset_lock
from tasks.io.manifests import DataObject
from tasks.io.storage import Storage
from tasks.io.versions import (
    VersionConflict,
    VersionNotFound,
    claim_version,
    commit_version,
    index_objects,
    newest_version,
    tombstones,
    version_manifest,
)
from tasks.runtime.context import RunContext

log = logging.getLogger("sluice")


class ForgetError(BadInput):
    pass


@dataclass(frozen=True)
class Selector:
    """Exactly one of: a source (exact, or a prefix when it ends in `*`), a file of ids (a row's `id`,
    `source_id` or `content_sha256`, one per line), a polars SQL expression over the published columns."""

    source: str | None = None
    ids_file: str | None = None
    where: str | None = None

    def describe(self) -> str:
        if self.source is not None:
            return f"source {self.source}"
        if self.ids_file is not None:
            return f"ids in {Path(self.ids_file).name}"
        return f"where {self.where}"

    def expression(self) -> pl.Expr:
        given = [x for x in (self.source, self.ids_file, self.where) if x is not None]
        if len(given) != 1:
            raise ForgetError("give exactly one of --source, --ids, --where")
        if self.source is not None:
            if self.source.endswith("*"):
                return pl.col("source").str.starts_with(self.source[:-1])
            return pl.col("source") == self.source
        if self.ids_file is not None:
            try:
                lines = Path(self.ids_file).read_text().splitlines()
            except OSError as exc:
                raise ForgetError(f"--ids {self.ids_file}: {exc.strerror}") from exc
            ids = pl.Series([x.strip() for x in lines if x.strip()], dtype=pl.String)
            if ids.is_empty():
                raise ForgetError(f"--ids {self.ids_file}: the file lists no ids")
            return (pl.col("id").is_in(ids.implode()) | pl.col("content_sha256").is_in(ids.implode())
                    | pl.col("source_id").is_in(ids.implode()))
        if "--" in self.where or "/*" in self.where or ";" in self.where:
            raise ForgetError(f"--where {self.where!r}: comments and ';' are not allowed (a comment silently cuts "
                              "the expression short)")
        try:
            return pl.sql_expr(self.where)
        except Exception as exc:  # polars raises several error types for a bad expression
            raise ForgetError(f"--where {self.where!r} is not a valid SQL expression: {exc}") from exc

    def check_columns(self, columns: list[str]) -> None:
        """A --where naming a column the version does not have is a usage error, not 'no row matches'."""
        if self.where is None:
            return
        try:
            named = set(self.expression().meta.root_names())
        except pl.exceptions.PolarsError:
            return
        unknown = sorted(named - set(columns) - {"source_id"})
        if unknown:
            raise ForgetError(f"--where names {', '.join(unknown)}, which the published version does not have "
                              f"(its columns: {', '.join(columns)})")


def _matches(frame: pl.DataFrame, selector: Selector) -> pl.Series:
    try:
        for col in ("source_id",):
            if col not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(col))
        return frame.select(selector.expression().fill_null(False).alias("m"))["m"]
    except pl.exceptions.PolarsError as exc:
        raise ForgetError(f"{selector.describe()}: {exc} (published columns: {', '.join(frame.columns)})") from exc


def forget(storage: Storage, config: SluiceConfig, dataset: str, selector: Selector, reason: str,
           by: str | None = None, dry_run: bool = False, max_fraction: float = 0.1,
           confirm: Callable[[dict], bool] | None = None) -> dict:
    """Publish the next version of `dataset` without the selected rows; record the tombstone. Returns a summary.
    Nothing is published when no row matches, on a dry run, when `confirm` declines, or when the rows selected
    exceed `max_fraction` of the version (ForgetError: a selector like `... OR 1=1` must not erase a dataset)."""
    from tasks.ops.announce import announce_version
    from tasks.stages.dedup.published import index_rows

    if not reason.strip() and not dry_run:
        raise ForgetError("--reason must say why (it is kept in the tombstone log)")
    selector.expression()  # a bad selector fails before anything is locked
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    tomb_id = f"forget-{stamp}"
    lease = dataset_lock(storage, dataset, tomb_id, config.runner.lock_ttl_seconds)
    lease.acquire(wait_seconds=config.runner.lock_wait_seconds or 0)
    try:
        base = newest_version(storage, dataset)
        if base is None:
            raise VersionNotFound(f"dataset {dataset} has no published version under {storage.uri(layout.DATASETS)}")
        before = version_manifest(storage, dataset, base)
        index = index_objects(before)
        if index and len(index) != len(before.outputs):
            raise ForgetError(f"{dataset} v{base}: its manifest lists {len(before.outputs)} data files and "
                              f"{len(index)} index parts; refusing to guess which belongs to which")
        if before.outputs:
            selector.check_columns(list(storage.parquet_schema(before.outputs[0].path)))
        hits: dict[int, pl.Series] = {}  # the first pass only counts: nothing is written before the guard
        by_source: dict[str, int] = {}
        sample: list[str] = []
        for i, obj in enumerate(before.outputs):
            frame = storage.read_parquet(obj.path, columns=None)
            hit = _matches(frame, selector)
            if hit.any():
                hits[i] = hit
                gone = frame.filter(hit)
                for src, n in gone.group_by("source").agg(pl.len()).iter_rows():
                    by_source[src] = by_source.get(src, 0) + n
                sample += gone["id"].head(5 - len(sample)).to_list() if len(sample) < 5 else []
        selected = sum(by_source.values())
        plan = {"dataset": dataset, "version": base, "rows_forgotten": 0, "rows_selected": selected,
                "rows_total": before.rows_out, "rows_by_source": dict(sorted(by_source.items())),
                "sample_ids": sample, "selector": selector.describe()}
        if not selected:
            log.warning(f"{dataset} v{base}: no row matches {selector.describe()}; nothing forgotten")
            return plan
        share = selected / max(before.rows_out, 1)
        if share > max_fraction:
            raise ForgetError(f"{selector.describe()} selects {selected:,} of {before.rows_out:,} rows of {dataset} "
                              f"v{base} ({share:.1%}), above --max-fraction {max_fraction:g}: nothing was "
                              "forgotten. Check the selector (`--dry-run` shows what it selects), or raise "
                              "--max-fraction if you mean it")
        if dry_run or (confirm is not None and not confirm(plan)):
            return {**plan, "dry_run": dry_run, "declined": not dry_run}
        ctx = RunContext(storage, tomb_id, config)
        version = claim_version(storage, dataset, tomb_id)
        outputs: list[DataObject] = []
        new_index: list[DataObject] = []
        forgotten: list[pl.DataFrame] = []
        rewritten: dict[int, tuple[int, pl.DataFrame]] = {}  # position in outputs -> (new part number, rows)
        kept_from: list[int] = []  # position in outputs -> the part of `before` it is (or was cut from)
        for i, obj in enumerate(before.outputs):
            if i not in hits:
                kept_from.append(i)
                outputs.append(obj)
                if index:
                    new_index.append(index[i])
                continue
            frame, hit = storage.read_parquet(obj.path), hits[i]
            gone, kept = frame.filter(hit), frame.filter(~hit)
            old_index = storage.read_parquet(index[i].path) if index else index_rows(frame, config.dedup, base)
            if kept.height:  # a file left empty is dropped from the version, not rewritten
                k = len([o for o in outputs if o.path.startswith(layout.version_dir(dataset, version) + "/")])
                kept_from.append(i)
                outputs.append(storage.write_parquet(layout.version_part(dataset, version, k), kept))
                new_index.append(storage.write_parquet(layout.index_part(dataset, version, k),
                                                       old_index.filter(~hit)))
                rewritten[len(outputs) - 1] = (k, kept)
            forgotten.append(old_index.filter(hit).with_columns(content_sha256=gone["content_sha256"],
                                                                tombstone=pl.lit(tomb_id)))
        rows_forgotten = sum(f.height for f in forgotten)
        blocked = storage.write_parquet(layout.tombstone(dataset, stamp, ".parquet"), pl.concat(forgotten))
        record = {"tombstone": tomb_id, "dataset": dataset, "from_version": base, "version": version,
                  "requested_by": by or getpass.getuser(), "at": datetime.now(UTC).isoformat(),
                  "reason": reason, "selector": selector.describe(), "rows": rows_forgotten,
                  "rows_by_source": dict(sorted(by_source.items())), "index": blocked.as_json()}
        storage.write_json(layout.tombstone(dataset, stamp), record)
        published = dict(before.published or {})
        published.update(
            dataset=dataset, version=version, published_at=datetime.now(UTC).isoformat(), mode="forget",
            base_version=base, rows_added=0, rows_forgotten=rows_forgotten,
            tombstone={k: record[k] for k in ("tombstone", "requested_by", "reason", "selector", "at")},
            rows_by_source={s: n - by_source.get(s, 0) for s, n in published.get("rows_by_source", {}).items()
                            if n - by_source.get(s, 0) > 0},
            index={**(published.get("index") or {}), "parts": [o.as_json() for o in new_index]})
        published.pop("run", None)
        recorded = published.pop("tokens", None)
        tokens = _forget_tokens(ctx, recorded, rewritten, kept_from, len(outputs), dataset, version,
                                part_for_part=bool(recorded) and len(recorded["parts"]) == len(before.outputs))
        if tokens:
            published["tokens"] = tokens
        rows_out = sum(o.rows for o in outputs)
        committed = before.model_copy(update={
            "stage": "forget", "run_id": tomb_id, "rows_in": before.rows_out, "rows_out": rows_out,
            "rows_rejected": rows_forgotten, "rows_synthetic": 0, "rejected_by_reason": {"forget": rows_forgotten},
            "outputs": outputs, "published": published, "seconds": 0.0, "warnings": [], "rates": []})
        try:
            commit_version(storage, committed, base, fence=lease.check)
        except VersionConflict as exc:
            raise ForgetError(f"{exc}; forget again on the newest version") from exc
        diff = announce_version(storage, config, dataset, version, tomb_id, fence=lease.check)
        log.info(f"{dataset}: v{version} = v{base} without {rows_forgotten:,} rows ({selector.describe()})")
        return {**plan, "from_version": base, "version": version, "rows_forgotten": rows_forgotten,
                "rows": rows_out, "tombstone": storage.uri(layout.tombstone(dataset, stamp)), "diff": diff}
    finally:
        lease.release()


def _forget_tokens(ctx: RunContext, recorded: dict | None, rewritten: dict[int, tuple[int, pl.DataFrame]],
                   kept_from: list[int], parts: int, dataset: str, version: int, part_for_part: bool
                   ) -> dict | None:
    """The new version's token shards: a part forget did not touch keeps its shard, a part it cut is tokenized
    again from the rows it kept. When this config cannot make shards like the recorded ones (tokens off, another
    tokenizer, packing or seed), or the recorded shards are not one per data part (an append's new rows only), the
    version has none rather than shards that still hold forgotten rows."""
    from tasks.stages.publish import (
        merged_counts,
        same_tokens_settings,
        token_part_entry,
        tokens_by_source,
        tokens_summary,
        write_token_part,
    )

    if not recorded:
        return None
    if not part_for_part or not same_tokens_settings(ctx, recorded):
        log.warning(f"{dataset} v{version}: the token shards of the version before were made with settings this "
                    "config does not have (publish.tokens); this version has no token shards, so none holds a "
                    "forgotten row. Publish again with publish.tokens to make them")
        return None
    entries, by_source = [], {}
    for position in range(parts):
        if position in rewritten:
            k, kept = rewritten[position]
            write_token_part(ctx, {"dataset": dataset, "version": version}, k, kept)
            entry, sources = token_part_entry(ctx, layout.token_part(dataset, version, k))
        else:
            entry = recorded["parts"][kept_from[position]]
            sources = tokens_by_source(ctx.storage.read_parquet(entry["docs_parquet"]["path"],
                                                                columns=["source", "tokens"]))
        entries.append(entry)
        by_source = merged_counts(by_source, sources)
    return tokens_summary(ctx, entries, by_source)


def lift(storage: Storage, dataset: str, tombstone: str, reason: str, by: str | None = None) -> dict:
    """Lift a takedown: later runs no longer reject its content as `dedup.forgotten`. The tombstone stays; a
    `<stamp>.lifted.json` beside it records who lifted it, when and why. Versions are not changed: the rows come
    back when their source is curated again (or read them from the version before the takedown)."""
    if not reason.strip():
        raise ForgetError("--reason must say why the takedown is lifted (it is kept beside the tombstone)")
    stamp = tombstone.rsplit("/", 1)[-1].removeprefix("forget-").removesuffix(".json")
    if not re.fullmatch(r"\d{8}T\d{6,12}Z", stamp):
        raise ForgetError(f"{tombstone!r} is not a tombstone id (forget-YYYYMMDDTHHMMSS…Z, as `sluice diff` and "
                          "the forget output print it)")
    rel = layout.tombstone(dataset, stamp)
    record = storage.read_json_if_exists(rel)
    if record is None:
        known = ", ".join(t["tombstone"] for t in tombstones(storage, dataset)) or "none"
        raise ForgetError(f"dataset {dataset} has no tombstone {tombstone!r} (its tombstones: {known})")
    lifted_rel = layout.tombstone(dataset, stamp, ".lifted.json")
    note = {"tombstone": record["tombstone"], "lifted_by": by or getpass.getuser(),
            "at": datetime.now(UTC).isoformat(), "reason": reason}
    if not storage.create_exclusive(lifted_rel, render_json(note)):
        raise ForgetError(f"takedown {record['tombstone']} was already lifted "
                          f"({storage.read_json(lifted_rel).get('at')})")
    return {**record, "lifted": note}


def render_json(obj: dict) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
