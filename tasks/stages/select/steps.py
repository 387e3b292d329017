"""The select stage as partitioned steps (tasks/runtime/plan.py): no step holds every row's values.

  features  map      per shard: the id and only the columns the rules read (a `longest` rule's text becomes its
                     length; a k_center rule's embeddings come from the score stage's side shard)
                                                                         -> shuffle `rows` by id
  cutoffs   combine  rule by rule, in order: the rows still alive after the rules before it, streamed one
                     partition at a time, give the rule its global answer (policies.resolve: a cutoff per group
                     by a radix select over histograms, or the k-center picks from per-partition pools)
                                                                         -> global `cutoffs`, `picks`
  decide    reduce   per partition: every rule in order, each row judged by its values and the rule's answer
                                                                         -> route `decisions` (removed rows)
  apply              the shard's rows: removed ones to quarantine with reason and evidence
"""

from __future__ import annotations

import polars as pl

from schemas.config import SelectConfig
from tasks.runtime.plan import SHARD, CombineStep, MapStep, Plan, ReduceStep, Shuffle, StepInputs, partition
from tasks.runtime.stage import StageInputError
from tasks.stages.select import cutoffs, policies
from tasks.stages.select.policies import ALIVE

DECISIONS = {"id": pl.String, "reason": pl.String, "evidence": pl.String}


def _read_columns(params: SelectConfig, available: list[str]) -> list[str]:
    cols = []
    for p in params.policies:
        cols += [c for c in (policies.column_of(p), *p.by) if c is not None]
        if p.kind == "label_noise":
            cols += list(policies.LABEL_NOISE_COLUMNS)
    if params.label in available:
        cols.append(params.label)
    return list(dict.fromkeys(c for c in cols if c != "id"))


def bytes_per_row(params: SelectConfig) -> int:
    """What a row of the `rows` shuffle costs a `decide` unit in memory: measured at ~750 bytes with 3 columns
    (bench/select_memory.py: 455k rows a partition held 0.34 GiB; the evidence JSON of removed rows is most of it),
    16 more per column read, and 4 per embedding dimension when a k_center rule reads them (MiniLM: 384)."""
    return 700 + 16 * len(_read_columns(params, [])) + (
        1600 if any(p.kind == "k_center" for p in params.policies) else 0)


def features(batch: pl.DataFrame, inputs: StepInputs, params: SelectConfig) -> dict:
    """The id and the columns the rules read; the score stage's embeddings come from its side shard of this shard,
    or from the batch itself when it carries them (a frame selected on its own)."""
    if params.label not in batch.columns:
        raise StageInputError(f"select.label = {params.label!r} names no column of the data (columns: "
                         f"{', '.join(batch.columns)}): no class could be protected from being emptied")
    wants_embedding = any(p.kind == "k_center" and policies.column_of(p) == "embedding" for p in params.policies)
    side = wants_embedding and "embedding" not in batch.columns
    cols = [c for c in _read_columns(params, batch.columns) if not (side and c == "embedding")]
    missing = [c for c in cols if c not in batch.columns]
    if missing:
        raise StageInputError(f"select: the rules read column(s) {', '.join(missing)}, which the data does not have "
                         f"(columns: {', '.join(batch.columns)}); is the stage that adds them in `stages`?")
    lengths = {policies.column_of(p) for p in params.policies if p.kind == "longest"}
    frame = batch.select("id", *[pl.col(c).str.len_chars().alias(c) if c in lengths and batch.schema[c] == pl.String
                                 else pl.col(c) for c in cols])
    if side:
        embeddings = inputs.other_side("score", "embeddings") if inputs.other_side else None
        if embeddings is None:
            raise StageInputError(f"select reads the embeddings of stage score (embedding) for its k_center rule, and "
                             f"this run has none for shard {inputs.unit}: put score before select in `stages`")
        frame = frame.join(embeddings.select("id", "embedding"), on="id", how="left", maintain_order="left")
    return {"rows": frame.with_columns(partition(pl.col("id"), inputs.count("rows")))}


def _alive(frame: pl.DataFrame, params: SelectConfig, answers: list[tuple[pl.DataFrame, pl.DataFrame | None]]
           ) -> pl.DataFrame:
    """The frame with ALIVE after the first len(answers) rules."""
    frame = frame.with_columns(pl.lit(True).alias(ALIVE))
    for policy, (resolved, picks) in zip(params.policies, answers, strict=False):
        removed, _ = policies.removed_by(frame, policy, resolved, picks, evidence=False)
        frame = frame.with_columns(pl.col(ALIVE) & removed.not_())
    return frame


def resolve_rules(inputs: StepInputs, params: SelectConfig, gather: int = cutoffs.GATHER) -> dict:
    """Each corpus-wide rule's answer, in order (a rule sees only the rows the rules before it kept)."""
    answers: list[tuple[pl.DataFrame, pl.DataFrame | None]] = []
    for i, policy in enumerate(params.policies):
        if policy.kind not in policies.GLOBAL:
            answers.append((pl.DataFrame(schema=policies.RESOLVED), None))
            continue
        done = list(answers)

        def pieces(done=done, policy=policy):
            for part in inputs.stream("rows"):
                policies.check_columns(part, policy)
                yield _alive(part, params, done)

        answers.append(policies.resolve(policy, i, pieces, gather))
    resolved = pl.concat([r for r, _ in answers], how="vertical") if answers else pl.DataFrame(
        schema=policies.RESOLVED)
    picks = [p for _, p in answers if p is not None and p.height]
    out = {"global:cutoffs": resolved}
    if picks:
        out["global:picks"] = pl.concat(picks, how="vertical")
    return out


def decide(rows: pl.DataFrame, inputs: StepInputs, params: SelectConfig) -> dict:
    """Every rule in order on this partition's rows, with their answers: the removed rows' reasons and evidence."""
    resolved = inputs.globals.get("cutoffs", pl.DataFrame(schema=policies.RESOLVED))
    picks = inputs.globals.get("picks")
    frame = rows.with_columns(pl.lit(True).alias(ALIVE), reason=pl.lit(None, pl.String),
                              evidence=pl.lit(None, pl.String))
    for i, policy in enumerate(params.policies):
        policies.check_columns(frame, policy)
        own = resolved.filter(pl.col("rule") == i)
        own_picks = picks.filter(pl.col("rule") == i) if picks is not None else None
        removed, evidence = policies.removed_by(frame, policy, own, own_picks)
        frame = frame.with_columns(
            reason=pl.when(removed).then(pl.lit(policies.reason(policy))).otherwise(pl.col("reason")),
            evidence=pl.when(removed).then(evidence).otherwise(pl.col("evidence")),
        ).with_columns(pl.col(ALIVE) & removed.not_())
    return {"decisions": frame.filter(pl.col("reason").is_not_null()).select("id", SHARD, "reason", "evidence")}


def plan(apply) -> Plan:
    return Plan(
        steps=(MapStep("features", features), CombineStep("cutoffs", resolve_rules),
               ReduceStep("decide", "rows", decide)),
        shuffles=(Shuffle("rows", bytes_per_row, "id"),),
        apply=apply, apply_reads=("decisions",), routed_schemas={"decisions": DECISIONS})
