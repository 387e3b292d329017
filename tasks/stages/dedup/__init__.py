"""Dedup: within the run (exact, repeated paragraphs, MinHash LSH near-duplicates verified by exact Jaccard), then
against what the dataset has published and forgotten, so an incremental run does not republish last week's rows.

A partitioned global stage: the steps are in steps.py (no step holds the corpus), the per-row primitives
(normalization, shingles, MinHash) and the final apply in within_run.py, the published index in published.py.
`stage.fn(df)` runs the same steps on one frame in memory.
"""

from __future__ import annotations

import polars as pl

from schemas.config import DedupConfig
from schemas.record import CANONICAL
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stage import Stage, StageResult
from tasks.stages.dedup import steps
from tasks.stages.dedup.steps import IndexMismatch  # noqa: F401 (raised by the stage, caught by callers)
from tasks.stages.dedup.within_run import (  # noqa: F401 (the stage's primitives, imported from here elsewhere)
    ADDS,
    DROPPED,
    apply,
    minhash,
    normalized,
    shingles,
)


def apply_routed(batch: pl.DataFrame, routed: dict[str, pl.DataFrame], params: DedupConfig) -> StageResult:
    """The shard's rows with the decisions the steps routed to it."""
    return apply(batch, steps.shard_decisions(routed), params)


PLAN = steps.plan(apply_routed)


def dedup_one_shard(batch: pl.DataFrame, params: DedupConfig, published=None) -> StageResult:
    """The whole stage on one frame (every step in memory): what `stage.fn(df)` means for dedup."""
    (result,), _, _ = run_in_memory(PLAN, [batch], params, published=published)
    return result


STAGE = Stage(
    name="dedup",
    fn=dedup_one_shard,
    params=lambda cfg: cfg.dedup,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "timestamp": CANONICAL["timestamp"]},
    adds=ADDS,
    suite=lambda params: "dedup" if params.exact else "dedup-without-exact",
    kind="global",
    plan=PLAN,
    description="exact, repeated-paragraph and MinHash LSH near-duplicate removal, within the run and against "
                "what the dataset published",
)
