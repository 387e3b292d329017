"""Select: which rows stay, by rules composed in config (thresholds, top-k, keep hard/easy, longest, quotas and
balance, a seeded random baseline), each rejection `select.<rule>` with its evidence.

A global stage (tasks/runtime/stage.py GlobalSteps):
  features  per shard: the id and only the columns the rules read (a text column a `longest` rule reads becomes
            its length here: features never carry text);
  decide    once: the rules in order (tasks/stages/select/policies.py), each on the rows still selected;
  apply     per shard: kept rows unchanged, removed rows to quarantine with reason and evidence.
Counts per class (`select.label`) feed the contract: a selection that keeps no row, or empties a class, fails.
"""

from __future__ import annotations

import polars as pl

from schemas.config import SelectConfig
from schemas.record import CANONICAL
from tasks.io.manifests import Stats
from tasks.runtime.stage import GlobalSteps, SideInput, Stage, StageResult
from tasks.stages.select import policies
from tasks.stages.select.policies import ALIVE


def _read_columns(params: SelectConfig, available: list[str]) -> list[str]:
    cols = []
    for p in params.policies:
        cols += [c for c in (policies.column_of(p), *p.by) if c is not None]
        if p.kind == "label_noise":
            cols += list(policies.LABEL_NOISE_COLUMNS)
    if params.label in available:
        cols.append(params.label)
    return list(dict.fromkeys(c for c in cols if c != "id"))


def side_inputs(params: SelectConfig) -> list[SideInput]:
    """A k_center rule reads the score stage's embeddings (joined on id by the runner before `decide`)."""
    wanted = {policies.column_of(p) for p in params.policies if p.kind == "k_center"}
    return [SideInput("score", "embeddings", ("embedding",))] if "embedding" in wanted else []


def features(batch: pl.DataFrame, params: SelectConfig) -> pl.DataFrame:
    """The id and the columns the rules read; the score stage's embeddings come to `decide` as a side input, or
    from the batch itself when it carries them (a frame selected on its own)."""
    if params.label not in batch.columns:
        raise ValueError(f"select.label = {params.label!r} names no column of the data (columns: "
                         f"{', '.join(batch.columns)}): no class could be protected from being emptied")
    side = {c for s in side_inputs(params) for c in s.columns if c not in batch.columns}
    cols = [c for c in _read_columns(params, batch.columns) if c not in side]
    missing = [c for c in cols if c not in batch.columns]
    if missing:
        raise ValueError(f"select: the rules read column(s) {', '.join(missing)}, which the data does not have "
                         f"(columns: {', '.join(batch.columns)}); is the stage that adds them in `stages`?")
    lengths = {policies.column_of(p) for p in params.policies if p.kind == "longest"}
    return batch.select("id", *[pl.col(c).str.len_chars().alias(c) if c in lengths and batch.schema[c] == pl.String
                                else pl.col(c) for c in cols])


def decide(feats: pl.DataFrame, params: SelectConfig) -> pl.DataFrame:
    frame = feats.with_columns(pl.lit(True).alias(ALIVE), reason=pl.lit(None, pl.String),
                               evidence=pl.lit(None, pl.String))
    for policy in params.policies:
        removed, evidence = policies.judge(frame, policy)
        frame = frame.with_columns(
            reason=pl.when(removed).then(pl.lit(policies.reason(policy))).otherwise(pl.col("reason")),
            evidence=pl.when(removed).then(evidence).otherwise(pl.col("evidence")),
        ).with_columns(pl.col(ALIVE) & removed.not_())
    return frame.select("id", "reason", "evidence")


def apply(batch: pl.DataFrame, decisions: pl.DataFrame, params: SelectConfig) -> StageResult:
    joined = batch.join(decisions, on="id", how="left", maintain_order="left")
    rejected = joined.filter(pl.col("reason").is_not_null())
    kept = joined.filter(pl.col("reason").is_null()).select(batch.columns)
    counts = {"select.kept": kept.height}
    if params.label in batch.columns:  # unlabeled rows (null) are no class
        for value, n in batch.drop_nulls(params.label).group_by(params.label).len().iter_rows():
            counts[f"select.in.{value}"] = n
        for value, n in kept.drop_nulls(params.label).group_by(params.label).len().iter_rows():
            counts[f"select.kept.{value}"] = n
    return StageResult(kept=kept, rejected=rejected.select(*batch.columns, "reason", "evidence"),
                       stats=Stats(counts=counts))


def select_one_shard(batch: pl.DataFrame, params: SelectConfig) -> StageResult:
    """The whole stage on one frame (features, decide, apply): what `stage.fn(df)` means for select (a k_center
    rule then needs the embeddings in the frame)."""
    return apply(batch, decide(features(batch, params), params), params)


def rate_checks(stats: Stats, rows_in: int, params: SelectConfig) -> list[dict]:
    """A selection that keeps nothing, or removes every row of a class, fails the contract, naming it."""
    kept = stats.counts.get("select.kept", 0)
    checks = [{"name": "select.keeps_rows", "count": kept, "rate": 1.0 if rows_in and not kept else 0.0,
               "warn": 1.0, "max": 0.0,
               "message": f"select would keep 0 of {rows_in:,} rows: loosen the rules "
                          f"({', '.join(policies.reason(p) for p in params.policies)})"}]
    classes = sorted(k.removeprefix("select.in.") for k in stats.counts if k.startswith("select.in."))
    for c in classes:
        emptied = stats.counts.get(f"select.kept.{c}", 0) == 0
        checks.append({"name": f"select.class.{c}", "count": stats.counts[f"select.in.{c}"],
                       "rate": 1.0 if emptied else 0.0, "warn": 1.0, "max": 0.0,
                       "message": f"select would remove every row of class {params.label} = {c} "
                                  f"({stats.counts[f'select.in.{c}']:,} rows in); a quota or a per-class rule "
                                  "keeps classes alive"})
    return checks


def summarize(stats: Stats, params: SelectConfig) -> dict:
    per_class = {k.removeprefix("select.in."): {"in": v, "kept": stats.counts.get(f"select.kept.{k[10:]}", 0)}
                 for k, v in stats.counts.items() if k.startswith("select.in.")}
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
    steps=GlobalSteps(features=features, decide=decide, apply=apply, side_inputs=side_inputs),
    rate_checks=rate_checks,
    summarize=summarize,
    description="rules composed in config: thresholds, top-k, keep hard/easy, longest, quotas, k-center, random "
                "baseline",
)
