"""Words and phrases of a text column, as polars expressions: what every audit check counts."""

from __future__ import annotations

import polars as pl

ROW = "_arow"
BUCKETS = 1 << 18  # hashed vocabulary of the content model: 262,144 buckets x labels, whatever the corpus size
STOPWORDS = frozenset({
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "him", "his", "how", "i", "if",
    "in", "into", "is", "it", "its", "me", "more", "my", "no", "not", "now", "of", "on", "one", "or", "our", "out",
    "said", "she", "so", "some", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "to", "up", "us", "was", "we", "were", "what", "when", "which", "who", "will", "with", "would", "you", "your",
    "unto", "shall", "thee", "thou", "thy", "ye", "hath"})


URL_WORDS = frozenset({"www", "http", "https", "com", "org", "net", "io"})


def words(column: str, lower: bool = True) -> pl.Expr:
    """Normalized words: letters and digits only, apostrophes dropped ("McDonald's" is "mcdonalds", as in its
    URL), lower case unless asked (punctuation, case and spacing cannot hide a phrase)."""
    text = pl.col(column).fill_null("").str.replace_all(r"['’]", "")
    return (text.str.to_lowercase() if lower else text).str.extract_all(r"[A-Za-z0-9]+")


def tokens(frame: pl.DataFrame, column: str, keep: list[str], cased: bool = False) -> pl.DataFrame:
    """One row per word, in order: `keep` columns, ROW (the row's position) and `w`; with `cased`, also `cap`
    (the word was written with a capital)."""
    found = frame.select(*keep, w=words(column, lower=not cased)).with_row_index(ROW).explode("w").drop_nulls("w")
    if cased:
        found = found.with_columns(cap=pl.col("w").str.contains(r"^[A-Z]"), w=pl.col("w").str.to_lowercase())
    return found


def phrases(frame: pl.DataFrame, column: str, max_words: int, keep: list[str], context: bool = False,
            entity: bool = False) -> pl.DataFrame:
    """Each row's distinct phrases of 1..max_words consecutive words (`gram`), with the `keep` columns; phrases made
    of stop words only say nothing and are left out. With `context`, also the words just before and after the
    phrase's first occurrence in the row (`left`, `right`; null at the text's edge). With `entity`, whether that
    occurrence reads as a name or an address (`entity`: every word capitalized, or a URL's word in it)."""
    tok = tokens(frame, column, keep, cased=entity).with_columns(stop=pl.col("w").is_in(list(STOPWORDS)))
    if entity:  # a word of an address: a URL's own word, or next to one ("mcdonalds" in www.mcdonalds.com)
        is_url, same = pl.col("w").is_in(list(URL_WORDS)), pl.col(ROW)
        tok = tok.with_columns(url=is_url | ((same.shift(1) == same) & is_url.shift(1)).fill_null(False)
                               | ((same.shift(-1) == same) & is_url.shift(-1)).fill_null(False))
    parts = []
    gram, all_stop = pl.col("w"), pl.col("stop")
    all_cap, any_url = (pl.col("cap"), pl.col("url")) if entity else (None, None)
    for k in range(max_words):
        if k:
            gram = pl.concat_str([gram, pl.col("w").shift(-k)], separator=" ")
            all_stop = all_stop & pl.col("stop").shift(-k)
            if entity:
                all_cap, any_url = all_cap & pl.col("cap").shift(-k), any_url | pl.col("url").shift(-k)
        wanted = (pl.col(ROW).shift(-k) == pl.col(ROW)).fill_null(False) & ~all_stop.fill_null(True)
        cols = {"gram": gram, "wanted": wanted}
        if entity:
            cols["entity"] = (all_cap | any_url).fill_null(False)
        if context:
            cols["left"] = pl.when(pl.col(ROW).shift(1) == pl.col(ROW)).then(pl.col("w").shift(1))
            cols["right"] = pl.when(pl.col(ROW).shift(-k - 1) == pl.col(ROW)).then(pl.col("w").shift(-k - 1))
        parts.append(tok.select(ROW, **cols).filter("wanted").drop("wanted"))
    found = pl.concat(parts).unique([ROW, "gram"], keep="first", maintain_order=True)
    if not keep:  # (a select of no columns has no rows to join)
        return found.drop(ROW)
    return found.join(frame.select(*keep).with_row_index(ROW), on=ROW).drop(ROW)


def buckets(column: str) -> pl.Expr:
    """A word's bucket of the hashed vocabulary."""
    return (pl.col(column).hash(seed=5) % BUCKETS).cast(pl.Int64)
