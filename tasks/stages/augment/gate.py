"""The gate every synthetic row passes before it joins the data. Each check reuses the stage that owns the method
(the decontaminate matcher, the quality rules, the score stage's LM and embedder, the select stage's proxy
classifier); a row that fails is quarantined as `augment.gate.<check>` with evidence, by the first check it fails:

  empty          nothing usable came back (an empty reply);
  novelty        normalized edit (Indel) similarity to its parent, or to one of the `neighbours` nearest real rows
                 of its slice by embedding, above `max_edit_similarity` (0.5: TestPilot's rule for generated tests);
  duplicate      the same normalized text as a real row or an earlier synthetic row (dedup's normalization);
  contamination  the decontaminate stage's matcher finds a benchmark item in it;
  quality        a quality rule rejects it (the rule is named);
  perplexity     the score stage's LM finds it less likely than `max_perplexity`;
  label          the proxy classifier, trained on real labeled rows, gives its intended label a probability under
                 `min_label_probability` (LLM-written labels drift; "an ineffective strategy" alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import polars_hash as plh
from rapidfuzz.distance import Indel
from rapidfuzz.process import cdist, cpdist

from schemas.record import CANONICAL

CHECKS = ("empty", "novelty", "duplicate", "contamination", "quality", "perplexity", "label", "share_cap")


@dataclass
class GateModels:
    """What the gate's checks need, loaded once by the stage's setup (any may be None: that check is off)."""

    embed: object = None  # texts -> unit vectors (the shared embedder; `remembered`, so a text is embedded once)
    lm: object = None  # the shared LanguageModel (tasks/models/shared.py), for perplexity
    language_model: object = None  # the quality stage's fastText language ID
    benchmark_index: object = None  # the decontaminate stage's index


def remembered(embed, limit: int = 50_000):
    """`embed` that embeds each distinct text once per stage run (the novelty and label checks both embed every
    candidate); at most `limit` vectors are kept (MiniLM: 1.5 KB each)."""
    seen: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        if not texts:
            return embed(texts)  # (0, dim)
        new = list(dict.fromkeys(t for t in texts if t not in seen))
        fresh = dict(zip(new, embed(new), strict=True)) if new else {}
        if len(seen) + len(fresh) <= limit:
            seen.update(fresh)
        return np.stack([fresh[t] if t in fresh else seen[t] for t in texts])

    return cached


def _fail(frame: pl.DataFrame, failed: np.ndarray, check: str, evidence: list[str | None]) -> pl.DataFrame:
    """Mark rows that are still passing and fail `check` (the first failure is the one reported)."""
    mask = pl.Series(failed, dtype=pl.Boolean) & frame["reason"].is_null()
    return frame.with_columns(
        reason=pl.when(mask).then(pl.lit(f"augment.gate.{check}")).otherwise(pl.col("reason")),
        evidence=pl.when(mask).then(pl.Series(evidence, dtype=pl.String)).otherwise(pl.col("evidence")))


def _json(**fields) -> str:
    import orjson

    return orjson.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}).decode()


def novelty(rows: pl.DataFrame, real: pl.DataFrame, models: GateModels, cfg) -> tuple[np.ndarray, list]:
    """Edit similarity to the parent, and to the nearest real rows of the same slice by embedding cosine."""
    texts = rows["text"].fill_null("").to_list()
    to_parent = cpdist(texts, rows["parent_text"].fill_null("").to_list(), scorer=Indel.normalized_similarity,
                       workers=1) if texts else np.zeros(0)
    nearest_sim = np.zeros(len(texts))
    nearest_id: list[str | None] = [None] * len(texts)
    if models.embed is not None and real.height and texts:
        emb, real_emb = models.embed(texts), models.embed(real["text"].to_list())
        k = min(cfg.neighbours, real.height)
        slices = rows["slice"].to_numpy()
        real_slices = real["_slice"].to_numpy()
        cos = emb @ real_emb.T
        cos[slices[:, None] != real_slices[None, :]] = -np.inf  # neighbours within the slice
        near = np.argsort(-cos, axis=1)[:, :k]
        real_texts = real["text"].to_list()
        sims = cdist(texts, real_texts, scorer=Indel.normalized_similarity, workers=1) if k else None
        picked = np.take_along_axis(sims, near, axis=1) if k else np.zeros((len(texts), 0))
        valid = np.take_along_axis(cos, near, axis=1) > -np.inf
        picked = np.where(valid, picked, 0.0)
        best = picked.argmax(1)
        nearest_sim = picked[np.arange(len(texts)), best]
        real_ids = real["id"].to_list()
        nearest_id = [real_ids[near[i, best[i]]] if valid[i, best[i]] else None for i in range(len(texts))]
    worst = np.maximum(to_parent, nearest_sim)
    failed = worst > cfg.max_edit_similarity
    evidence = [_json(parent_similarity=float(p), nearest_id=n, nearest_similarity=float(s),
                      threshold=cfg.max_edit_similarity) for p, n, s in zip(to_parent, nearest_id, nearest_sim,
                                                                            strict=True)]
    return failed, evidence


def text_hash(rows: pl.DataFrame) -> pl.Series:
    """The duplicate check's key: dedup's normalization, hashed as the augment features hash every real row."""
    from tasks.stages.dedup import normalized

    return rows.select(h=normalized(pl.col("text").fill_null("")).hash(seed=0))["h"]


def duplicates(rows: pl.DataFrame, real_dup_ids: pl.Series) -> tuple[np.ndarray, list]:
    """`real_dup_ids`: the candidates whose text hash some real row has (found against every row's hash, a
    partition at a time); an earlier synthetic row with the same text is found here."""
    real_dup = rows["id"].is_in(real_dup_ids.implode()).to_numpy()
    again = ~text_hash(rows).is_first_distinct().to_numpy()
    evidence = [_json(duplicates="a real row") if r else _json(duplicates="an earlier synthetic row") if a else None
                for r, a in zip(real_dup, again, strict=True)]
    return real_dup | again, evidence


def _as_records(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select(id=pl.col("id"), text=pl.col("text").fill_null(""),
                       timestamp=pl.lit(None, CANONICAL["timestamp"]))


def contamination(rows: pl.DataFrame, models: GateModels, params) -> tuple[np.ndarray, list]:
    from tasks.stages.decontaminate import decontaminate

    result = decontaminate(_as_records(rows), params.decontaminate, models.benchmark_index)
    cols = ["id", "contam_benchmark", "contam_item", "contam_coverage"]
    parts = [result.kept.select(cols)] + ([result.rejected.select(cols)] if result.rejected.height else [])
    matched = pl.concat(parts).filter(pl.col("contam_benchmark").is_not_null())  # dropped, redacted, flagged
    found = {i: _json(benchmark=b, item_id=item, coverage=c) for i, b, item, c in matched.iter_rows()}
    ids = rows["id"].to_list()
    return np.array([i in found for i in ids], dtype=bool), [found.get(i) for i in ids]


def quality(rows: pl.DataFrame, models: GateModels, params) -> tuple[np.ndarray, list]:
    from tasks.stages.quality import quality as quality_rules

    result = quality_rules(_as_records(rows), params.quality, models.language_model)
    # the quality stage's own evidence (rule, its test with thresholds, the values it read), not re-encoded
    found = dict(zip(result.rejected["id"], result.rejected["evidence"], strict=True))
    ids = rows["id"].to_list()
    return np.array([i in found for i in ids], dtype=bool), [found.get(i) for i in ids]


def perplexity(rows: pl.DataFrame, models: GateModels, bound: float) -> tuple[np.ndarray, list]:
    losses, _ = models.lm.nll(rows["text"].fill_null("").to_list())
    ppl = np.exp(np.asarray(losses, dtype=np.float64))
    return ppl > bound, [_json(perplexity=float(p), max=bound) for p in ppl]


def label(rows: pl.DataFrame, probabilities, classes: list[str], models: GateModels, minimum: float
          ) -> tuple[np.ndarray, list]:
    """p(intended label) under the proxy; rows with no intended label pass."""
    intended = rows["label"].to_list()
    probs = probabilities(models.embed(rows["text"].fill_null("").to_list()))
    index = {c: i for i, c in enumerate(classes)}
    p = np.array([probs[r, index[c]] if c in index else np.nan for r, c in enumerate(intended)])
    predicted = [classes[i] for i in probs.argmax(1)] if len(classes) else [None] * rows.height
    failed = np.nan_to_num(p, nan=1.0) < minimum
    return failed, [_json(intended=c, probability=float(q), predicted=pr, min=minimum)
                    for c, q, pr in zip(intended, p, predicted, strict=True)]


def share_cap(rows: pl.DataFrame, limits: dict[str, int]) -> tuple[np.ndarray, list]:
    """Per slice, the first `limits[slice]` passing candidates (in request order) are kept: the share cap and the
    run's row budget were spent on that many; later passing candidates are surplus."""
    rank = rows.select(pl.int_range(pl.len()).over("slice"))[:, 0].to_numpy()
    limit = np.array([limits.get(s, 0) for s in rows["slice"].to_list()], dtype=np.int64)
    failed = rank >= limit
    return failed, [_json(slice=s, kept=int(n), detail="the slice already has the rows asked for from earlier "
                          "candidates (share cap and row budget)") if f else None
                    for s, n, f in zip(rows["slice"].to_list(), limit, failed, strict=True)]


