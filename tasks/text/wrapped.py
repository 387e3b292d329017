"""Hard-wrapped text: paragraphs broken into lines of a fixed width (plain text, mail, man pages, docstrings, licenses).

Line-level rules (C4's "a line must end in terminal punctuation", FineWeb's share of such lines) assume a line is a
paragraph, as it is in extracted web text. In wrapped text almost every line ends mid-sentence, so those rules cut
or reject it wholesale. Here a row is taken as wrapped when its lines fill up to a common width (the longest line
is 30-120 characters) and at least two full lines, and a quarter of its lines, end mid-sentence; in such a row a
full line (at least `FULL` of the width) continues into the next non-empty line unless that one starts a list item.
The resulting logical lines are what line rules judge; a rewrite still keeps or drops the physical lines, so the
published text keeps its line breaks. A row that is not wrapped has one logical line per physical line, exactly.
"""

from __future__ import annotations

import polars as pl

from tasks.text import tokens

ROW = "_row"  # the positional row index stages work with (tasks/runtime/stage.ROW)
MIN_WIDTH, MAX_WIDTH = 30, 120  # the longest line of a wrapped row (fmt's 75, man's 80, docstrings' 72-99)
FULL = 0.7  # a line at least this share of the row's width was broken by the wrapper, not by the writer
MIN_BROKEN, MIN_BROKEN_SHARE = 2, 0.25  # full lines ending mid-sentence: at least this many, and this share
_BULLET = r"^\s*(?:[-*•+]|\d{1,3}[.)]|\([a-z0-9]{1,3}\))\s"
_ENDS_SENTENCE = "[" + tokens.TERMINAL + r":\"'”’)\]]\s*$"


def physical_lines(df: pl.DataFrame, text: str, detect: bool = True) -> pl.DataFrame:
    """One row per physical line (str.splitlines, as C4 sees them): ROW, li (index), line, and lg, the index of the
    logical line it belongs to, and `wrapped` (its row was recognised as wrapped; never when not `detect`)."""
    lines = df.select(ROW, line=tokens.lines(pl.col(text))).with_columns(
        li=pl.int_ranges(pl.col("line").list.len())).explode("line", "li").drop_nulls("line")
    length = pl.col("line").str.strip_chars_end().str.len_chars()
    nonempty = pl.col("line").str.strip_chars() != ""
    lines = lines.with_columns(width=length.max().over(ROW), length=length, nonempty=nonempty)
    following = pl.col("nonempty").shift(-1).over(ROW).fill_null(False) & ~pl.col("line").shift(-1).over(
        ROW).fill_null("").str.contains(_BULLET)
    full = pl.col("nonempty") & following & (pl.col("length") >= FULL * pl.col("width"))
    broken = full & ~pl.col("line").str.contains(_ENDS_SENTENCE)
    lines = lines.with_columns(full=full, broken=broken)
    per_row = lines.group_by(ROW).agg(
        wrapped=pl.col("width").first().is_between(MIN_WIDTH, MAX_WIDTH)
        & (pl.col("broken").sum() >= MIN_BROKEN)
        & (pl.col("broken").sum() >= MIN_BROKEN_SHARE * pl.col("nonempty").sum()) & pl.lit(detect))
    lines = lines.join(per_row, on=ROW, how="left", maintain_order="left")
    starts = ~(pl.col("wrapped") & pl.col("full").shift(1).over(ROW).fill_null(False))
    return lines.with_columns(lg=starts.cast(pl.Int32).cum_sum().over(ROW) - 1).select(
        ROW, "li", "lg", "line", "wrapped")


def logical_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """ROW, lg, line: the physical lines of each logical line, stripped and joined by a space (a lone physical
    line is itself, unchanged)."""
    return lines.group_by(ROW, "lg", maintain_order=True).agg(
        line=pl.when(pl.len() > 1).then(pl.col("line").str.strip_chars().str.join(" ")).otherwise(
            pl.col("line").first()),
        li=pl.col("li").first())


def reflowed(df: pl.DataFrame, text: str, detect: bool = True) -> pl.Series:
    """The text with each wrapped paragraph on one line; rows not recognised as wrapped come back unchanged."""
    if not detect:
        return df[text]
    lines = physical_lines(df, text)
    wrapped_rows = lines.filter("wrapped").select(ROW).unique()
    if not wrapped_rows.height:
        return df[text]
    joined = (logical_lines(lines.join(wrapped_rows, on=ROW, how="semi"))
              .group_by(ROW, maintain_order=True).agg(_reflowed=pl.col("line").str.join("\n")))
    return (df.select(ROW, text).join(joined, on=ROW, how="left", maintain_order="left")
            .select(pl.coalesce("_reflowed", text).alias(text))[text])
