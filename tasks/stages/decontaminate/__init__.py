"""Decontaminate: find benchmark items inside training documents by normalized word n-grams.

Method (GPT-3, Brown et al. 2020, appendix C; Lee et al. 2022): text is NFKC-normalized, lowercased, punctuation
replaced by spaces and whitespace collapsed; every run of `ngram` words is hashed to 64 bits. The benchmark side is
an index of sorted unique hashes (numpy), built in well under a second for thousands of items. A document's n-grams
are hashed in one numpy pass over the whole batch (a rolling polynomial hash over per-word polars hashes) and looked
up with one `searchsorted`; only the few hits are joined back to items. Per (document, item) we measure coverage
(distinct item n-grams present / item n-grams), per indexed field and for the whole item, so a leaked question
without its answer still counts, and the longest contiguous matched span. Items shorter than `ngram` words are
matched as whole normalized strings (Aho-Corasick over the batch). N-grams shared by many items are template text
("Let's think step by step", docstring boilerplate) and are ignored.

Character offsets and redaction need the original text's word positions; they are computed in Python for the
matched documents only, which a healthy corpus keeps to a fraction of a percent (the contract stops a run above 5%).
"""

from __future__ import annotations

import orjson
import polars as pl

from schemas.benchmarks import BUILTINS
from schemas.config import DecontaminateConfig
from schemas.record import CANONICAL
from tasks.runtime import edits
from tasks.runtime.externals import ExternalInputs
from tasks.runtime.stage import ROW, Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.decontaminate import benchmarks
from tasks.stages.decontaminate.benchmarks import BenchmarkError, builtin_path, resolved_benchmarks
from tasks.stages.decontaminate.index import Index, build_index
from tasks.stages.decontaminate.matches import find_matches, word_offsets
from tasks.stages.decontaminate.redact import redact, spans_for_redaction

__all__ = ["STAGE", "BenchmarkError", "Index", "build_index", "decontaminate", "redact"]

# ------------------------------------------------------------------------------------------------------ the stage

ADDS = {
    "contam_benchmark": pl.String(),
    "contam_item": pl.String(),
    "contam_coverage": pl.Float64(),
    "contam_span_words": pl.Int64(),
    "contam_predates_release": pl.Boolean(),
    "contam_action": pl.String(),
}


def load_index(params: DecontaminateConfig, inputs: ExternalInputs | None = None) -> Index:
    """The stage's setup: the benchmark index, built once per worker process from the benchmark files the runtime
    read (with the run's storage options, so a benchmark on S3 uses the configured credentials)."""
    return build_index(params, inputs)


_POLICY_RANK = {"drop": 0, "redact": 1, "flag": 2}  # the strictest policy among a document's hits decides


def _labelled_matches(df: pl.DataFrame, matches: pl.DataFrame, index: Index) -> pl.DataFrame:
    """Matches with their benchmark, item, field name, policy and the temporal evidence, best first per document."""
    policies = {b.name: b.policy for b in index.benchmarks}
    released = {b.name: b.released_at for b in index.benchmarks}
    return (matches.join(index.items.select("item", "benchmark", "item_id"), on="item")
            .with_columns(field=pl.col("best_field").replace_strict(list(range(len(index.field_names))),
                                                                    index.field_names, return_dtype=pl.String))
            .join(df.select(ROW, "timestamp"), on=ROW)
            .with_columns(policy=pl.col("benchmark").replace_strict(policies, return_dtype=pl.String),
                          released=pl.col("benchmark").replace_strict(released, default=None,
                                                                      return_dtype=pl.Date))
            .with_columns(predates=pl.col("timestamp").dt.date() < pl.col("released"))
            .sort(ROW, "coverage", "item", descending=[False, True, False]))


def _evidence(hit: dict, offsets: list[tuple[int, int]]) -> dict:
    ok = hit["word_end"] < len(offsets)
    return {"benchmark": hit["benchmark"], "item_id": hit["item_id"], "policy": hit["policy"],
            "coverage": round(hit["coverage"], 4), "coverage_item": round(hit["coverage_item"], 4),
            "best_field": hit["field"], "span_words": hit["span_words"],
            "char_start": offsets[hit["word_start"]][0] if ok else None,
            "char_end": offsets[hit["word_end"]][1] if ok else None,
            "predates_release": hit["predates"],
            "released_at": hit["released"].isoformat() if hit["released"] else None}


