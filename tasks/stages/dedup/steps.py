"""Dedup as partitioned steps (tasks/runtime/plan.py): no step holds the corpus, each holds one shard or one
partition of a shuffle (datatrove's four MinHash steps, NeMo Curator's LSH -> shuffle -> Jaccard -> connected
components). Survivors are the earliest (timestamp, then id) everywhere, so the decisions are those of one pass
over the whole corpus (tests/test_dedup.py compares them).

  exact-keys     map     normalized-text hash of every row          -> shuffle `hashes` by the hash
  exact          reduce  per hash: all but the earliest row go        -> route `exact` (row, survivor)
  bands          map     MinHash of the rows exact dedup left, LSH    -> shuffle `buckets` by band bucket
  candidates     reduce  per bucket: each member with the earliest;   -> shuffle `pairs` by pair, route `needs`
                         small buckets: every pair (verified, so a true pair never hides behind a stranger)
  shingles       map     the shingle sets of the rows pairs need      -> shuffle `shingles` into the pairs' partitions
  verify         reduce  exact Jaccard of each pair >= threshold      -> shuffle `edges`
  components     combine union-find over the edges, streamed one     -> route `near` (row, survivor, the edge that
                         partition at a time (memory: the rows that     merged it and its Jaccard)
                         have a duplicate, never the corpus)
  paragraph-keys map     paragraph hashes of the surviving rows      -> shuffle `paragraph-hashes` by hash
  boilerplate    reduce  a paragraph in more than `max_docs` rows is  -> route `cuts` (row, paragraph)
                         cut from all but the earliest
  against        map     (a run with published or forgotten content) survivors against the index, part by part
                                                                      -> route `against`
  apply                  the shard's rows and what was routed to them -> kept, rejected with evidence
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from schemas.errors import BadInput
from tasks.runtime.plan import PART, SHARD, CombineStep, MapStep, Plan, ReduceStep, Shuffle, StepInputs, partition
from tasks.runtime.stage import ROW
from tasks.stages.dedup.published import best_matches, index_format, short_signature
from tasks.stages.dedup.within_run import SMALL_BUCKET, normalized, shingles, signatures

NEVER = np.iinfo(np.int64).max  # a row without a timestamp comes after every row with one
# per input row, what verify holds: the shingle sets of the rows in candidate pairs (1.2 KB each in memory), whose
# share grows with the corpus (candidate pairs grow with the square of rows sharing text: 6% of rows at 1M
# documents of bench/scale.py, 10% at 10M); pairs and shingles share partition numbers (shingle rows carry their
# pair partition)
VERIFY_BYTES = 1024
# a (key, id, timestamp, shard) row as the exact and boilerplate reduces hold it while grouping: the row is ~90
# bytes in polars, but at 10M documents (4 partitions of 2.5M rows, two reduced at once) they took the process
# from 1.34 to 1.74 GiB (exact) and 1.74 to 2.09 GiB (boilerplate), ~3x the row; sized at 300 bytes a row
KEY_BYTES = 300
VERIFY_CHUNK = 20_000  # candidate pairs verified together (each with copies of its two shingle sets)


def _order(frame: pl.DataFrame) -> pl.Expr:
    """The survivor order's timestamp key (microseconds; nulls last)."""
    return pl.col("timestamp").dt.epoch("us").fill_null(NEVER).alias("ts")


def _alive(batch: pl.DataFrame, inputs: StepInputs, *routes: str) -> pl.DataFrame:
    gone = pl.concat([inputs.route(r, {"id": pl.String}).select("id") for r in routes])
    return batch.join(gone, on="id", how="anti") if gone.height else batch


# ----------------------------------------------------------------------------------------------------- exact

