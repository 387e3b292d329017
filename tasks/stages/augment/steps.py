"""The augment stage as partitioned steps (tasks/runtime/plan.py): no step holds every row.

  features    map      per shard: slice counts                                   -> shuffle `counts` (1 part)
                       the rows in a slice and the proxy's hashed sample, with text -> shuffle `pool` (1 part)
                       every row's normalized-text hash                           -> shuffle `hashes` by hash
  generate    combine  shortfalls from the summed counts, requests, generation, the gate's checks before
                       `duplicate`                      -> global `candidates`, `report`; shuffle `candidate-hashes`
  duplicates  reduce   per hash partition: the candidates whose hash a real row of the partition has
                                                                                  -> shuffle `dups` (1 part)
  gate        combine  `duplicate` and the checks after it, the decisions  -> route `generated` (parent's shard),
                       route `requests` (one shard: the request counts), artifact `augment_plan.json`
  apply                the shard's rows, the generated rows whose parent it holds

What one step holds: `pool` is the scarce slices' rows (small by construction: a slice is augmented because it
is short of its target) and the proxy sample, capped at PROXY_ROWS; `candidates` is what was asked for.
"""

from __future__ import annotations

import orjson
import polars as pl

from schemas.config import AugmentParams
from tasks.runtime.plan import PART, SHARD, CombineStep, MapStep, Plan, ReduceStep, Shuffle, StepInputs, partition
from tasks.stages.augment import gate, plan
from tasks.stages.augment.plan import SLICE

PROXY_ROWS = 20_000  # the proxy classifier's sample, at most (about): a fraction of a crawl would be unbounded


def _one(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit(0, pl.Int32).alias(PART))


def _all(inputs: StepInputs, name: str) -> pl.DataFrame | None:
    frames = list(inputs.stream(name))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def features_step(batch: pl.DataFrame, inputs: StepInputs, params: AugmentParams) -> dict:
    from tasks.stages import augment

    fraction = min(params.augment.gate.proxy_sample, PROXY_ROWS / max(inputs.rows, 1))
    feats = augment.features(batch, params, proxy_fraction=fraction)
    out = {"counts": _one(plan.slice_counts(feats)),
           "hashes": feats.select("_hash").with_columns(partition(pl.col("_hash"), inputs.count("hashes")))}
    pool = feats.filter(pl.col(SLICE).is_not_null() | pl.col("_proxy")).drop("_hash")
    if pool.height:
        out["pool"] = _one(pool)
    return out


def generate_step(inputs: StepInputs, params: AugmentParams, loaded) -> dict:
    from tasks.stages import augment

    counts = _all(inputs, "counts")
    if counts is None:
        return {}
    pool = _all(inputs, "pool")
    if pool is None:
        pool = pl.DataFrame(schema={"id": pl.String, SLICE: pl.String, "label": pl.String, "_synthetic": pl.Boolean,
                                    "_proxy": pl.Boolean, "text": pl.String, SHARD: pl.String})
    candidates, report = augment.generate(pool.sort("id"), counts.drop(SHARD), params, loaded)
    out = {"global:candidates": candidates, "global:report": pl.DataFrame({"json": [orjson.dumps(report).decode()]})}
    alive = candidates.filter(pl.col("reason").is_null())
    if alive.height:
        out["candidate-hashes"] = alive.select("id", _hash=gate.text_hash(alive)).with_columns(
            partition(pl.col("_hash"), inputs.count("hashes")))
    return out


def duplicates_step(rows: pl.DataFrame, inputs: StepInputs, params: AugmentParams) -> dict:
    asked = inputs.route("candidate-hashes")
    if not asked.height:
        return {}
    found = asked.filter(pl.col("_hash").is_in(rows["_hash"].implode()))
    return {"dups": _one(found.select("id"))} if found.height else {}


def gate_step(inputs: StepInputs, params: AugmentParams, loaded) -> dict:
    from tasks.stages import augment

    candidates, report = inputs.globals.get("candidates"), inputs.globals.get("report")
    if candidates is None or report is None:
        return {}
    pool = _all(inputs, "pool")
    shards = pool.select(syn_parent_id="id", **{SHARD: pl.col(SHARD)}) if pool is not None else None
    dups = _all(inputs, "dups")
    decisions, artifacts, stats = augment.gate_decisions(
        candidates, dups["id"] if dups is not None else pl.Series("id", [], pl.String),
        pool.drop(SHARD) if pool is not None else pl.DataFrame(), orjson.loads(report["json"][0]), params, loaded)
    out = {f"artifact:{name}": data for name, data in artifacts.items()}
    if shards is not None and shards.height:
        out["generated"] = decisions.join(shards, on="syn_parent_id", how="inner")
        out["requests"] = pl.DataFrame({"stats": [orjson.dumps(stats.as_json()).decode()],
                                        SHARD: [shards[SHARD].min()]})
    return out


def plan_of(apply) -> Plan:
    return Plan(
        steps=(MapStep("features", features_step), CombineStep("generate", generate_step, loads=True),
               ReduceStep("duplicates", "hashes", duplicates_step, also=("candidate-hashes",)),
               CombineStep("gate", gate_step, loads=True)),
        shuffles=(Shuffle("counts", 64, SLICE, partitions=1), Shuffle("pool", 64, "id", partitions=1),
                  Shuffle("hashes", 48, "_hash"), Shuffle("candidate-hashes", 48, "_hash"),
                  Shuffle("dups", 32, "id", partitions=1)),
        apply=apply, apply_reads=("generated", "requests"))