def _decide_document(text: str, hits: list[dict], params: DecontaminateConfig) -> dict:
    """What happens to one matched document: dropped, redacted (new text), redact_dropped or flagged."""
    offsets = word_offsets(text)
    top = min(hits, key=lambda h: (_POLICY_RANK[h["policy"]], -h["coverage"]))
    decision = {"top": top, "evidence": [_evidence(h, offsets) for h in hits], "text": None}
    if top["policy"] == "redact":
        ranges = [(sp["word_start"], sp["word_end"]) for h in hits if h["policy"] == "redact" for sp in h["spans"]]
        spans = spans_for_redaction(offsets, ranges)
        new_text, cuts = redact(text, spans, params) if spans is not None else (None, 0)
        decision.update(text=new_text, cuts=cuts, action="redacted" if new_text else "redact_dropped")
        removed = 1 - len(new_text) / len(text) if new_text else 1.0
        if new_text and removed > params.redact_max_removed_fraction:  # a fragment: rejected, not published
            decision.update(action="redact_too_much", removed_fraction=round(removed, 4))
    else:
        decision["action"] = "dropped" if top["policy"] == "drop" else "flagged"
    return decision


REDACT_RULE = "decontaminate.redact"


def _decisions_frame(decisions: dict[int, dict], params: DecontaminateConfig) -> pl.DataFrame:
    return pl.DataFrame(
        [{ROW: r, "contam_benchmark": ",".join(sorted({e["benchmark"] for e in d["evidence"]})),
          "contam_item": d["top"]["item_id"], "contam_coverage": d["top"]["coverage"],
          "contam_span_words": d["top"]["span_words"], "contam_predates_release": d["top"]["predates"],
          "contam_action": d["action"], "new_text": d["text"],
          "reason": f"contamination.{d['top']['benchmark']}" if d["action"] in ("dropped", "redact_dropped")
          else edits.bound_reason(REDACT_RULE) if d["action"] == "redact_too_much" else None,
          "evidence": orjson.dumps({"action": d["action"], "cuts": d.get("cuts"), "matches": d["evidence"],
                                    **({"rule": REDACT_RULE, "removed_fraction": d["removed_fraction"],
                                        "max_removed_fraction": params.redact_max_removed_fraction}
                                       if d["action"] == "redact_too_much" else {})}).decode()}
         for r, d in decisions.items()],
        schema={ROW: pl.UInt32, **ADDS, "new_text": pl.String, "reason": pl.String, "evidence": pl.String})