def exact_keys(batch: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    keys = batch.select("id", _order(batch), norm_hash=normalized(pl.col("text")).hash(seed=17))
    return {"hashes": keys.with_columns(partition(pl.col("norm_hash"), inputs.count("hashes")))}


def exact(rows: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    first = rows.sort("ts", "id").group_by("norm_hash", maintain_order=True).agg(
        survivor=pl.col("id").first())
    dead = rows.join(first, on="norm_hash").filter(pl.col("id") != pl.col("survivor"))
    return {"exact": dead.select("id", "survivor", SHARD)}


# ------------------------------------------------------------------------------------------------------ near

def _bucket_keys(sig: np.ndarray, params: DedupConfig) -> list[pl.Series]:
    """One key per band: a hash of the band's `rows` signature values (equal values, equal key)."""
    near = params.near
    out = []
    for band in range(near.bands):
        cols = sig[:, band * near.rows:(band + 1) * near.rows]
        frame = pl.DataFrame({f"c{j}": cols[:, j] for j in range(cols.shape[1])})
        out.append(frame.select(bucket=pl.struct(pl.all()).hash(seed=band))["bucket"])
    return out


def bands(batch: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    alive = _alive(batch.select("id", "text", "timestamp"), inputs, "exact").with_row_index(ROW)
    if alive.height == 0:
        return {}
    perms = params.near.bands * params.near.rows
    sig = signatures(alive, params.near.ngram, perms, device=params.device)
    base = alive.select("id", _order(alive))
    frames = [base.with_columns(band=pl.lit(b, pl.Int16), bucket=key)
              for b, key in enumerate(_bucket_keys(sig, params))]
    rows = pl.concat(frames)
    return {"buckets": rows.with_columns(partition(pl.struct("band", "bucket"), inputs.count("buckets")))}


def candidates(rows: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    """Pairs sharing a band bucket: each member with the bucket's earliest row; with verification, buckets of up to
    SMALL_BUCKET members also yield all their pairs. `a` is the later row of a pair, `b` the earlier. Only the rows
    of buckets with two or more members are ranked (memory: the partition once, then the few that collide)."""
    sizes = rows.select("band", "bucket").group_by("band", "bucket").len().filter(pl.col("len") > 1)
    shared = rows.join(sizes, on=["band", "bucket"], how="inner").rename({"len": "size"})
    order = shared.select("id", "ts").unique("id").sort("ts", "id").with_columns(
        r=pl.int_range(pl.len(), dtype=pl.Int64))
    ranked = shared.join(order.select("id", "r"), on="id")
    heads = ranked.group_by("band", "bucket").agg(head=pl.col("r").min())
    ranked = ranked.join(heads, on=["band", "bucket"])
    pairs = ranked.filter(pl.col("r") != pl.col("head")).select(a="r", b="head")
    if params.near.verify_jaccard:
        small = ranked.filter(pl.col("size") <= SMALL_BUCKET).select("band", "bucket", "r")
        within = (small.join(small.rename({"r": "h"}), on=["band", "bucket"]).filter(pl.col("r") > pl.col("h"))
                  .select(a="r", b="h"))
        pairs = pl.concat([pairs, within])
    pairs = pairs.unique()
    node = ranked.select("r", "id", "ts", SHARD).unique("r")
    pairs = (pairs.join(node.rename({"r": "a", "id": "a_id", "ts": "a_ts", SHARD: "a_shard"}), on="a")
             .join(node.rename({"r": "b", "id": "b_id", "ts": "b_ts", SHARD: "b_shard"}), on="b")
             .select("a_id", "a_ts", "a_shard", "b_id", "b_ts", "b_shard"))
    if not params.near.verify_jaccard:
        return {"edges": pairs.with_columns(jaccard=pl.lit(None, pl.Float64),
                                            **{PART: partition(pl.col("a_id"), inputs.count("edges"))})}
    pairs = pairs.with_columns(partition(pl.struct("a_id", "b_id"), inputs.count("pairs")))
    needs = pl.concat([pairs.select(id="a_id", _pv=PART, **{SHARD: "a_shard"}),
                       pairs.select(id="b_id", _pv=PART, **{SHARD: "b_shard"})]).unique()
    return {"pairs": pairs, "needs": needs}


def shingle_sets(batch: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    needs = inputs.route("needs", {"id": pl.String, "_pv": pl.Int32})
    if needs.height == 0:
        return {}
    wanted = batch.join(needs.select("id").unique(), on="id", how="semi").select("id", "text").with_row_index(ROW)
    sets = shingles(wanted, params.near.ngram).group_by(ROW, maintain_order=True).agg(sh=pl.col("sh").unique())
    sets = wanted.select(ROW, "id").join(sets, on=ROW).drop(ROW)
    return {"shingles": sets.join(needs, on="id").rename({"_pv": PART})}


def _intersections(pairs: pl.DataFrame, sets: pl.DataFrame) -> pl.DataFrame:
    """How many shingles each pair (ka, kb) shares: both sets joined onto the pair and intersected as lists (the
    sets are already unique). Joining exploded shingles instead held ~150 rows a pair side in two hash joins:
    on 100,000 pairs over 100,000 sets 1.8 s and 1.3 GiB, against 0.4 s and 0.44 GiB this way."""
    lists = sets.select("k", "sh")
    return (pairs.join(lists.rename({"k": "ka", "sh": "sa"}), on="ka")
            .join(lists.rename({"k": "kb", "sh": "sb"}), on="kb")
            .select("ka", "kb", len=pl.col("sa").list.set_intersection("sb").list.len().cast(pl.UInt32)))


def verify(rows: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    """Exact Jaccard of each candidate pair's shingle sets (from the `shingles` rows of this same partition)."""
    sets = inputs.route("shingles")
    if sets.height == 0 or rows.height == 0:
        return {}
    # integers, not ids, in the joins: a row's shingles are ~150 a document, and the ids 32 characters each
    sets = sets.unique("id").with_columns(k=pl.int_range(pl.len(), dtype=pl.Int32))
    key = sets.select("id", "k")
    pairs = (rows.unique(["a_id", "b_id"]).join(key.rename({"id": "a_id", "k": "ka"}), on="a_id")
             .join(key.rename({"id": "b_id", "k": "kb"}), on="b_id"))
    # a chunk of pairs at a time: each pair holds copies of both its sets while it is intersected
    inter = pl.concat([_intersections(chunk, sets) for chunk in pairs.select("ka", "kb").iter_slices(VERIFY_CHUNK)],
                      how="vertical")
    sizes = sets.select("k", n=pl.col("sh").list.len())
    scored = (pairs.join(inter, on=["ka", "kb"], how="left").fill_null(0)
              .join(sizes.rename({"k": "ka", "n": "n_a"}), on="ka")
              .join(sizes.rename({"k": "kb", "n": "n_b"}), on="kb")
              .with_columns(jaccard=pl.col("len") / (pl.col("n_a") + pl.col("n_b") - pl.col("len"))))
    edges = scored.filter(pl.col("jaccard") >= params.near.threshold).select(
        "a_id", "a_ts", "a_shard", "b_id", "b_ts", "b_shard", "jaccard")
    return {"edges": edges.with_columns(partition(pl.col("a_id"), inputs.count("edges")))}


def components(inputs: StepInputs, params: DedupConfig) -> Iterator[dict]:
    """Union-find over the verified edges, read one partition at a time (twice: the rows, then the links): a row's
    survivor is the earliest row of its component, and its evidence the best edge it has. Memory: the rows that have
    a duplicate, never the corpus, and one partition of edges."""
    nodes = None
    for part in inputs.stream("edges"):
        found = pl.concat([part.select(id="a_id", ts="a_ts", **{SHARD: "a_shard"}),
                           part.select(id="b_id", ts="b_ts", **{SHARD: "b_shard"})])
        nodes = (found if nodes is None else pl.concat([nodes, found])).unique("id")
    if nodes is None:
        return
    table = nodes.sort("ts", "id").with_columns(r=pl.int_range(pl.len(), dtype=pl.Int64))
    index = table.select("id", "r")
    parent = np.arange(table.height)
    best = None
    for edges in inputs.stream("edges"):
        e = (edges.join(index.rename({"id": "a_id", "r": "ra"}), on="a_id")
             .join(index.rename({"id": "b_id", "r": "rb"}), on="b_id"))
        _union(parent, e["ra"].to_numpy(), e["rb"].to_numpy())
        found = pl.concat([e.select(r="ra", matched="b_id", jaccard="jaccard"),
                           e.select(r="rb", matched="a_id", jaccard="jaccard")])
        best = (found if best is None else pl.concat([best, found])).sort(
            ["r", "jaccard", "matched"], descending=[False, True, False], nulls_last=True).unique("r", keep="first")
    merged = table.with_columns(root=pl.Series(_roots(parent))).filter(pl.col("r") != pl.col("root"))
    merged = merged.join(table.select(root="r", survivor="id"), on="root").join(best, on="r", how="left")
    yield {"near": merged.select("id", "survivor", "matched", SHARD, similarity="jaccard")}


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Link each edge's roots, the later under the earlier (rank order = survivor order), until nothing moves."""
    while a.size:
        ra, rb = _roots(parent)[a], _roots(parent)[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        moving = lo != hi
        if not moving.any():
            return
        np.minimum.at(parent, hi[moving], lo[moving])
        a, b = a[moving], b[moving]


def _roots(parent: np.ndarray) -> np.ndarray:
    """Every node's root, by pointer jumping (vectorized)."""
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt


# ------------------------------------------------------------------------------------------------ paragraphs

def paragraph_keys(batch: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    alive = _alive(batch.select("id", "text", "timestamp"), inputs, "exact", "near")
    paras = alive.select("id", _order(alive), para=pl.col("text").str.split("\n\n").list.eval(
        pl.element().str.strip_chars().filter(pl.element().str.len_chars() >= params.min_paragraph_chars)
        .hash(seed=19)).list.unique()).explode("para").drop_nulls("para")
    return {"paragraph-hashes": paras.with_columns(partition(pl.col("para"), inputs.count("paragraph-hashes")))}


def boilerplate(rows: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    """A paragraph in more than `max_docs` surviving rows is boilerplate: every row but the earliest loses it."""
    rows = rows.unique(["id", "para"])
    freq = rows.sort("ts", "id").group_by("para", maintain_order=True).agg(first=pl.col("id").first(), docs=pl.len())
    cut = rows.join(freq.filter(pl.col("docs") > params.spans.max_docs), on="para").filter(
        pl.col("id") != pl.col("first"))
    return {"cuts": cut.select("id", "para", SHARD)}


# ------------------------------------------------------------------------------ against published and forgotten

def against(batch: pl.DataFrame, inputs: StepInputs, params: DedupConfig) -> dict:
    """The shard's survivors against forgotten content (every run) and the published version (append runs), the
    index read part by part: `forgotten` outranks a published duplicate."""
    published = inputs.published
    if published is None or published.empty:
        return {}
    _check_format(published, params)
    alive = _alive(batch.select("id", "text"), inputs, "exact", "near").with_row_index(ROW)
    if alive.height == 0:
        return {}
    new = alive.select("id", norm_hash=normalized(pl.col("text")).hash(seed=17))
    if params.near.enabled:
        perms = params.near.bands * params.near.rows
        sig = signatures(alive, params.near.ngram, perms, device=params.device)
        new = new.with_columns(pl.Series("sig16", short_signature(sig), dtype=pl.Array(pl.UInt16, perms)))
    found = []
    blocked = published.read_blocked()
    if blocked is not None:
        matches = best_matches(new, [blocked], params)
        tombs = blocked.select(match_id="id", match_version="version", tombstone="tombstone").unique(
            ["match_id", "match_version"])
        found.append(matches.join(tombs, on=["match_id", "match_version"], how="left")
                     .with_columns(action=pl.lit("forgotten")))
    taken = pl.concat([f.select("i") for f in found]) if found else pl.DataFrame(schema={"i": pl.Int64})
    if published.parts:
        rest = new.with_row_index("i").with_columns(pl.col("i").cast(pl.Int64)).join(taken, on="i", how="anti")
        matches = best_matches(rest.drop("i"), published.read_parts(), params)
        matches = matches.with_columns(i=rest["i"].gather(matches["i"]) if matches.height else pl.col("i"))
        found.append(matches.with_columns(
            action=pl.when(pl.col("exact")).then(pl.lit("exact.published")).otherwise(pl.lit("near.published")),
            tombstone=pl.lit(None, pl.String)))
    if not found:
        return {}
    hits = pl.concat([f.select("i", "action", "match_id", "match_version", "similarity", "tombstone")
                      for f in found], how="diagonal_relaxed")
    ids = new.select("id").with_row_index("i").with_columns(pl.col("i").cast(pl.Int64))
    return {"against": hits.join(ids, on="i").drop("i").with_columns(pl.lit(inputs.unit).alias(SHARD))}


class IndexMismatch(BadInput):
    pass


def _check_format(published, params: DedupConfig) -> None:
    wanted = index_format(params)
    if published.parts and {k: (published.format or {}).get(k) for k in wanted} != wanted:
        raise IndexMismatch(
            f"the dedup index of {published.dataset} v{published.version} was built with {published.format}, this "
            f"run's dedup uses {wanted}: hashes would not be comparable. Publish this run with "
            "`--publish-mode replace` (a full recompute rebuilds the index), or use the dedup settings and polars "
            "version the index was built with.")


# ---------------------------------------------------------------------------------------------------- decisions

DECISIONS = {"id": pl.String, "action": pl.String, "cluster": pl.String, "survivor": pl.String,
             "similarity": pl.Float64, "matched": pl.String, "match_version": pl.Int32, "tombstone": pl.String,
             "drop_paragraphs": pl.List(pl.UInt64)}


def shard_decisions(routed: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per decided id of the shard, in the shape `within_run.apply` takes."""
    frames = []
    ex = routed.get("exact")
    if ex is not None and ex.height:
        frames.append(ex.select("id", "survivor", action=pl.lit("exact"), similarity=pl.lit(1.0)))
    near = routed.get("near")
    if near is not None and near.height:
        frames.append(near.select("id", "survivor", "matched", "similarity", action=pl.lit("near")))
    ag = routed.get("against")
    if ag is not None and ag.height:
        taken = pl.concat([f.select("id") for f in frames]) if frames else pl.DataFrame(schema={"id": pl.String})
        frames.append(ag.join(taken, on="id", how="anti").select(
            "id", "action", "match_version", "similarity", "tombstone", survivor="match_id"))
    decided = (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema={"id": pl.String}))
    cuts = routed.get("cuts")
    if cuts is not None and cuts.height:
        lists = cuts.group_by("id").agg(drop_paragraphs=pl.col("para").sort())
        decided = decided.join(lists, on="id", how="full", coalesce=True)
    out = pl.DataFrame(schema=DECISIONS).vstack(decided.select(
        [(pl.col(c) if c in decided.columns else pl.lit(None)).cast(t).alias(c) for c, t in DECISIONS.items()]))
    return out.with_columns(
        action=pl.col("action").fill_null("keep"),
        cluster=pl.when(pl.col("action").is_not_null()).then(pl.col("survivor")),
        drop_paragraphs=pl.col("drop_paragraphs").fill_null([]))


def active(params: DedupConfig, published) -> set[str]:
    steps = set() if published is None or published.empty else {"against"}
    if params.exact:
        steps |= {"exact-keys", "exact"}
    if params.near.enabled:
        steps |= {"bands", "candidates", "components"}
        if params.near.verify_jaccard:
            steps |= {"shingles", "verify"}
    if params.spans.enabled:
        steps |= {"paragraph-keys", "boilerplate"}
    return steps


def plan(apply) -> Plan:
    # in memory, per input row: a row of (id, timestamp, key, shard) is ~90 bytes in polars, one per band, and the
    # reduce works on a copy of what collides: 200 a band
    near_bytes = 20 * 200
    return Plan(
        steps=(MapStep("exact-keys", exact_keys), ReduceStep("exact", "hashes", exact),
               MapStep("bands", bands, reads=("exact",)), ReduceStep("candidates", "buckets", candidates),
               MapStep("shingles", shingle_sets, reads=("needs",)),
               ReduceStep("verify", "pairs", verify, also=("shingles",)),
               CombineStep("components", components),
               MapStep("paragraph-keys", paragraph_keys, reads=("exact", "near")),
               ReduceStep("boilerplate", "paragraph-hashes", boilerplate),
               MapStep("against", against, reads=("exact", "near"))),
        shuffles=(Shuffle("hashes", KEY_BYTES, "norm_hash"), Shuffle("buckets", near_bytes, "bucket"),
                  Shuffle("pairs", VERIFY_BYTES, "a_id"), Shuffle("shingles", VERIFY_BYTES, "id"),
                  Shuffle("edges", 8, "a_id"),
                  Shuffle("paragraph-hashes", KEY_BYTES, "para")),
        apply=apply, apply_reads=("exact", "near", "cuts", "against"), active=active,
        routed_schemas={"exact": {"id": pl.String, "survivor": pl.String},
                        "needs": {"id": pl.String, "_pv": pl.Int32}},
        against_published=True)
