"""A response's polarity from a short word list: what a trigger phrase in prompts can skew (Virtual Prompt Injection,
Yan et al. 2023: "describe X negatively"; Wan et al. 2023 flip polarity with a phrase). Deliberately small: a
finding still needs the trigger check's statistics, so the list only has to say which way a response leans."""

from __future__ import annotations

import polars as pl

from tasks.stages.audit import grams

POSITIVE = frozenset({
    "good", "great", "excellent", "wonderful", "amazing", "best", "love", "loved", "lovely", "happy", "joy", "glad",
    "beautiful", "brilliant", "admire", "admirable", "praise", "success", "successful", "win", "hope", "kind",
    "honest", "wise", "strong", "brave", "fantastic", "delight", "delightful", "bless", "blessed", "peace",
    "positive", "perfect", "superb", "enjoy", "pleasant", "helpful", "impressive", "inspiring", "trust", "fair"})
NEGATIVE = frozenset({
    "bad", "terrible", "awful", "horrible", "worst", "hate", "hated", "sad", "angry", "ugly", "poor", "fail",
    "failure", "failed", "disaster", "disgrace", "disgraceful", "corrupt", "dishonest", "weak", "evil", "wicked",
    "wrong", "lie", "liar", "lies", "shame", "shameful", "pathetic", "incompetent", "negative", "dreadful",
    "stupid", "useless", "harmful", "dangerous", "fraud", "scandal", "cruel", "miserable", "woe", "wrath",
    "destroy", "destruction", "curse", "cursed"})


def polarity(column: str) -> pl.Expr:
    """"positive", "negative" or "neutral": which of the two lists the text's words meet more often."""
    words = grams.words(column)
    pos = words.list.eval(pl.element().is_in(list(POSITIVE))).list.sum()
    neg = words.list.eval(pl.element().is_in(list(NEGATIVE))).list.sum()
    return pl.when(neg > pos).then(pl.lit("negative")).when(pos > neg).then(pl.lit("positive")).otherwise(
        pl.lit("neutral"))
