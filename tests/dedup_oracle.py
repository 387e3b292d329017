"""The single-process dedup that Sluice ran before issue 25 (every shard's features in one frame, one decide), kept
as the test oracle: the partitioned steps (tasks/stages/dedup/steps.py) must remove the same rows with the same
survivors."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.runtime.stage import ROW
from tasks.stages.dedup.within_run import SMALL_BUCKET, minhash, normalized, shingles


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


