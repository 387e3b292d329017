"""Dedup's per-row primitives and its final apply: what "the same text" means (normalization), word n-gram
shingles, MinHash signatures (64-bit universal hashing; the kernels, numpy and torch, in minhash_kernels.py), and
`apply`, which drops the rows the partitioned steps (steps.py) decided against and cuts repeated paragraphs,
recording evidence for each.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.runtime import edits
from tasks.runtime.stage import ROW, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.dedup import minhash_kernels
from tasks.text import tokens
from tasks.text.normalize import normalize


def normalized(text: pl.Expr) -> pl.Expr:
    """What 'the same text' means for exact dedup: punctuation dropped (tasks/text/normalize.py)."""
    return normalize(text, punctuation="drop")


def shingles(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """(row, shingle hash) for every word n-gram; documents shorter than n words get one whole-text shingle."""
    words = (df.select(ROW, w=tokens.words(pl.col("text").str.to_lowercase()))
             .explode("w").drop_nulls("w")
             .with_columns(h=pl.col("w").hash(seed=11), pos=pl.int_range(pl.len()).over(ROW),
                           n_words=pl.len().over(ROW)))
    g = pl.col("h")
    for k in range(1, n):
        g = pl.struct(g.alias("a"), pl.col("h").shift(-k).alias("b")).hash(seed=k)
    # hash every window first, then keep those inside their document (filtering first would let a window near a
    # document's end borrow the next document's words)
    full = words.with_columns(sh=g).filter(pl.col("pos") + (n - 1) < pl.col("n_words")).select(ROW, "sh")
    short = df.join(full.select(ROW).unique(), on=ROW, how="anti").select(
        ROW, sh=normalized(pl.col("text")).hash(seed=13))
    return pl.concat([full.select(ROW, "sh"), short]).sort(ROW, maintain_order=True)


def signatures(df: pl.DataFrame, ngram: int, num_perm: int, chunk: int = 8_192, device: str = "cpu"
               ) -> np.ndarray:
    """(rows, num_perm) MinHash signatures of `df` (columns ROW = 0..n-1, text), shingled `chunk` documents at a
    time: the exploded words of a 50,000-row shard would otherwise take ~1 GB at once. `device`: cpu (numpy),
    cuda (torch, the same bits), or auto (cuda where torch sees one)."""
    sig = np.empty((df.height, num_perm), dtype=np.uint64)
    dev = _torch_device(device)
    for start in range(0, df.height, chunk):
        part = df.slice(start, chunk).with_columns(pl.col(ROW) - start)
        sig[start:start + part.height] = minhash(shingles(part, ngram), part.height, num_perm, dev)
    return sig


def _torch_device(choice: str):
    """None for the numpy path; a torch device for cuda, or auto where a CUDA device is visible."""
    if choice == "cpu" or (choice == "auto" and not minhash_kernels.cuda_present()):
        return None
    from tasks.models.loading import device

    return device(choice, "dedup.device")


def minhash(sh: pl.DataFrame, rows: int, num_perm: int, dev=None) -> np.ndarray:
    """(rows, num_perm) uint64 signatures of `shingles`' output: numpy, or torch on `dev` (minhash_kernels.py)."""
    ids, x = sh[ROW].to_numpy(), sh["sh"].to_numpy()
    return minhash_kernels.on_cpu(ids, x, rows, num_perm) if dev is None else \
        minhash_kernels.on_device(ids, x, rows, num_perm, dev)


SMALL_BUCKET = 8  # with verification, a bucket this small yields all its pairs, not only (member, earliest)


ADDS = {"dup_norm_hash": pl.UInt64(), "dup_cluster": pl.String(), "dup_paragraphs_removed": pl.Int32()}
DROPPED = ("exact", "near", "exact.published", "near.published", "forgotten")


def _evidence(drop: pl.DataFrame) -> pl.Expr:
    """Within a run: the cluster and its survivor; against the published index: the version and row matched;
    forgotten content: also the tombstone."""
    matched = pl.col("matched") if "matched" in drop.columns else pl.lit(None, pl.String)
    within = pl.struct(cluster=pl.col("cluster"), survivor_id=pl.col("survivor"), similarity=pl.col("similarity"),
                       matched_id=matched)
    published = pl.struct(version=pl.col("match_version"), published_id=pl.col("survivor"),
                          similarity=pl.col("similarity"))
    forgotten = pl.struct(tombstone=pl.col("tombstone"), version=pl.col("match_version"),
                          forgotten_id=pl.col("survivor"), similarity=pl.col("similarity"))
    if "match_version" not in drop.columns:
        return within.struct.json_encode()
    return (pl.when(pl.col("action") == "forgotten").then(forgotten.struct.json_encode())
            .when(pl.col("action").str.ends_with(".published")).then(published.struct.json_encode())
            .otherwise(within.struct.json_encode()))


