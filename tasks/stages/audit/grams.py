"""Words and phrases of a text column, as polars expressions: what every audit check counts."""

from __future__ import annotations

import polars as pl

ROW = "_arow"
BUCKETS = 1 << 18  # hashed vocabulary of the content model: 262,144 buckets x labels, whatever the corpus size
STOPWORDS = frozenset(
    "a about after all also an and any are as at be been but by can could did do does for from had has have he her "
    "him his how i if in into is it its me more my no not now of on one or our out said she so some than that the "
    "their them then there these they this to up us was we were what when which who will with would you your unto "
    "shall thee thou thy ye hath".split())


def words(column: str) -> pl.Expr:
    """Normalized words: lower case, letters and digits only (punctuation, case and spacing cannot hide a phrase)."""
    return pl.col(column).fill_null("").str.to_lowercase().str.extract_all(r"[a-z0-9]+")


def tokens(frame: pl.DataFrame, column: str, keep: list[str]) -> pl.DataFrame:
    """One row per word, in order: `keep` columns, ROW (the row's position) and `w`."""
    return (frame.select(*keep, w=words(column)).with_row_index(ROW).explode("w").drop_nulls("w"))


def phrases(frame: pl.DataFrame, column: str, max_words: int, keep: list[str]) -> pl.DataFrame:
    """Each row's distinct phrases of 1..max_words consecutive words (`gram`), with the `keep` columns; phrases made
    of stop words only say nothing and are left out."""
    tok = tokens(frame, column, keep).with_columns(stop=pl.col("w").is_in(list(STOPWORDS)))
    parts = [tok.filter(~pl.col("stop")).select(ROW, gram=pl.col("w"))]
    gram, all_stop = pl.col("w"), pl.col("stop")
    for k in range(1, max_words):
        same_row = pl.col(ROW).shift(-k) == pl.col(ROW)
        gram = pl.concat_str([gram, pl.col("w").shift(-k)], separator=" ")
        all_stop = all_stop & pl.col("stop").shift(-k)
        wanted = same_row.fill_null(False) & ~all_stop.fill_null(True)
        parts.append(tok.select(ROW, gram=gram, wanted=wanted).filter("wanted").drop("wanted"))
    rows = frame.select(*keep).with_row_index(ROW)
    return pl.concat(parts).unique().join(rows, on=ROW).drop(ROW)


def buckets(column: str) -> pl.Expr:
    """A word's bucket of the hashed vocabulary."""
    return (pl.col(column).hash(seed=5) % BUCKETS).cast(pl.Int64)
