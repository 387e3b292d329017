"""Near-duplicate rows with different labels (a cheap poison and label-noise signal together): MinHash LSH band
buckets of the labeled rows (dedup's signatures over word n-grams of the text without punctuation), pairs of rows
of different labels sharing a bucket, then the exact Jaccard of the pairs' n-gram sets and groups of the pairs that
pass. Only the pairs with different labels travel past the buckets, so what the combine holds grows with the
conflicts, not with the corpus."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import AuditParams
from tasks.runtime.plan import PART, SHARD
from tasks.runtime.stage import ROW
from tasks.stages.dedup.within_run import normalized, shingles, signatures

BANDS, ROWS = 20, 5  # dedup's banding: a pair at Jaccard 0.8 shares a bucket with probability 99.96%
EXAMPLES = 5


def buckets(classed: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """(id, label, bucket) for every band of every labeled row; the band is hashed into the bucket."""
    rows = classed.select("id", "label", text=normalized(pl.col("field"))).with_row_index(ROW)
    sig = signatures(rows, params.conflict_ngram, BANDS * ROWS)
    keys = [pl.DataFrame({f"c{j}": sig[:, band * ROWS + j] for j in range(ROWS)}).select(
        bucket=pl.struct(pl.all()).hash(seed=band))["bucket"] for band in range(BANDS)]
    return pl.concat([rows.select("id", "label", bucket=key) for key in keys])


def pairs(rows: pl.DataFrame, inputs, params: AuditParams) -> dict:
    """Per partition of buckets: in a bucket holding more than one label, each row paired with the first row (by
    id) of each other label there: members x labels pairs, not members squared, in a bucket of a repeated text."""
    mixed = rows.group_by("bucket").agg(pl.col("label").n_unique().alias("labels")).filter(pl.col("labels") > 1)
    if not mixed.height:
        return {}
    members = rows.join(mixed.select("bucket"), on="bucket")
    heads = members.group_by("bucket", "label").agg(head=pl.col("id").min()).rename({"label": "head_label"})
    found = members.join(heads, on="bucket").filter(pl.col("label") != pl.col("head_label")).select(
        a=pl.min_horizontal("id", "head"), b=pl.max_horizontal("id", "head")).unique()
    return {"near_pairs": found.with_columns(pl.lit(0, pl.Int32).alias(PART))}


def shingle_sets(classed: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """(id, label, sh): the word n-gram hashes of the rows in a candidate pair, for the exact Jaccard."""
    if not classed.height:
        return pl.DataFrame(schema={"id": pl.String, "label": pl.String, "sh": pl.UInt64})
    rows = classed.select("id", "label", text=normalized(pl.col("field"))).with_row_index(ROW)
    sets = shingles(rows, params.conflict_ngram).unique()
    return sets.join(rows.select(ROW, "id", "label"), on=ROW).select("id", "label", "sh")


def conflicts(candidates: pl.DataFrame, sets: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """(id, SHARD, key, evidence) for each group of rows joined by pairs at Jaccard >= conflict_jaccard, keyed by
    the group's first id; evidence: the labels with their counts, the rows, the lowest Jaccard of a pair, examples."""
    ids = sets.select("id", "label", SHARD).unique("id")
    sizes = sets.group_by("id").agg(n=pl.col("sh").n_unique())
    unique_sets = sets.select("id", "sh").unique()
    shared = (candidates.join(unique_sets.rename({"id": "a"}), on="a")
              .join(unique_sets.rename({"id": "b"}), on=["b", "sh"]).group_by("a", "b").len("both"))
    scored = (shared.join(sizes.rename({"id": "a", "n": "na"}), on="a").join(sizes.rename({"id": "b", "n": "nb"}),
                                                                             on="b")
              .with_columns(jaccard=pl.col("both") / (pl.col("na") + pl.col("nb") - pl.col("both")))
              .filter(pl.col("jaccard") >= params.conflict_jaccard))
    if not scored.height:
        return pl.DataFrame(schema={"id": pl.String, SHARD: pl.String, "key": pl.String, "evidence": pl.String})
    members = _groups(scored.select("a", "b")).join(ids, on="id")
    low = pl.concat([scored.select(id="a", jaccard="jaccard"), scored.select(id="b", jaccard="jaccard")]).join(
        members.select("id", "key"), on="id").group_by("key").agg(min_jaccard=pl.col("jaccard").min())
    per = members.group_by("key").agg(labels=pl.col("label").value_counts(sort=True), rows=pl.len(),
                                      examples=pl.col("id").sort().head(EXAMPLES)).join(low, on="key")
    evidence = per.select("key", evidence=pl.struct(
        of=pl.lit("label"), labels=pl.col("labels").list.head(EXAMPLES), rows="rows",
        min_jaccard=pl.col("min_jaccard").round(3), examples="examples").struct.json_encode())
    return members.join(evidence, on="key").select("id", SHARD, "key", "evidence")


def _groups(edges: pl.DataFrame) -> pl.DataFrame:
    """(id, key): each id of the pairs with its group's first id (connected components of the few pairs that
    conflict)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    names = pl.concat([edges["a"], edges["b"]]).unique().sort()
    index = pl.DataFrame({"id": names, "i": np.arange(len(names))})
    a = edges.join(index.rename({"id": "a"}), on="a", maintain_order="left")["i"].to_numpy()
    b = edges.join(index.rename({"id": "b"}), on="b", maintain_order="left")["i"].to_numpy()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    frame = pl.DataFrame({"id": names, "component": component})
    return frame.with_columns(key=pl.col("id").min().over("component")).select("id", "key")