def decontaminate(batch: pl.DataFrame, params: DecontaminateConfig, index: Index | None = None) -> StageResult:
    """Match, then drop / redact / flag. `index` is what `load_index` returns (built here when not given).

    Python runs per matched document only (offsets, redaction): a small fraction of a batch."""
    index = index if index is not None else load_index(params)
    df = batch.with_row_index(ROW)
    matches = find_matches(df, index, params)
    if matches.height == 0:
        kept = batch.with_columns([pl.lit(None, dtype).alias(c) for c, dtype in ADDS.items()])
        return StageResult(kept=kept, rejected=batch.clear().with_columns(
            reason=pl.lit(None, pl.String), evidence=pl.lit(None, pl.String)))
    m = _labelled_matches(df, matches, index)
    matched_docs = df.filter(pl.col(ROW).is_in(m[ROW].unique().implode()))
    texts = dict(matched_docs.select(ROW, "text").iter_rows())
    ids = dict(matched_docs.select(ROW, "id").iter_rows())
    decisions = {row: _decide_document(texts[row], matched.to_dicts(), params)
                 for (row,), matched in m.group_by(ROW, maintain_order=True)}
    hits = [{"id": ids[row], "benchmark": h["benchmark"], "item_id": h["item_id"]}  # one per (document, item)
            for (row,), matched in m.group_by(ROW, maintain_order=True) for h in matched.to_dicts()]
    docs = [{"id": ids[row], "benchmark": d["top"]["benchmark"], "action": d["action"]} for row, d in decisions.items()]
    joined = df.join(_decisions_frame(decisions, params), on=ROW, how="left", maintain_order="left")
    rejected = (joined.filter(pl.col("reason").is_not_null())
                .select(*batch.columns, *ADDS, "reason", "evidence"))
    kept = (joined.filter(pl.col("reason").is_null())
            .with_columns(text=pl.when(pl.col("contam_action") == "redacted").then(pl.col("new_text"))
                          .otherwise(pl.col("text")),
                          contam_action=pl.when(pl.col("contam_action").is_in(["redacted", "flagged"]))
                          .then(pl.col("contam_action")))
            .select(*batch.columns, *ADDS))
    before = batch.select("id", _arrived="text").join(
        kept.filter(pl.col("contam_action") == "redacted").select("id", "text"), on="id")
    ledger = edits.record(before.join(joined.select("id", "evidence"), on="id"), REDACT_RULE, "_arrived", "text",
                          pl.col("evidence").str.json_path_match("$.cuts").cast(pl.Int64), "span")
    return StageResult(kept=kept, rejected=rejected, stats=Stats(records={"hits": hits, "docs": docs}),
                       edits=ledger)


def _docs_hit(stats: Stats) -> dict[str, int]:
    """Documents each benchmark matched (a document matching two benchmarks counts for both)."""
    pairs = {(h["id"], h["benchmark"]) for h in stats.records.get("hits", [])}
    out: dict[str, int] = {}
    for _, benchmark in pairs:
        out[benchmark] = out.get(benchmark, 0) + 1
    return out


def rate_checks(stats: Stats, rows_in: int, params: DecontaminateConfig) -> list[dict]:
    """Per benchmark: the share of documents it hit, with the warning level and the ceiling."""
    hit = _docs_hit(stats)
    return [{"name": f"contamination.{b.name}", "count": hit.get(b.name, 0),
             "rate": (hit.get(b.name, 0) / rows_in) if rows_in else 0.0,
             "warn": params.warn_rate, "max": params.max_rate} for b in resolved_benchmarks(params)]


def summarize(stats: Stats, params: DecontaminateConfig) -> dict:
    """Per benchmark for the manifest: distinct items found, docs hit, dropped / redacted / flagged."""
    hit = _docs_hit(stats)
    out = {}
    for b in resolved_benchmarks(params):
        items = sorted({h["item_id"] for h in stats.records.get("hits", []) if h["benchmark"] == b.name})
        actions = [d["action"] for d in stats.records.get("docs", []) if d["benchmark"] == b.name]
        out[b.name] = {"policy": b.policy, "items_found": len(items), "items": items[:100],
                       "docs_hit": hit.get(b.name, 0),
                       "docs_dropped": sum(actions.count(a) for a in ("dropped", "redact_dropped", "redact_too_much")),
                       "docs_redacted": actions.count("redacted"), "docs_flagged": actions.count("flagged")}
    return out


def benchmark_listing(cfg: DecontaminateConfig) -> list[dict]:
    index = load_index(cfg)
    counts = index.counts()
    return [{"name": b.name, "items": counts.get(b.name, 0), "fields": b.fields, "policy": b.policy,
             "released_at": b.released_at.isoformat() if b.released_at else None, "path": b.path,
             "builtin": b.name in BUILTINS and b.path == builtin_path(b.name)}
            for b in index.benchmarks]


STAGE = Stage(
    name="decontaminate",
    fn=decontaminate,
    params=lambda cfg: cfg.decontaminate,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "timestamp": CANONICAL["timestamp"]},
    adds=ADDS,
    suite="decontaminate",
    setup=load_index,
    externals=benchmarks.files,
    description="benchmark items found by normalized 13-gram coverage and span; drop, redact or flag",
    rate_checks=rate_checks,
    summarize=summarize,
)
