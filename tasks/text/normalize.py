"""The one text normalizer. Two stages compare text "up to formatting", and they differ in one explicit choice:

- `punctuation="drop"` (exact dedup): "don't" == "dont"; what counts as the same document.
- `punctuation="space"` (decontamination n-grams): "x+y" -> "x y"; punctuation separates words, so a benchmark item
  rewritten with other punctuation still gives the same word n-grams.

Both: NFKC, lowercase, whitespace collapsed and stripped. Numbers stay distinct tokens.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

Punctuation = Literal["drop", "space"]
_PUNCT = r"[^\w\s]"


def normalize(text: pl.Expr, punctuation: Punctuation) -> pl.Expr:
    replacement = "" if punctuation == "drop" else " "
    return (text.str.normalize("NFKC").str.to_lowercase().str.replace_all(_PUNCT, replacement)
            .str.replace_all(r"\s+", " ").str.strip_chars())