def apply(batch: pl.DataFrame, decisions: pl.DataFrame, params: DedupConfig) -> StageResult:
    d = batch.join(decisions, on="id", how="left", maintain_order="left")
    d = d.with_columns(norm=normalized(pl.col("text")), drop_paragraphs=pl.col("drop_paragraphs").fill_null([]),
                       _before=pl.col("text"))
    drop = d.filter(pl.col("action").is_in(DROPPED))
    keep = d.filter(~pl.col("action").is_in(DROPPED) | pl.col("action").is_null())
    if params.spans.enabled and keep.height:
        keep = _cut_paragraphs(keep, params)
    else:
        keep = keep.with_columns(dup_paragraphs_removed=pl.lit(0, pl.Int32))
    keep = keep.with_columns(
        # the identity exact dedup judged (before any paragraph cut): unique among survivors by construction
        dup_norm_hash=pl.col("norm").hash(seed=17),
        dup_cluster=pl.col("cluster"),
        dup_paragraphs_removed=pl.col("dup_paragraphs_removed").cast(pl.Int32),
    )
    # a cut that empties a row, or removes more than its bound, rejects it; the quarantine keeps it as it arrived
    empty_after = pl.col("text").str.strip_chars().str.len_chars() == 0
    over = ~empty_after & edits.over_bound(pl.col("_before"), pl.col("text"), params.spans.max_removed_fraction)
    emptied = keep.filter(empty_after)
    bounded = keep.filter(over).with_columns(
        evidence=edits.bound_evidence(SPANS_RULE, pl.col("_before"), pl.col("text"), params.spans.max_removed_fraction,
                                      pl.col("dup_paragraphs_removed"), "paragraph"))
    keep = keep.filter(~empty_after & ~over)
    ledger = edits.record(keep, SPANS_RULE, "_before", "text", pl.col("dup_paragraphs_removed"), "paragraph")
    out_cols = list(batch.columns) + list(ADDS)
    rejected = pl.concat([
        drop.with_columns(
            reason=pl.concat_str(pl.lit("dedup."), pl.col("action")),
            evidence=_evidence(drop),
            dup_norm_hash=pl.col("norm").hash(seed=17), dup_cluster=pl.col("cluster"),
            dup_paragraphs_removed=pl.lit(0, pl.Int32)),
        emptied.with_columns(reason=pl.lit("dedup.spans.empty"),
                             evidence=pl.struct(paragraphs_removed=pl.col("dup_paragraphs_removed"))
                             .struct.json_encode()),
        bounded.with_columns(reason=pl.lit(edits.bound_reason(SPANS_RULE))),
    ], how="diagonal_relaxed").with_columns(text=pl.col("_before")).select(*out_cols, "reason", "evidence")
    removed_paragraphs = int(keep["dup_paragraphs_removed"].sum() or 0)
    return StageResult(kept=keep.select(out_cols), rejected=rejected,
                       stats=Stats(counts={"dedup.paragraphs_removed": removed_paragraphs}), edits=ledger)


SPANS_RULE = "dedup.spans"


def _cut_paragraphs(keep: pl.DataFrame, params: DedupConfig) -> pl.DataFrame:
    """Remove the decided boilerplate paragraphs (by hash) and rejoin what is left; others stay byte-identical."""
    touched = keep.filter(pl.col("drop_paragraphs").list.len() > 0)
    untouched = keep.filter(pl.col("drop_paragraphs").list.len() == 0).with_columns(
        dup_paragraphs_removed=pl.lit(0, pl.Int32))
    if touched.height == 0:
        return untouched
    parts = (touched.select("id", "drop_paragraphs", para=pl.col("text").str.split("\n\n"))
             .with_row_index("_r").explode("para")
             .with_columns(h=pl.col("para").str.strip_chars().hash(seed=19)))
    parts = parts.with_columns(cut=pl.col("h").is_in(pl.col("drop_paragraphs").first()).over("_r")
                               & (pl.col("para").str.strip_chars().str.len_chars() >= params.min_paragraph_chars))
    rebuilt = parts.group_by("_r", maintain_order=True).agg(
        pl.col("id").first(),
        text=pl.col("para").filter(~pl.col("cut")).str.join("\n\n"),
        dup_paragraphs_removed=pl.col("cut").sum().cast(pl.Int32),
    )
    touched = touched.drop("text").join(rebuilt.drop("_r"), on="id", how="left", maintain_order="left")
    merged = pl.concat([untouched, touched.select(untouched.columns)])
    order = keep.select("id").with_row_index("_o")
    return merged.join(order, on="id").sort("_o").drop("_o")