def _check(frame: pl.DataFrame, name: str, fn) -> pl.DataFrame:
    """`fn` on the rows still passing; those it fails get `name` and its evidence."""
    alive = frame.filter(pl.col("reason").is_null())
    if not alive.height:
        return frame
    failed, evidence = fn(alive)
    positions = np.flatnonzero(frame["reason"].is_null().to_numpy())
    full_failed = np.zeros(frame.height, dtype=bool)
    full_failed[positions] = failed
    full_evidence = np.full(frame.height, None, dtype=object)
    full_evidence[positions] = evidence
    return _fail(frame, full_failed, name, full_evidence.tolist())


def before_duplicates(rows: pl.DataFrame, real_slice_rows: pl.DataFrame, models: GateModels, params
                      ) -> pl.DataFrame:
    """The checks before `duplicate` (empty, novelty): they need only the slice's real rows."""
    frame = rows.with_columns(reason=pl.lit(None, pl.String), evidence=pl.lit(None, pl.String))
    empty = frame["text"].fill_null("").str.strip_chars().str.len_chars().to_numpy() == 0
    frame = _fail(frame, empty, "empty", [_json(detail="the generator returned no text")] * frame.height)
    return _check(frame, "novelty", lambda r: novelty(r, real_slice_rows, models, params.augment.gate))


