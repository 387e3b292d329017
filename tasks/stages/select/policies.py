"""The select stage's rules: which alive rows each removes, and the evidence why (the value, the threshold, or the
budget and the cutoff the budget set).

A rule that needs the whole corpus (a top-k, a quota, a random subset, k-center) is split in two: `resolve`
streams the rows once or a few times and returns the rule's small global answer (a cutoff per group, the k-center
picks), and `removed_by` decides each row from its own values and that answer, partition by partition. Order inside a
rule is always broken by a hash of the id, so a selection depends on the rows alone, never on how they were
sharded, partitioned or ordered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl

from schemas.config import SelectPolicy
from tasks.runtime.stage import StageInputError
from tasks.stages.select import coreset, cutoffs

ALIVE = "_alive"
LABEL_NOISE_COLUMNS = ("label_issue", "score_label_pred", "score_label_quality", "score_el2n", "score_aum")
RANKED = ("top", "keep_hard", "keep_easy", "longest", "random", "quota")
GLOBAL = (*RANKED, "k_center")
RESOLVED = {"rule": pl.Int32, "g": pl.String, "budget": pl.Int64, "count": pl.Int64, "cut1": pl.UInt64,
            "cut2": pl.UInt64}

DEFAULT_COLUMN = {"keep_hard": "score_prototypicality", "keep_easy": "score_prototypicality", "longest": "text",
                  "label_noise": "label", "k_center": "embedding"}


def column_of(policy: SelectPolicy) -> str | None:
    """The column a rule reads: the configured one, else its kind's default (None for random and a plain quota)."""
    return policy.column or DEFAULT_COLUMN.get(policy.kind)


def reason(policy: SelectPolicy) -> str:
    return f"select.{policy.name or policy.kind}"


def _budget(policy: SelectPolicy, alive: int) -> int:
    if policy.kind == "longest" and policy.k is None and policy.fraction is None:
        return 1000
    return policy.k if policy.k is not None else int(round(policy.fraction * alive))


def _descending(policy: SelectPolicy) -> bool:
    if policy.kind == "quota":
        return column_of(policy) is not None and policy.descending
    return {"keep_hard": True, "keep_easy": False, "longest": True, "random": False}.get(policy.kind,
                                                                                       policy.descending)


def check_columns(frame: pl.DataFrame, policy: SelectPolicy) -> None:
    needed = [c for c in (column_of(policy), *policy.by) if c is not None]
    if policy.kind == "label_noise":
        needed += LABEL_NOISE_COLUMNS
    for col in needed:
        if col not in frame.columns:
            hint = ("; label noise comes from the score stage on labeled rows (put score before select)"
                    if policy.kind == "label_noise" else "")
            raise StageInputError(f"select policy {reason(policy)}: column {col!r} is not in the data (columns: "
                             f"{', '.join(c for c in frame.columns if not c.startswith('_'))}){hint}")


def ordered(frame: pl.DataFrame, policy: SelectPolicy) -> pl.DataFrame:
    """The rule's candidates among the alive rows, with their group `g` and order codes (c1, c2): the rows it
    ranks (rows with a null key are no candidates of a top rule, and rank last in longest and quota)."""
    col = column_of(policy)
    alive = frame[ALIVE]
    if policy.kind in ("top", "keep_hard", "keep_easy"):
        alive = alive & frame[col].is_not_null()
    rows = frame.with_row_index("_r").filter(alive)
    if policy.kind == "random" or (policy.kind == "quota" and col is None):
        c1 = rows.select(pl.col("id").hash(seed=policy.seed + 1)).to_series().to_numpy()
    else:
        key = rows[col]
        if key.dtype == pl.String:
            key = key.str.len_chars()
        c1 = cutoffs.float_codes(key, _descending(policy))
    group = (pl.concat_str([pl.col(b).cast(pl.String).fill_null("\u2400") for b in policy.by], separator="\x1f")
             if policy.kind == "quota" else pl.lit(""))
    return rows.select(g=group, c1=pl.Series(c1, dtype=pl.UInt64), c2=pl.col("id").hash(seed=policy.seed),
                       _r=pl.col("_r"))


