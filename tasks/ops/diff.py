"""What changed between two published versions of a dataset: rows, sources, quarantine reasons, score shifts.

A row is identified by `content_sha256` (the hash ingest takes of the text as it arrived), so the same document
curated again by a later run counts as unchanged even though its run-scoped id differs. Only the key and score
columns are read, never the text.
"""

from __future__ import annotations

import polars as pl

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.io.storage import Storage
from tasks.io.versions import VersionNotFound, published_versions, version_manifest  # noqa: F401 (re-exported)

SCORE_PREFIXES = ("q_", "contam_", "dup_", "score_")


def _frame(storage: Storage, manifest: StageManifest, skip: frozenset[str] = frozenset(), scores: bool = True
           ) -> pl.DataFrame:
    frames = []
    for obj in manifest.outputs:
        if obj.path in skip:
            continue
        data = storage.read_bytes(obj.path)
        schema = pl.read_parquet_schema(data)
        cols = ["content_sha256", "source"] + [
            c for c, t in schema.items() if scores and c.startswith(SCORE_PREFIXES) and t.is_numeric()
        ]
        frames.append(pl.read_parquet(data, columns=[c for c in cols if c in schema]))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(
        schema={"content_sha256": pl.String, "source": pl.String})


def _run_reasons(storage: Storage, manifest: StageManifest) -> dict[str, int]:
    """Quarantine counts of the run that produced a version, summed over its stages."""
    run = storage.read_json_if_exists(layout.run_json(manifest.run_id)) or {}
    counts: dict[str, int] = {}
    for stage in run.get("stages", []):
        m = storage.read_record_if_exists(StageManifest, layout.stage_manifest(manifest.run_id, stage))
        for code, n in (m.rejected_by_reason if m else {}).items():
            counts[code] = counts.get(code, 0) + n
    return counts


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, dict[str, int]]:
    return {k: {"a": a.get(k, 0), "b": b.get(k, 0), "change": b.get(k, 0) - a.get(k, 0)}
            for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}


def _scores(df: pl.DataFrame) -> dict[str, dict[str, float | None]]:
    cols = [c for c in df.columns if c.startswith(SCORE_PREFIXES)]
    if not cols or df.height == 0:
        return {}
    stats = df.select(
        [pl.col(c).cast(pl.Float64).mean().alias(f"{c}|mean") for c in cols]
        + [pl.col(c).cast(pl.Float64).quantile(q).alias(f"{c}|p{int(q * 100)}") for c in cols for q in (0.1, 0.5, 0.9)]
    ).row(0, named=True)
    out: dict[str, dict[str, float | None]] = {}
    for key, value in stats.items():
        col, stat = key.split("|")
        out.setdefault(col, {})[stat] = None if value is None else round(value, 6)
    return out


def score_shifts(a: pl.DataFrame, b: pl.DataFrame) -> dict[str, dict]:
    """Mean and deciles of every numeric score column per version, and the shift of the mean."""
    sa, sb = _scores(a), _scores(b)
    shifts = {}
    for col in sorted(set(sa) | set(sb)):
        ma, mb = sa.get(col, {}).get("mean"), sb.get(col, {}).get("mean")
        shifts[col] = {"a": sa.get(col), "b": sb.get(col),
                       "mean_shift": None if ma is None or mb is None else round(mb - ma, 6)}
    return shifts


def _synthetic_by_class(df: pl.DataFrame) -> dict[str, dict]:
    """Synthetic rows (augment's `syn_origin` set) and all rows per class (`label`; "(no label)" for none)."""
    if "syn_origin" not in df.columns or df.height == 0:
        return {}
    label = pl.col("label").cast(pl.String).fill_null("(no label)") if "label" in df.columns \
        else pl.lit("(no label)")
    counts = df.group_by(label.alias("class")).agg(synthetic=pl.col("syn_origin").is_not_null().sum(),
                                                   rows=pl.len()).filter(pl.col("synthetic") > 0)
    return {c: {"synthetic": int(n), "rows": int(r), "share": round(n / r, 6)} for c, n, r in counts.iter_rows()}


def synthetic_shares(a: pl.DataFrame, b: pl.DataFrame) -> dict[str, dict]:
    """Per class holding synthetic rows in either version: its synthetic rows and share in each."""
    sa, sb = _synthetic_by_class(a), _synthetic_by_class(b)
    empty = {"synthetic": 0, "rows": 0, "share": 0.0}
    return {c: {"a": sa.get(c, empty), "b": sb.get(c, empty)} for c in sorted(set(sa) | set(sb))}


