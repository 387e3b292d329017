"""The benchmark index: every item's normalized word n-grams as 64-bit hashes, sorted for `searchsorted`.

Text is normalized with punctuation as word breaks (tasks/text/normalize.py); a document's n-grams are hashed in one
numpy pass over the whole batch (a rolling polynomial hash over per-word polars hashes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from schemas.config import BenchmarkConfig, DecontaminateConfig
from tasks.runtime.externals import ExternalInputs
from tasks.runtime.stage import ROW
from tasks.stages.decontaminate.benchmarks import BenchmarkError, load_benchmark, resolved_benchmarks
from tasks.text.normalize import normalize

WORD_SEED = 0xC0FFEE
P = np.uint64(0x100000001B3)  # FNV prime: an odd 64-bit multiplier for the rolling hash


def normalized(text: pl.Expr) -> pl.Expr:
    """NFKC, lowercase, punctuation and symbols -> space, whitespace collapsed. Numbers stay distinct tokens."""
    return normalize(text, punctuation="space")


def word_hashes(df: pl.DataFrame, text_col: str) -> pl.DataFrame:
    """(ROW, pos, h) for every normalized word, plus each row's word count."""
    return (df.select(ROW, w=normalized(pl.col(text_col)).str.split(" "))
            .explode("w").filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
            .with_columns(h=pl.col("w").hash(seed=WORD_SEED), pos=pl.int_range(pl.len()).over(ROW))
            .drop("w"))


def ngram_hashes(words: pl.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start position, hash) of every n-gram: a rolling polynomial hash over the flat word-hash array,
    kept where the window stays inside one row."""
    rows = words[ROW].to_numpy()
    h = words["h"].to_numpy().astype(np.uint64)
    pos = words["pos"].to_numpy()
    if h.size < n:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint64)
    m = h.size - n + 1
    g = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g = g * P + h[k:k + m]
    valid = rows[: m] == rows[n - 1:]
    return rows[:m][valid], pos[:m][valid], g[valid]


@dataclass
class Index:
    n: int
    benchmarks: list[BenchmarkConfig]
    items: pl.DataFrame       # item, benchmark, item_id, line, words
    fields: pl.DataFrame      # item, field, words
    grams: pl.DataFrame       # gram, item, field, ipos (the n-gram's word position in the field), sorted by gram
    keys: np.ndarray          # sorted unique grams, for searchsorted
    short: pl.DataFrame       # item, field, pattern (" normalized text "), words: items shorter than n words
    field_names: list[str]
    templated: int            # n-grams ignored as template text

    def counts(self) -> dict[str, int]:
        return dict(self.items.group_by("benchmark").agg(pl.len()).sort("benchmark").iter_rows())


def build_index(cfg: DecontaminateConfig, inputs: ExternalInputs | None = None) -> Index:
    benchmarks = resolved_benchmarks(cfg)
    n = cfg.ngram
    frame = pl.concat([load_benchmark(b, inputs) for b in benchmarks])
    dup = frame.group_by("benchmark", "item_id", "field").agg(pl.len()).filter(pl.col("len") > 1)
    if dup.height:
        bench, item = dup.row(0)[:2]
        raise BenchmarkError(f"benchmark {bench}: item id {item!r} appears more than once")
    field_names = sorted(frame["field"].unique().to_list())
    frame = (frame.with_columns(item=pl.struct("benchmark", "item_id").rank("dense").cast(pl.UInt32) - 1,
                                field=pl.col("field").replace_strict(field_names, list(range(len(field_names))),
                                                                     return_dtype=pl.UInt8))
             .with_row_index(ROW))
    words = word_hashes(frame, "text")
    n_words = words.group_by(ROW).agg(pl.len().alias("words"))
    frame = frame.join(n_words, on=ROW, how="left", maintain_order="left").with_columns(
        pl.col("words").fill_null(0).cast(pl.Int64))
    items = frame.group_by("item", "benchmark", "item_id", "line").agg(pl.col("words").sum()).sort("item")
    too_short = items.filter(pl.col("words") < cfg.min_item_words)
    if too_short.height:
        bench, item_id, line, nw = too_short.select("benchmark", "item_id", "line", "words").row(0)
        path = next(b.path for b in benchmarks if b.name == bench)
        raise BenchmarkError(
            f"benchmark {bench}: {path}:{line}: item {item_id} has {nw} word(s) after normalization; at least "
            f"{cfg.min_item_words} are needed (decontaminate.min_item_words), or it would match everywhere "
            f"({too_short.height} such item(s))")
    rows, ipos, g = ngram_hashes(words, n)
    row_map = frame.select(ROW, "item", "field")
    grams = (pl.DataFrame({ROW: rows, "ipos": ipos.astype(np.int64), "gram": g}).join(row_map, on=ROW).drop(ROW)
             .unique())
    spread = grams.group_by("gram").agg(pl.col("item").n_unique().alias("n_items"))
    template = spread.filter(pl.col("n_items") > cfg.max_items_per_ngram)["gram"]
    grams = grams.filter(~pl.col("gram").is_in(template.implode())).sort("gram", "item", "field", "ipos")
    fields = frame.select("item", "field", "words")
    short_items = items.filter(pl.col("words") < n)["item"]
    short = (frame.filter(pl.col("item").is_in(short_items.implode()) & (pl.col("words") > 0))
             .select("item", "field", "words", pattern=pl.lit(" ") + normalized(pl.col("text")) + pl.lit(" ")))
    return Index(n=n, benchmarks=benchmarks, items=items, fields=fields, grams=grams,
                 keys=np.unique(grams["gram"].to_numpy()), short=short, field_names=field_names,
                 templated=template.len())


