"""Dedup within a run: exact (normalized text hash), repeated paragraphs across documents, MinHash LSH near-duplicates.

A global stage (tasks/stage.py GlobalSteps):
  features  per shard: normalized-text hash, paragraph hashes, a 112-value MinHash signature (word 5-gram
            shingles, 64-bit hashing, vectorized numpy) — no text leaves the shard;
  decide    once: exact clusters, paragraph document frequencies, LSH bands (14 x 8) grouped with polars,
            union-find by vectorized label propagation, one deterministic survivor per cluster (earliest
            timestamp, then id), optional exact Jaccard verification of candidate pairs;
  apply     per shard: drop duplicates (reason dedup.exact / dedup.near, evidence: cluster and survivor ids)
            and cut repeated paragraphs out of the documents that repeat them.
Memory in `decide` is bounded by signatures (112 x 8 bytes a document), not text.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.io.manifests import Stats
from tasks.runtime.stage import ROW, StageResult
from tasks.text import tokens
from tasks.text.normalize import normalize

MERSENNE_SEED = 0x5EED_D00D


def normalized(text: pl.Expr) -> pl.Expr:
    """What 'the same text' means for exact dedup: punctuation dropped (tasks/text/normalize.py)."""
    return normalize(text, punctuation="drop")


def _permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(MERSENNE_SEED)
    a = rng.integers(1, np.iinfo(np.uint64).max, size=n, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64)
    return a, b


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


def minhash(sh: pl.DataFrame, rows: int, num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint64 signatures: min over shingles of (a*x + b) mod 2^64, per permutation."""
    a, b = _permutations(num_perm)
    ids = sh[ROW].to_numpy()
    x = sh["sh"].to_numpy().astype(np.uint64)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sig = np.full((rows, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    if x.size == 0:  # an empty shard (e.g. every row of a file quarantined upstream)
        return sig
    with np.errstate(over="ignore"):
        for i in range(num_perm):
            sig[ids[starts], i] = np.minimum.reduceat(x * a[i] + b[i], starts)
    return sig


def features(batch: pl.DataFrame, params: DedupConfig) -> pl.DataFrame:
    df = batch.select("id", "text", "timestamp").with_row_index(ROW)
    out = df.select(
        "id", "timestamp",
        norm_hash=normalized(pl.col("text")).hash(seed=17),
        para=pl.col("text").str.split("\n\n").list.eval(
            pl.element().str.strip_chars().filter(pl.element().str.len_chars() >= params.min_paragraph_chars)
            .hash(seed=19)).list.unique(),
    )
    if params.near.enabled:
        sh = shingles(df, params.near.ngram)
        sig = minhash(sh, df.height, params.near.bands * params.near.rows)
        out = out.with_columns(pl.Series("sig", sig))
        if params.near.verify_jaccard:
            sets = sh.group_by(ROW, maintain_order=True).agg(pl.col("sh").unique())
            out = out.with_columns(shingles=df.select(ROW).join(sets, on=ROW, how="left", maintain_order="left")["sh"])
    return out


def _components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Union-find by label propagation: every node ends labelled with the smallest index in its component."""
    labels = np.arange(n)
    if left.size == 0:
        return labels
    while True:
        low = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, left, low)
        np.minimum.at(labels, right, low)
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            return labels


def _survivor_order(df: pl.DataFrame) -> pl.DataFrame:
    """Rank rows by (timestamp, id) — nulls last — so 'the survivor' is the same whatever the shard order."""
    return df.sort(["timestamp", "id"], nulls_last=True).with_row_index("rank")


def decide(feats: pl.DataFrame, params: DedupConfig) -> pl.DataFrame:
    df = _survivor_order(feats)
    n = df.height
    decisions = df.select("rank", "id").with_columns(
        action=pl.lit("keep"), cluster=pl.lit(None, pl.String), survivor=pl.lit(None, pl.String),
        similarity=pl.lit(None, pl.Float64))
    action = np.array(["keep"] * n, dtype=object)
    survivor = np.full(n, -1)
    similarity = np.full(n, np.nan)
    ids = df["id"].to_numpy()
    if params.exact:
        first = df.group_by("norm_hash").agg(pl.col("rank").min().alias("first"))
        joined = df.select("rank", "norm_hash").join(first, on="norm_hash")
        r, f = joined["rank"].to_numpy(), joined["first"].to_numpy()
        dup = r != f
        action[r[dup]], survivor[r[dup]], similarity[r[dup]] = "exact", f[dup], 1.0
    alive = action == "keep"
    if params.near.enabled:
        sig = np.asarray(df["sig"].to_numpy(), dtype=np.uint64).reshape(n, params.near.bands * params.near.rows)
        live = np.flatnonzero(alive)
        bands = []
        for band in range(params.near.bands):
            cols = sig[live, band * params.near.rows:(band + 1) * params.near.rows]
            key = pl.DataFrame({"rank": live, **{f"c{j}": cols[:, j] for j in range(cols.shape[1])}}).select(
                "rank", bucket=pl.struct(pl.exclude("rank")).hash(seed=band))
            bands.append(key.with_columns(band=pl.lit(band, pl.Int32)))
        pairs = _candidate_pairs(pl.concat(bands), params.near.verify_jaccard)
        if params.near.verify_jaccard and pairs.height:
            pairs = _verified(pairs, df, params.near.threshold)
        labels = _components(n, pairs["rank"].to_numpy(), pairs["head"].to_numpy())
        near = alive & (labels != np.arange(n))
        action[near], survivor[near] = "near", labels[near]
        if pairs.height:
            est = _estimated_similarity(sig, np.flatnonzero(near), labels[near])
            similarity[near] = est
    decisions = decisions.with_columns(
        action=pl.Series(action, dtype=pl.String),
        survivor=pl.when(pl.Series(survivor >= 0)).then(pl.Series(ids[np.maximum(survivor, 0)], dtype=pl.String)),
        similarity=pl.Series(similarity),
    ).with_columns(cluster=pl.when(pl.col("action") != "keep").then(pl.col("survivor")))
    if params.spans.enabled:
        decisions = decisions.join(_repeated_paragraphs(df, action == "keep", params), on="rank", how="left",
                                   maintain_order="left")
    else:
        decisions = decisions.with_columns(drop_paragraphs=pl.lit(None, pl.List(pl.UInt64)))
    return decisions.drop("rank").with_columns(pl.col("drop_paragraphs").fill_null([]))


def _estimated_similarity(sig: np.ndarray, rows: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """MinHash estimate of Jaccard(row, its cluster's survivor): the share of equal signature values."""
    return (sig[rows] == sig[heads]).mean(axis=1)


SMALL_BUCKET = 8  # with verification, a bucket this small yields all its pairs, not only (member, smallest)


def _candidate_pairs(buckets: pl.DataFrame, verify: bool) -> pl.DataFrame:
    """(rank, head) pairs that share a band bucket. Unverified, each member pairs with the bucket's smallest rank
    (union-find makes the cluster). Verified, a pair that fails its check is not merged, so a true pair must not
    hide behind a stranger that collided with both: small buckets yield every pair inside them."""
    heads = buckets.group_by("band", "bucket").agg(pl.col("rank").min().alias("head"), pl.len().alias("size"))
    shared = buckets.join(heads.filter(pl.col("size") > 1), on=["band", "bucket"])
    to_head = shared.filter(pl.col("rank") != pl.col("head")).select("rank", "head")
    if not verify:
        return to_head.unique()
    small = shared.filter(pl.col("size") <= SMALL_BUCKET).select("band", "bucket", "rank")
    within = (small.join(small.rename({"rank": "head"}), on=["band", "bucket"])
              .filter(pl.col("rank") > pl.col("head")).select("rank", "head"))
    return pl.concat([to_head, within]).unique()


def _verified(pairs: pl.DataFrame, df: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Exact Jaccard of each candidate pair's shingle sets; pairs under the threshold are not merged. Only the
    documents of candidate pairs are expanded into their shingles."""
    involved = pl.concat([pairs["rank"], pairs["head"]]).unique().implode()
    df = df.filter(pl.col("rank").is_in(involved))
    sets = df.select("rank", "shingles").explode("shingles")
    a = pairs.join(sets, on="rank").rename({"shingles": "s"})
    inter = a.join(sets.rename({"rank": "head", "shingles": "s"}), on=["head", "s"]).group_by("rank", "head").len()
    sizes = df.select("rank", n=pl.col("shingles").list.len())
    scored = (pairs.join(inter, on=["rank", "head"], how="left", maintain_order="left").fill_null(0)
              .join(sizes, on="rank").join(sizes.rename({"rank": "head", "n": "m"}), on="head")
              .with_columns(j=pl.col("len") / (pl.col("n") + pl.col("m") - pl.col("len"))))
    return scored.filter(pl.col("j") >= threshold).select("rank", "head")


def _repeated_paragraphs(df: pl.DataFrame, alive: np.ndarray, params: DedupConfig) -> pl.DataFrame:
    """Paragraphs found in more than `max_docs` surviving documents are boilerplate: every document but the
    first (by survivor order) loses them."""
    paras = (df.select("rank", "para").filter(pl.Series(alive)).explode("para").drop_nulls("para")
             .unique(["rank", "para"]))
    freq = paras.group_by("para").agg(pl.len().alias("docs"), pl.col("rank").min().alias("first"))
    boiler = freq.filter(pl.col("docs") > params.spans.max_docs)
    cut = (paras.join(boiler, on="para").filter(pl.col("rank") != pl.col("first"))
           .group_by("rank").agg(pl.col("para").alias("drop_paragraphs")))
    return cut


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
    d = d.with_columns(norm=normalized(pl.col("text")))
    drop = d.filter(pl.col("action").is_in(DROPPED))
    keep = d.filter(~pl.col("action").is_in(DROPPED) | pl.col("action").is_null())
    removed = pl.lit(0, pl.Int32)
    if params.spans.enabled and keep.height:
        keep = _cut_paragraphs(keep, params)
        removed = pl.col("dup_paragraphs_removed")
    keep = keep.with_columns(
        # the identity exact dedup judged (before any paragraph cut): unique among survivors by construction
        dup_norm_hash=pl.col("norm").hash(seed=17),
        dup_cluster=pl.col("cluster"),
        dup_paragraphs_removed=removed.cast(pl.Int32),
    )
    emptied = keep.filter(pl.col("text").str.strip_chars().str.len_chars() == 0)
    keep = keep.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
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
    ], how="diagonal_relaxed").select(*out_cols, "reason", "evidence")
    removed_paragraphs = (int(keep["dup_paragraphs_removed"].sum() or 0)
                          + int(emptied["dup_paragraphs_removed"].sum() or 0))
    return StageResult(kept=keep.select(out_cols), rejected=rejected,
                       stats=Stats(counts={"dedup.paragraphs_removed": removed_paragraphs}))


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


def dedup_one_shard(batch: pl.DataFrame, params: DedupConfig) -> StageResult:
    """The whole stage on one frame (map, reduce and apply in one go): what `stage.fn(df)` means for dedup."""
    return apply(batch, decide(features(batch, params), params), params)
