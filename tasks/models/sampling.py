"""Which rows a step samples: a fixed hash of the id under the fraction, so reruns, resumed shards and every worker
pick the same rows without coordinating (polars' hash with a fixed seed: stable for one polars version).

One seed per purpose, so the samples of different purposes are independent of each other (the rows the score
stage scores are not also, by construction, the rows its k-means fits on or augment's proxy classifier learns
from); the seeds are the ones each purpose used before this module, so samples did not move.
"""

from __future__ import annotations

import polars as pl

SEEDS = {"score": 11, "augment.proxy": 13, "score.fit": 29}
BUCKETS = 1_000_000


def chosen(ids: pl.Expr | pl.Series, fraction: float, purpose: str) -> pl.Expr | pl.Series:
    """True for the rows in the `purpose` sample of `fraction` of all ids (an expression or a Series, as given)."""
    if fraction >= 1.0:
        return pl.lit(True) if isinstance(ids, pl.Expr) else pl.repeat(True, ids.len(), eager=True)
    return (ids.hash(seed=SEEDS[purpose]) % BUCKETS) < round(fraction * BUCKETS)
