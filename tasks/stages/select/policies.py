"""The select stage's rules, each a polars expression over the rows still selected: which of them it removes, and
the evidence why (the value, the threshold or the rank and the budget). Order inside a rule is always broken by a
hash of the id, so a selection depends on the rows alone, never on how they were sharded or ordered."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import SelectPolicy
from tasks.stages.select import coreset

ALIVE = "_alive"
LABEL_NOISE_COLUMNS = ("label_issue", "score_label_pred", "score_label_quality", "score_el2n", "score_aum")


DEFAULT_COLUMN = {"keep_hard": "score_prototypicality", "keep_easy": "score_prototypicality", "longest": "text",
                  "label_noise": "label", "k_center": "embedding"}


def column_of(policy: SelectPolicy) -> str | None:
    """The column a rule reads: the configured one, else its kind's default (None for random and a plain quota)."""
    return policy.column or DEFAULT_COLUMN.get(policy.kind)


def reason(policy: SelectPolicy) -> str:
    return f"select.{policy.name or policy.kind}"


def _tiebreak(seed: int) -> pl.Expr:
    return pl.col("id").hash(seed=seed)


def _budget(policy: SelectPolicy, alive: int) -> int:
    return policy.k if policy.k is not None else int(round(policy.fraction * alive))


def _ranked(frame: pl.DataFrame, key: pl.Expr, descending: bool, seed: int, over: list[str] | None = None
            ) -> pl.Series:
    """0-based rank of every alive row by `key` (ties by hashed id); dead rows rank last."""
    ordered = frame.with_row_index("_r").with_columns(_key=key, _tie=_tiebreak(seed)).sort(
        [pl.col(ALIVE).not_(), "_key", "_tie"], descending=[False, descending, False], nulls_last=True)
    ranked = ordered.with_columns(_rank=(pl.int_range(pl.len()).over(over) if over else pl.int_range(pl.len())))
    return ranked.sort("_r")["_rank"]


def judge(frame: pl.DataFrame, policy: SelectPolicy) -> tuple[pl.Series, pl.Series]:
    """(removed, evidence JSON) for the rows of `frame` whose ALIVE is true; other rows are never removed."""
    alive = frame[ALIVE]
    n_alive = int(alive.sum())
    kind, col = policy.kind, column_of(policy)
    for needed in [c for c in (col, *policy.by) if c is not None]:
        if needed not in frame.columns:
            raise ValueError(f"select policy {reason(policy)}: column {needed!r} is not in the data "
                             f"(columns: {', '.join(c for c in frame.columns if not c.startswith('_'))})")
    null = pl.col(col).is_null() if col is not None else pl.lit(False)
    null_removed = null & pl.lit(policy.nulls == "reject")

    if kind == "label_noise":
        label = col
        for needed in (label, *LABEL_NOISE_COLUMNS):
            if needed not in frame.columns:
                raise ValueError(f"select policy {reason(policy)}: column {needed!r} is not in the data; label noise "
                                 "comes from the score stage on labeled rows (put score before select)")
        removed = pl.col("label_issue").fill_null(False)
        evidence = pl.struct(policy=pl.lit(reason(policy)), label=pl.col(label), predicted=pl.col("score_label_pred"),
                             label_quality=pl.col("score_label_quality").round(4),
                             el2n=pl.col("score_el2n").round(4), aum=pl.col("score_aum").round(4))
    elif kind == "k_center":
        removed, evidence = _k_center(frame, policy, col, null, null_removed)
    elif kind == "threshold":
        inside = pl.lit(True)
        if policy.min is not None:
            inside = inside & (pl.col(col) >= policy.min)
        if policy.max is not None:
            inside = inside & (pl.col(col) <= policy.max)
        removed = pl.when(null).then(null_removed).otherwise(~inside)
        evidence = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col), value=pl.col(col).cast(pl.Float64),
                             min=pl.lit(policy.min, pl.Float64), max=pl.lit(policy.max, pl.Float64))
    elif kind == "quota":
        key = pl.col(col) if col else _tiebreak(policy.seed + 1)
        rank = _ranked(frame, key, bool(col) and policy.descending, policy.seed, policy.by)
        sizes = frame.filter(ALIVE).group_by(policy.by).len()
        cap = policy.max_per_group if policy.max_per_group is not None else int(sizes["len"].min() or 0)
        removed = pl.lit(rank) >= cap
        evidence = pl.struct(policy=pl.lit(reason(policy)), group=pl.concat_str([pl.col(b).cast(pl.String)
                                                                                for b in policy.by], separator="/"),
                             rank_in_group=pl.lit(rank), per_group=pl.lit(cap))
    else:
        if kind == "random":
            key, descending = _tiebreak(policy.seed + 1), False
        elif kind == "longest":  # the features step already holds the length (never the text)
            key = pl.col(col).str.len_chars() if frame.schema[col] == pl.String else pl.col(col)
            descending = True
        else:
            key = pl.col(col)
            descending = {"keep_hard": True, "keep_easy": False}.get(kind, policy.descending)
        scored = n_alive if kind in ("random", "longest") else int(frame.select((pl.col(ALIVE) & ~null).sum()).item())
        budget = _budget(policy if kind != "longest" or policy.k or policy.fraction
                         else policy.model_copy(update={"k": 1000}), scored)
        ranked_key = key if kind in ("random", "longest") else pl.when(null).then(None).otherwise(key)
        rank = _ranked(frame, ranked_key, descending, policy.seed)
        if kind in ("random", "longest"):
            removed = pl.lit(rank) >= budget
        else:
            removed = pl.when(null).then(null_removed).otherwise(pl.lit(rank) >= budget)
        evidence = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col),
                             value=(key.cast(pl.Float64) if kind != "random" else pl.lit(None, pl.Float64)),
                             rank=pl.lit(rank), budget=pl.lit(budget), descending=pl.lit(descending))
    out = frame.select(removed=(removed.fill_null(False) & pl.col(ALIVE)), evidence=evidence.struct.json_encode())
    return out["removed"], out["evidence"]


def _k_center(frame: pl.DataFrame, policy: SelectPolicy, col: str, null: pl.Expr, null_removed: pl.Expr
              ) -> tuple[pl.Expr, pl.Expr]:
    """Core-Set: of the alive rows with an embedding (taken in hashed-id order, so sharding never matters), keep the
    k-center greedy picks; a removed row's evidence is its cosine distance to the nearest kept one."""
    candidates = (frame.with_row_index("_r").filter(pl.col(ALIVE) & pl.col(col).is_not_null())
                  .with_columns(_tie=_tiebreak(policy.seed)).sort("_tie", "id"))
    budget = _budget(policy, candidates.height)
    emb = (np.asarray(candidates[col].to_numpy(), dtype=np.float32).reshape(candidates.height, -1)
           if candidates.height else np.zeros((0, 1), dtype=np.float32))
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    picked, cover = coreset.k_center_cover(emb, budget, policy.seed)
    rows = candidates["_r"].to_numpy()
    pick_rank = np.full(frame.height, -1, dtype=np.int64)
    pick_rank[rows[picked]] = np.arange(picked.size)
    distance = np.full(frame.height, np.nan)
    distance[rows] = cover
    rank = pl.Series(pick_rank)
    removed = pl.when(null).then(null_removed).otherwise(pl.lit(rank) < 0)
    evidence = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col), budget=pl.lit(budget),
                         candidates=pl.lit(candidates.height),
                         cover_distance=pl.lit(pl.Series(distance)).fill_nan(None).round(4))
    return removed, evidence
