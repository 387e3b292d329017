"""Select: which rows stay, by rules composed in config (thresholds, top-k, keep hard/easy, longest, quotas and
balance, a seeded random baseline), each rejection `select.<rule>` with its evidence.

A partitioned global stage (the steps in steps.py: features per shard, each corpus-wide rule's cutoff or picks
found by streaming the rows partition by partition, the decisions per partition; no step holds every row), then
apply per shard: kept rows unchanged, removed rows to quarantine with reason and evidence.
Counts per class (`select.label`) feed the contract: a selection that keeps no row, or empties a class, fails.
"""

from __future__ import annotations

import polars as pl

from schemas.config import SelectConfig
from schemas.record import CANONICAL
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stage import Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.select import policies, steps


def apply(batch: pl.DataFrame, decisions: pl.DataFrame, params: SelectConfig) -> StageResult:
    joined = batch.join(decisions, on="id", how="left", maintain_order="left")
    rejected = joined.filter(pl.col("reason").is_not_null())
    kept = joined.filter(pl.col("reason").is_null()).select(batch.columns)
    tallies = {}
    if params.label in batch.columns:  # unlabeled rows (null) are no class
        tallies = {name: {str(v): n for v, n in frame.drop_nulls(params.label).group_by(params.label).len().iter_rows()}
                   for name, frame in (("select.in", batch), ("select.kept", kept))}
    return StageResult(kept=kept, rejected=rejected.select(*batch.columns, "reason", "evidence"),
                       stats=Stats(counts={"select.kept": kept.height}, tallies=tallies))


def apply_routed(batch: pl.DataFrame, routed: dict[str, pl.DataFrame], params: SelectConfig) -> StageResult:
    return apply(batch, routed.get("decisions", pl.DataFrame(schema=steps.DECISIONS)), params)


PLAN = steps.plan(apply_routed)


def select_one_shard(batch: pl.DataFrame, params: SelectConfig) -> StageResult:
    """The whole stage on one frame (every step in memory): what `stage.fn(df)` means for select (a k_center rule
    then needs the embeddings in the frame)."""
    (result,), _, _ = run_in_memory(PLAN, [batch], params)
    return result


def rate_checks(stats: Stats, rows_in: int, params: SelectConfig) -> list[dict]:
    """A selection that keeps nothing, or removes every row of a class, fails the contract, naming it."""
    kept = stats.counts.get("select.kept", 0)
    checks = [{"name": "select.keeps_rows", "count": kept, "rate": 1.0 if rows_in and not kept else 0.0,
               "warn": 1.0, "max": 0.0,
               "message": f"select would keep 0 of {rows_in:,} rows: loosen the rules "
                          f"({', '.join(policies.reason(p) for p in params.policies)})"}]
    in_by_class, kept_by_class = stats.tallies.get("select.in", {}), stats.tallies.get("select.kept", {})
    for c in sorted(in_by_class):
        emptied = kept_by_class.get(c, 0) == 0
        checks.append({"name": f"select.class.{c}", "count": in_by_class[c],
                       "rate": 1.0 if emptied else 0.0, "warn": 1.0, "max": 0.0,
                       "message": f"select would remove every row of class {params.label} = {c} "
                                  f"({in_by_class[c]:,} rows in); a quota or a per-class rule "
                                  "keeps classes alive"})
    return checks


def summarize(stats: Stats, params: SelectConfig) -> dict:
    kept_by_class = stats.tallies.get("select.kept", {})
    per_class = {c: {"in": n, "kept": kept_by_class.get(c, 0)} for c, n in stats.tallies.get("select.in", {}).items()}
    return {"rules": [policies.reason(p) for p in params.policies], "kept": stats.counts.get("select.kept", 0),
            "per_class": per_class}


STAGE = Stage(
    name="select",
    fn=select_one_shard,
    params=lambda cfg: cfg.select,
    requires={"id": CANONICAL["id"]},
    adds={},
    suite="select",
    kind="global",
    plan=PLAN,
    rate_checks=rate_checks,
    summarize=summarize,
    description="rules composed in config: thresholds, top-k, keep hard/easy, longest, quotas, k-center, random "
                "baseline",
)
