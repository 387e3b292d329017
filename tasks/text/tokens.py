"""Word, line and sentence boundaries, as polars expressions over whole columns.

These reproduce what datatrove's filters see (spaCy's English tokenizer and sentencizer, `str.splitlines`) closely
enough that Sluice's quality rules agree with datatrove's document by document (bench/quality.py).
"""

from __future__ import annotations

import polars as pl

# datatrove.utils.text.PUNCTUATION (ASCII/CJK punctuation + control characters) used by Gopher's "non-symbol word"
PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)
TERMINAL = ".?!。！？．｡…‼⁇⁈⁉"  # the common members of datatrove's TERMINAL_PUNCTUATION
PUNCT_CLASS = "[^" + "".join("\\" + c if c in "\\]^-[" else c for c in sorted(set(PUNCTUATION + TERMINAL))
                                      if c not in "\t\n") + "\\t\\n]"
# spaCy-like English tokens (what datatrove's split_into_words gives): contractions split off, "U.S.", "I." and
# "3.14" kept whole, emoticons like ":]" one token, runs of dots/dashes one token, other punctuation one per char
_CONTRACTION = r"(?i)(\w)(n['’]t|['’](?:s|re|ve|ll|d|m))\b"
# spaCy's English exceptions that keep their period
_ABBREVIATIONS = ("Mr|Mrs|Ms|Dr|St|Jr|Prof|Inc|Ltd|Co|Corp|vs|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|"
                  "Dec|Mt|Gov|Gen|Sen|Rep|Rev|Bros")
_TOKEN = (r"\b(?:" + _ABBREVIATIONS + r")\.|(?i)\b(?:[a-z]\.)+|\d+(?:[.,]\d+)+|n['’]t\b"
          r"|['’](?:s|re|ve|ll|d|m)\b|[:;]-?[()\[\]]|\.{2,}|-{2,}|\w+|[^\w\s]")
ALPHA = r"[\p{Lu}\p{Ll}\p{Lt}\p{Lm}\p{Lo}]"
_LINEBREAKS = r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"  # what str.splitlines splits on besides \n
# a sentence ends at a lone "." or a run of "!"/"?" (spaCy's sentencizer: "..." is one token and ends nothing)
# followed by whitespace and the first letter/digit of the next sentence
SENTENCE_END = r"(?:^|[^.])(?:\.|[!?]+)[\"'”’)\]]*\s+[\"'“‘(\[*]*[\p{L}\p{N}]"


def words(text: pl.Expr) -> pl.Expr:
    """English word tokens as spaCy (datatrove's `split_into_words`) makes them, as a list per document."""
    return text.str.replace_all(_CONTRACTION, "$1 $2").str.extract_all(_TOKEN)


def lines(text: pl.Expr) -> pl.Expr:
    """str.splitlines: every line break kind, no trailing empty line after a final break."""
    return text.str.replace_all(_LINEBREAKS, "\n").str.replace(r"\n$", "").str.split("\n")