def resolve(policy: SelectPolicy, rule: int, pieces: Callable[[], Iterator[pl.DataFrame]], gather: int
            ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The rule's global answer over the alive rows `pieces()` streams: (rows of RESOLVED, k-center picks)."""
    if policy.kind == "k_center":
        return _resolve_k_center(policy, rule, pieces)
    spans_frames = [ordered(p, policy).group_by("g").agg(pl.len().alias("n"), pl.col("c1").min().alias("lo"),
                                                         pl.col("c1").max().alias("hi")) for p in pieces()]
    spans_all = (pl.concat(spans_frames).group_by("g").agg(pl.col("n").sum(), pl.col("lo").min(),
                                                            pl.col("hi").max())
                 if spans_frames else pl.DataFrame(schema={"g": pl.String, "n": pl.UInt32, "lo": pl.UInt64,
                                                           "hi": pl.UInt64}))
    spans = {g: (int(n), int(lo), int(hi)) for g, n, lo, hi in spans_all.iter_rows()}
    if policy.kind == "quota":
        caps = {g: policy.max_per_group if policy.max_per_group is not None else
                min(n for n, _, _ in spans.values()) for g in spans}
    else:
        caps = {g: _budget(policy, n) for g, (n, _, _) in spans.items()}
    wanted = {g: cap for g, cap in caps.items() if 0 < cap < spans[g][0]}
    found = cutoffs.kth(lambda: (ordered(p, policy).select("g", "c1", "c2") for p in pieces()), wanted, spans,
                        gather)
    rows = [(rule, g, caps[g], spans[g][0], *(found.get(g) or ((cutoffs.MAX, cutoffs.MAX) if caps[g] > 0
                                                                  else (0, 0))))
            for g in sorted(spans)]
    if not rows:  # nothing alive: the rule still has a budget for the evidence (none is needed)
        rows = [(rule, "", 0, 0, 0, 0)]
    return pl.DataFrame(rows, schema=RESOLVED, orient="row"), None


def _embeddings(frame: pl.DataFrame, col: str) -> np.ndarray:
    emb = (np.asarray(frame[col].to_numpy(), dtype=np.float32).reshape(frame.height, -1) if frame.height
           else np.zeros((0, 1), dtype=np.float32))
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _k_center_candidates(frame: pl.DataFrame, policy: SelectPolicy) -> pl.DataFrame:
    col = column_of(policy)
    return (frame.filter(pl.col(ALIVE) & pl.col(col).is_not_null())
            .with_columns(_tie=pl.col("id").hash(seed=policy.seed)).sort("_tie", "id"))


def _resolve_k_center(policy: SelectPolicy, rule: int, pieces: Callable[[], Iterator[pl.DataFrame]]
                      ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Core-Set over partitions: k-center greedy picks up to the budget in each partition (the pool), then again
    over the pool, in hashed-id order; memory: one partition and a pool of budget rows per partition."""
    col = column_of(policy)
    total = sum(int(p.select((pl.col(ALIVE) & pl.col(col).is_not_null()).sum()).item()) for p in pieces())
    budget = _budget(policy, total)
    pools = []
    for piece in pieces():
        cands = _k_center_candidates(piece, policy)
        if cands.height and budget:
            picked, _ = coreset.k_center_cover(_embeddings(cands, col), budget, policy.seed)
            pools.append(cands[np.sort(picked)].select("id", "_tie", col))
    dim = pools[0][col].dtype.size if pools else 1
    picks = pl.DataFrame(schema={"rule": pl.Int32, "id": pl.String, "embedding": pl.Array(pl.Float32, dim)})
    if pools:
        pool = pl.concat(pools).sort("_tie", "id")
        emb = _embeddings(pool, col)
        picked, _ = coreset.k_center_cover(emb, budget, policy.seed)
        picks = pl.DataFrame({"rule": pl.Series([rule] * picked.size, dtype=pl.Int32),
                              "id": pool["id"].gather(picked),
                              "embedding": pl.Series(emb[picked], dtype=pl.Array(pl.Float32, dim))})
    resolved = pl.DataFrame([(rule, "", budget, total, 0, 0)], schema=RESOLVED, orient="row")
    return resolved, picks


def removed_by(frame: pl.DataFrame, policy: SelectPolicy, resolved: pl.DataFrame | None = None,
          picks: pl.DataFrame | None = None, evidence: bool = True) -> tuple[pl.Series, pl.Series | None]:
    """(removed, evidence JSON) for the rows of `frame` whose ALIVE is true, given the rule's resolved answer;
    other rows are never removed."""
    kind, col = policy.kind, column_of(policy)
    null = pl.col(col).is_null() if col is not None else pl.lit(False)
    null_removed = null & pl.lit(policy.nulls == "reject")
    if kind == "label_noise":
        removed = pl.col("label_issue").fill_null(False)
        why = pl.struct(policy=pl.lit(reason(policy)), label=pl.col(col), predicted=pl.col("score_label_pred"),
                        label_quality=pl.col("score_label_quality").round(4), el2n=pl.col("score_el2n").round(4),
                        aum=pl.col("score_aum").round(4))
    elif kind == "threshold":
        inside = pl.lit(True)
        if policy.min is not None:
            inside = inside & (pl.col(col) >= policy.min)
        if policy.max is not None:
            inside = inside & (pl.col(col) <= policy.max)
        removed = pl.when(null).then(null_removed).otherwise(~inside)
        why = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col), value=pl.col(col).cast(pl.Float64),
                        min=pl.lit(policy.min, pl.Float64), max=pl.lit(policy.max, pl.Float64))
    elif kind == "k_center":
        removed, why = _removed_by_k_center(frame, policy, col, null, null_removed, resolved, picks)
    else:
        removed, why = _removed_by_rank(frame, policy, col, null, null_removed, resolved)
    out = frame.select(removed=(removed.fill_null(False) & pl.col(ALIVE)),
                       **({"evidence": why.struct.json_encode()} if evidence else {}))
    return out["removed"], out["evidence"] if evidence else None


def _removed_by_rank(frame: pl.DataFrame, policy: SelectPolicy, col: str | None, null: pl.Expr, null_removed: pl.Expr,
                  resolved: pl.DataFrame) -> tuple[pl.Expr, pl.Expr]:
    """Kept: the rows at or before their group's cutoff in the rule's order."""
    cands = ordered(frame, policy)
    keep = np.zeros(frame.height, dtype=bool)
    if cands.height:
        cut = cands.select("g").join(resolved.select("g", "cut1", "cut2"), on="g", how="left", maintain_order="left")
        keep[cands["_r"].to_numpy()] = cutoffs.kept(cands["c1"].to_numpy(), cands["c2"].to_numpy(),
                                                    cut["cut1"].fill_null(0).to_numpy(),
                                                    cut["cut2"].fill_null(0).to_numpy())
    descending = _descending(policy)
    cutoff = (cutoffs.decode_float(int(resolved["cut1"][0]), descending)
              if col is not None and resolved.height and 0 < resolved["budget"][0] < resolved["count"][0] else None)
    budget = int(resolved["budget"][0]) if resolved.height else 0
    kept_rows = pl.lit(pl.Series(keep))
    if policy.kind in ("top", "keep_hard", "keep_easy"):
        removed = pl.when(null).then(null_removed).otherwise(~kept_rows)
    else:
        removed = ~kept_rows
    if policy.kind == "quota":
        why = pl.struct(policy=pl.lit(reason(policy)), group=pl.concat_str([pl.col(b).cast(pl.String)
                                                                          for b in policy.by], separator="/"),
                        per_group=pl.lit(budget))
    else:
        key = pl.col(col) if col is not None else None
        if key is not None and frame.schema[col] == pl.String:
            key = key.str.len_chars()
        why = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col),
                        value=key.cast(pl.Float64) if key is not None else pl.lit(None, pl.Float64),
                        cutoff=pl.lit(cutoff, pl.Float64), budget=pl.lit(budget),
                        descending=pl.lit(descending))
    return removed, why


def _removed_by_k_center(frame: pl.DataFrame, policy: SelectPolicy, col: str, null: pl.Expr, null_removed: pl.Expr,
                    resolved: pl.DataFrame, picks: pl.DataFrame) -> tuple[pl.Expr, pl.Expr]:
    """Kept: the picks; a removed row's evidence is its cosine distance to the nearest pick."""
    picked = frame["id"].is_in(picks["id"].implode()) if picks is not None and picks.height else pl.Series(
        [False] * frame.height)
    distance = np.full(frame.height, np.nan)
    cands = frame.with_row_index("_r").filter(pl.col(ALIVE) & pl.col(col).is_not_null())
    if cands.height and picks is not None and picks.height:
        centers = picks["embedding"].to_numpy().reshape(picks.height, -1).astype(np.float32)
        emb = _embeddings(cands, col)
        nearest = np.concatenate([(emb[i:i + 4096] @ centers.T).max(axis=1) for i in range(0, emb.shape[0], 4096)])
        distance[cands["_r"].to_numpy()] = np.maximum(1.0 - nearest, 0.0)
    removed = pl.when(null).then(null_removed).otherwise(~pl.lit(picked))
    why = pl.struct(policy=pl.lit(reason(policy)), column=pl.lit(col), budget=pl.lit(int(resolved["budget"][0])),
                    candidates=pl.lit(int(resolved["count"][0])),
                    cover_distance=pl.lit(pl.Series(distance)).fill_nan(None).round(4))
    return removed, why