def added_removed(a: pl.DataFrame, b: pl.DataFrame) -> tuple[int, int]:
    """Rows added/removed by content hash, with multiplicity (two copies of a row in B and one in A = one added)."""
    ca = a.group_by("content_sha256").agg(pl.len().cast(pl.Int64).alias("a"))
    cb = b.group_by("content_sha256").agg(pl.len().cast(pl.Int64).alias("b"))
    joined = ca.join(cb, on="content_sha256", how="full", coalesce=True).fill_null(0)
    added = int(joined.select((pl.col("b") - pl.col("a")).clip(lower_bound=0).sum()).item() or 0)
    removed = int(joined.select((pl.col("a") - pl.col("b")).clip(lower_bound=0).sum()).item() or 0)
    return added, removed


def changed_fraction(added: int, removed: int, rows_a: int, rows_b: int) -> float:
    """Changed rows against the previous version's size (what a model was trained on): a 10,000-row increment
    to 1,000,000 rows is 1%. Against nothing (a first or an emptied version), everything changed."""
    return round((added + removed) / rows_a, 6) if rows_a else (1.0 if added or removed or rows_b else 0.0)


def diff_frames(a: pl.DataFrame, b: pl.DataFrame) -> dict:
    """Rows added/removed by content hash (with multiplicity), sources, score shifts, synthetic shares."""
    added, removed = added_removed(a, b)

    def by_source(df: pl.DataFrame) -> dict[str, int]:
        return dict(df.group_by("source").agg(pl.len()).sort("source").iter_rows()) if df.height else {}

    return {"rows_a": a.height, "rows_b": b.height, "rows_added": added, "rows_removed": removed,
            "rows_unchanged": b.height - added,
            "changed_fraction": changed_fraction(added, removed, a.height, b.height),
            "by_source": _delta(by_source(a), by_source(b)), "scores": score_shifts(a, b),
            "synthetic": synthetic_shares(a, b)}


def version_diff(storage: Storage, dataset: str, version_a: int, version_b: int) -> dict:
    ma, mb = version_manifest(storage, dataset, version_a), version_manifest(storage, dataset, version_b)
    result = diff_frames(_frame(storage, ma), _frame(storage, mb))
    return {"dataset": dataset, "a": version_a, "b": version_b, **result, **_forgotten(mb),
            "by_reason": _delta(_run_reasons(storage, ma), _run_reasons(storage, mb))}


def _forgotten(manifest: StageManifest) -> dict:
    """What `sluice forget` removed to make this version (none for a curated version)."""
    published = manifest.published or {}
    return {"rows_forgotten": published.get("rows_forgotten", 0),
            **({"tombstone": published["tombstone"]} if published.get("tombstone") else {})}


def count_diff(storage: Storage, ma: StageManifest, mb: StageManifest) -> dict:
    """Rows added/removed between two versions, reading only the data files they do not share: an append
    version's diff costs its increment, not the dataset."""
    shared = frozenset(o.path for o in ma.outputs) & frozenset(o.path for o in mb.outputs)
    a = _frame(storage, ma, shared, scores=False)
    b = _frame(storage, mb, shared, scores=False)
    added, removed = added_removed(a, b)
    return {"rows_a": ma.rows_out, "rows_b": mb.rows_out, "rows_added": added, "rows_removed": removed,
            "rows_unchanged": mb.rows_out - added,
            "changed_fraction": changed_fraction(added, removed, ma.rows_out, mb.rows_out)}


def diff_vs_previous(storage: Storage, dataset: str, version: int) -> dict:
    """Diff of a just-published version against the newest earlier one; the first version changes everything."""
    earlier = [v for v in published_versions(storage, dataset) if v < version]
    mb = version_manifest(storage, dataset, version)
    if not earlier:
        rows = mb.rows_out
        return {"dataset": dataset, "a": None, "b": version, "rows_a": 0, "rows_b": rows,
                "rows_added": rows, "rows_removed": 0, "rows_unchanged": 0, "changed_fraction": 1.0,
                **_forgotten(mb)}
    ma = version_manifest(storage, dataset, earlier[-1])
    return {"dataset": dataset, "a": earlier[-1], "b": version, **count_diff(storage, ma, mb), **_forgotten(mb)}
