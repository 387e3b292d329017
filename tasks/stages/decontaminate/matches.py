"""Matching documents against the index: coverage per item and field, the longest matched span, word offsets."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import polars as pl

from schemas.config import DecontaminateConfig
from tasks.runtime.stage import ROW
from tasks.stages.decontaminate.index import Index, ngram_hashes, normalized, word_hashes

_WORD = re.compile(r"\w+")


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Character span in `text` of each word of normalized(text). A chunk whose NFKC form differs (ligatures,
    full-width forms) gives each of its words the chunk's span. Used for matched documents only."""
    spans = []
    for m in re.finditer(r"\S+", text):
        chunk = m.group()
        norm = unicodedata.normalize("NFKC", chunk).lower()
        if norm == chunk.lower():
            spans += [(m.start() + w.start(), m.start() + w.end()) for w in _WORD.finditer(chunk)]
        else:
            spans += [(m.start(), m.end())] * len(_WORD.findall(norm))
    return spans


def _ngram_hits(df: pl.DataFrame, index: Index) -> pl.DataFrame:
    """(ROW, item, field, gram, pos) for every document n-gram found in the index."""
    words = word_hashes(df, "text")
    rows, pos, g = ngram_hashes(words, index.n)
    empty = pl.DataFrame(schema={ROW: pl.UInt32, "pos": pl.Int64, "gram": pl.UInt64, "item": pl.UInt32,
                                 "field": pl.UInt8})
    if g.size == 0 or index.keys.size == 0:
        return empty
    at = np.searchsorted(index.keys, g)
    found = index.keys[np.minimum(at, index.keys.size - 1)] == g
    if not found.any():
        return empty
    hits = pl.DataFrame({ROW: rows[found].astype(np.uint32), "pos": pos[found].astype(np.int64),
                         "gram": g[found]})
    return hits.join(index.grams, on="gram")


def _short_hits(df: pl.DataFrame, index: Index) -> pl.DataFrame:
    """(ROW, item, field, words, pos) for items shorter than n words found as whole normalized strings."""
    schema = {ROW: pl.UInt32, "item": pl.UInt32, "field": pl.UInt8, "words": pl.Int64, "pos": pl.Int64}
    if index.short.height == 0:
        return pl.DataFrame(schema=schema)
    padded = df.select(ROW, norm=pl.lit(" ") + normalized(pl.col("text")) + pl.lit(" "))
    patterns = index.short["pattern"].unique().to_list()
    found = (padded.with_columns(m=pl.col("norm").str.extract_many(patterns, overlapping=True))
             .explode("m").drop_nulls("m"))
    if found.height == 0:
        return pl.DataFrame(schema=schema)
    found = found.join(index.short, left_on="m", right_on="pattern").with_columns(
        pos=pl.col("norm").str.find(pl.col("m"), literal=True).cast(pl.Int64))
    # word position of the match: spaces before it in the padded string (the padding's own space included)
    found = found.with_columns(pos=pl.col("norm").str.slice(0, pl.col("pos") + 1).str.count_matches(" ") - 1)
    return found.select(ROW, "item", "field", "words", "pos").unique()


def _runs(positions: pl.DataFrame, keys: list[str], n: int) -> pl.DataFrame:
    """Stretches of continuously covered words per key: matched n-grams starting at most n apart leave no word
    uncovered between them (a break between an item's fields leaves exactly such a gap). word_start, word_end."""
    p = positions.select(*keys, "pos").unique().sort(*keys, "pos")
    p = p.with_columns(run=(pl.col("pos").diff().over(keys).fill_null(n + 1) > n).cum_sum().over(keys))
    return p.group_by(*keys, "run").agg(word_start=pl.col("pos").min(), word_end=pl.col("pos").max() + (n - 1))


def find_matches(df: pl.DataFrame, index: Index, cfg: DecontaminateConfig) -> pl.DataFrame:
    """Per (ROW, item) that is contaminated: coverage (item and best field), longest span, word range.

    Coverage is the share of the item's (or field's) words that lie inside a matched n-gram, so it means the same
    for short and long items: a contiguous 60% of an item is coverage 0.6, whatever n is."""
    n = index.n
    hits = _ngram_hits(df, index)
    out_schema = {ROW: pl.UInt32, "item": pl.UInt32, "coverage": pl.Float64, "coverage_item": pl.Float64,
                  "best_field": pl.UInt8, "span_words": pl.Int64, "word_start": pl.Int64, "word_end": pl.Int64,
                  "spans": pl.List(pl.Struct({"word_start": pl.Int64, "word_end": pl.Int64}))}
    parts = []
    if hits.height:
        covered = (hits.select(ROW, "item", "field", "ipos").unique().sort(ROW, "item", "field", "ipos")
                   .with_columns(step=pl.col("ipos").diff().over(ROW, "item", "field").fill_null(n)
                                 .clip(upper_bound=n))
                   .group_by(ROW, "item", "field").agg(covered=pl.col("step").sum())
                   .join(index.fields, on=["item", "field"]))
        best_field = (covered.with_columns(cov=(pl.col("covered") / pl.col("words")).clip(upper_bound=1.0))
                      .sort("cov", "field", descending=[True, False])
                      .group_by(ROW, "item", maintain_order=True).first()
                      .select(ROW, "item", best_field="field", coverage_field="cov"))
        per_item = (covered.group_by(ROW, "item").agg(pl.col("covered").sum())
                    .join(index.items.select("item", "words"), on="item")
                    .with_columns(coverage_item=(pl.col("covered") / pl.col("words")).clip(upper_bound=1.0)))
        runs = _runs(hits.select(ROW, "item", "pos"), [ROW, "item"], n).with_columns(
            span_words=pl.col("word_end") - pl.col("word_start") + 1)
        longest = (runs.sort("span_words", "word_start", descending=[True, False])
                   .group_by(ROW, "item", maintain_order=True)
                   .agg(pl.col("span_words", "word_start", "word_end").first(),
                        spans=pl.struct("word_start", "word_end")))
        long_items = (per_item.join(best_field, on=[ROW, "item"]).join(longest, on=[ROW, "item"])
                      .with_columns(coverage=pl.max_horizontal("coverage_item", "coverage_field"),
                                    span_needed=pl.min_horizontal(pl.lit(cfg.span_words), pl.col("words"))))
        parts.append(long_items.filter((pl.col("coverage") >= cfg.coverage)
                                       | (pl.col("span_words") >= pl.col("span_needed")))
                     .select(list(out_schema)))
    short = _short_hits(df, index)
    if short.height:
        item_words = index.items.select("item", total="words")
        agg = (short.group_by(ROW, "item").agg(pl.col("words").sum().alias("matched"),
                                               pl.col("field").first().alias("best_field"),
                                               pl.col("words").max().alias("span_words"),
                                               pl.col("pos").min().alias("word_start"))
               .join(item_words, on="item")
               .with_columns(coverage_item=(pl.col("matched") / pl.col("total")).clip(upper_bound=1.0),
                             coverage=pl.lit(1.0),
                             word_end=pl.col("word_start") + pl.col("span_words") - 1)
               .with_columns(spans=pl.concat_list(pl.struct("word_start", "word_end"))))
        parts.append(agg.select([pl.col(c).cast(t) for c, t in out_schema.items()]))
    if not parts:
        return pl.DataFrame(schema=out_schema)
    return pl.concat([p.cast(out_schema) for p in parts]).unique([ROW, "item"], keep="first")