def from_duplicates(frame: pl.DataFrame, real_dup_ids: pl.Series, models: GateModels, params, proxy=None,
                    limits: dict[str, int] | None = None) -> pl.DataFrame:
    """`duplicate` and the checks after it, on the rows `before_duplicates` left passing."""
    cfg = params.augment.gate
    frame = _check(frame, "duplicate", lambda r: duplicates(r, real_dup_ids))
    if cfg.decontaminate and models.benchmark_index is not None:
        frame = _check(frame, "contamination", lambda r: contamination(r, models, params))
    if cfg.quality:
        frame = _check(frame, "quality", lambda r: quality(r, models, params))
    if cfg.max_perplexity is not None and models.lm is not None:
        frame = _check(frame, "perplexity", lambda r: perplexity(r, models, cfg.max_perplexity))
    if proxy is not None and models.embed is not None:
        frame = _check(frame, "label", lambda r: label(r, proxy[0], proxy[1], models, cfg.min_label_probability))
    if limits is not None:
        frame = _check(frame, "share_cap", lambda r: share_cap(r, limits))
    return frame


def run(rows: pl.DataFrame, real_slice_rows: pl.DataFrame, real_hashes: pl.Series, models: GateModels, params,
        proxy=None, limits: dict[str, int] | None = None) -> pl.DataFrame:
    """`rows` (id, text, parent_text, slice, label) with `reason`/`evidence` set for those that fail; the checks
    run on the rows still passing, in CHECKS order. `proxy`: (probabilities function, class names) or None.
    `limits`: rows asked per slice; passing candidates beyond them fail `share_cap` (none: no limit). The stage
    runs the two halves apart, with the duplicate check against every row's hash partitioned between them."""
    frame = before_duplicates(rows, real_slice_rows, models, params)
    real_dup_ids = frame.filter(text_hash(frame).is_in(real_hashes.implode()))["id"]
    return from_duplicates(frame, real_dup_ids, models, params, proxy, limits)


def content_sha256() -> pl.Expr:
    return plh.col("text").chash.sha2_256()
