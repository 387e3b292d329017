"""Dedup: within the run (within_run.py: exact, repeated paragraphs, MinHash LSH), then against what the dataset
has published and forgotten (published.py), so an incremental run does not republish last week's rows.

A global stage (tasks/runtime/stage.py GlobalSteps):
  features  per shard: normalized-text hash, paragraph hashes, MinHash signature (no text leaves the shard);
  decide    once: clusters within the run; then the surviving rows against the published index (an append run)
            and the forgotten rows (every run): `dedup.exact.published`, `dedup.near.published`, `dedup.forgotten`
            with the version and row (or tombstone) matched as evidence;
  apply     per shard: drop what was decided, cut repeated paragraphs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from schemas.record import CANONICAL
from tasks.io.versions import PublishedIndex
from tasks.runtime.stage import GlobalSteps, Stage
from tasks.stages.dedup.published import best_matches, index_format, short_signature
from tasks.stages.dedup.within_run import (  # noqa: F401 (the stage's functions, imported from here elsewhere)
    ADDS,
    DROPPED,
    apply,
    dedup_one_shard,
    features,
    minhash,
    normalized,
    shingles,
)
from tasks.stages.dedup.within_run import decide as decide_within_run


class IndexMismatch(ValueError):
    pass


def _against(decisions: pl.DataFrame, alive: pl.DataFrame, matches: pl.DataFrame, action: pl.Expr
             ) -> pl.DataFrame:
    """Mark the alive rows that matched (`i` = position in `alive`) with the action and what they matched (and the
    tombstone, when `matches` names one)."""
    if matches.height == 0:
        return decisions
    hit = alive.select("id").with_row_index("i").with_columns(pl.col("i").cast(pl.Int64)).join(matches, on="i")
    carried = {"survivor": "match_id", "cluster": "match_id", "similarity": "similarity",
               "match_version": "match_version", **({"tombstone": "tombstone"} if "tombstone" in matches.columns
                                                    else {})}
    hit = hit.select("id", new_action=action, **{f"new_{k}": pl.col(v) for k, v in carried.items()})
    out = decisions.join(hit, on="id", how="left", maintain_order="left")
    matched = pl.col("new_action").is_not_null()
    return out.with_columns(**{k: pl.when(matched).then(f"new_{k}").otherwise(k) for k in ["action", *carried]}
                            ).drop([c for c in out.columns if c.startswith("new_")])


def decide(feats: pl.DataFrame, params: DedupConfig, published: PublishedIndex | None = None) -> pl.DataFrame:
    """Within the run first; the rows that survive it are then checked against forgotten content, then (append)
    against the published version. A row matching both is `forgotten`: a takedown outranks a duplicate."""
    decisions = decide_within_run(feats, params).with_columns(match_version=pl.lit(None, pl.Int32),
                                                              tombstone=pl.lit(None, pl.String))
    if published is None or published.empty:
        return decisions
    wanted = index_format(params)
    if published.parts and {k: (published.format or {}).get(k) for k in wanted} != wanted:
        raise IndexMismatch(
            f"the dedup index of {published.dataset} v{published.version} was built with {published.format}, this "
            f"run's dedup uses {wanted}: hashes would not be comparable. Publish this run with "
            "`--publish-mode replace` (a full recompute rebuilds the index), or use the dedup settings and polars "
            "version the index was built with.")
    keep = decisions.filter(pl.col("action") == "keep").select("id").join(feats, on="id", how="left",
                                                                         maintain_order="left")
    cols = [pl.col("norm_hash")]
    if "sig" in keep.columns:
        perms = params.near.bands * params.near.rows
        sig = np.asarray(keep["sig"].to_numpy(), dtype=np.uint64).reshape(keep.height, perms)
        cols.append(pl.Series("sig16", short_signature(sig), dtype=pl.Array(pl.UInt16, perms)))
    new = keep.select("id", *cols)
    blocked = published.read_blocked()
    if blocked is not None:
        matches = best_matches(new, [blocked], params)
        tombs = blocked.select(match_id="id", match_version="version", tombstone="tombstone").unique(
            ["match_id", "match_version"])
        matches = matches.join(tombs, on=["match_id", "match_version"], how="left")
        decisions = _against(decisions, new, matches, pl.lit("forgotten"))
        new = new.join(decisions.filter(pl.col("action") == "forgotten").select("id"), on="id", how="anti")
    if published.parts:
        matches = best_matches(new, published.read_parts(), params)
        decisions = _against(decisions, new, matches,
                             pl.when(pl.col("exact")).then(pl.lit("exact.published"))
                             .otherwise(pl.lit("near.published")))
    return decisions


STAGE = Stage(
    name="dedup",
    fn=dedup_one_shard,
    params=lambda cfg: cfg.dedup,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "timestamp": CANONICAL["timestamp"]},
    adds=ADDS,
    suite=lambda params: "dedup" if params.exact else "dedup-without-exact",
    kind="global",
    steps=GlobalSteps(features=features, decide=decide, apply=apply, against_published=True),
    description="exact, repeated-paragraph and MinHash LSH near-duplicate removal, within the run and against "
                "what the dataset published",
)
