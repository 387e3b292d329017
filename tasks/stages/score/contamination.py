"""Semantic contamination as a wide net and a second look (Yang et al. 2023, "Rethinking Benchmark and Contamination
for Language Models with Rephrased Samples": embedding similarity alone misses rephrasings; pair its recall with a
stronger judgement of each candidate).

The net: each document's windows against every benchmark item; the `candidates` best items of a document (over its
windows) whose cosine reaches `candidate_cosine`. The second look, on those few pairs only: the cosine of the two
texts with what rewriters change abstracted (names -> "someone", numbers -> "N"; units and words kept), and the
cosine of their questions (the last sentence asking something), abstracted too, and the share of the item's content
words the window holds. A rewrite keeps the problem, its question and most of its words; a look-alike problem on the
same template asks something else, or the same thing about other things.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from tasks.models import nearest

_NUMBER = re.compile(r"(?<![\w])\d+(?:[,.]\d+)*(?:/\d+)?(?![\w])")
_NUMBER_WORD = re.compile(r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
                          r"fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|"
                          r"seventy|eighty|ninety|hundred|thousand|million|half|twice|double|triple)\b", re.I)
# capitalized words that start sentences or questions without being names
_NOT_NAMES = frozenset(
    [
        "A", "An", "The", "If", "In", "On", "At", "How", "What", "Which", "When", "Where", "Who", "Whom", "Whose",
        "Why", "She", "He", "They", "It", "There", "This", "That", "These", "Those", "Each", "Every", "After", "Before",
        "Then", "Her", "His", "Their", "Its", "For", "From", "To", "With", "By", "And", "But", "So", "As", "Of", "Some",
        "All", "Most", "Many", "Much", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
        "Half", "Twice", "Mr", "Mrs", "Ms", "Dr", "I", "We", "You", "Our", "Your", "My", "Also", "Now", "Today",
        "Yesterday", "Tomorrow", "Last", "Next", "First", "Second", "Third", "Monday", "Tuesday", "Wednesday",
        "Thursday", "Friday", "Saturday", "Sunday", "January", "February", "March", "April", "May", "June", "July",
        "August", "September", "October", "November", "December", "Given", "Return", "Write", "Find", "Let", "Suppose",
        "Assume", "Check", "Note", "Example", "Input", "Output", "True", "False", "None"
    ])
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+\b")
_SENTENCE = re.compile(r"(?<!Mr\.)(?<!Mrs\.)(?<!Ms\.)(?<!Dr\.)(?<!St\.)(?<=[.?!])\s+")


_SIGNATURE = re.compile(r"\bdef\s+(\w+)\s*\(([^)]*)\)")


def abstracted(text: str) -> str:
    """The text with what a rewrite changes taken out: numbers and number words -> N, names -> someone, and in code
    the names a `def` line defines (the function, its arguments) -> f, a1, a2, ... wherever they occur."""
    for found in _SIGNATURE.finditer(text):
        args = [a.split(":")[0].split("=")[0].strip().lstrip("*") for a in found.group(2).split(",")]
        names = {found.group(1): "f", **{a: f"a{i}" for i, a in enumerate(args, 1) if a.isidentifier()}}
        text = re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m, names=names: names[m.group(1)], text)
    text = _NUMBER_WORD.sub("N", _NUMBER.sub("N", text))
    return _CAPITALIZED.sub(lambda m: m.group(0) if m.group(0) in _NOT_NAMES else "someone", text)


def question(text: str) -> str:
    """The sentence that asks: the last one ending in '?', else the last sentence."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    asking = [s for s in sentences if s.rstrip().endswith("?")]
    return (asking or sentences or [text])[-1]


# words that carry no content of a problem: kept out of the overlap, so a look-alike on the same template ("how many
# ... does someone have") is not credited for its grammar
_FUNCTION_WORDS = frozenset(re.findall(r"\w+", """
    a an the of to in on at for and or but not no is are was were be been being has have had do does did will would
    can could should how many much what which who whom whose when where why that this these those it its he she
    they them his her hers their him i we you our your my me us with by from as if then than so each every per
    there some all any more less into out up down over after before about also just only"""))
_LOWER_WORD = re.compile(r"[a-z]+")


def content_words(text: str) -> frozenset[str]:
    """The lowercase words of the abstracted text less function words, "N" and "someone"."""
    return frozenset(w for w in _LOWER_WORD.findall(abstracted(text).lower())
                     if w not in _FUNCTION_WORDS and w not in ("n", "someone"))


def overlap(window_texts: list[str], item_words: list[frozenset[str]]) -> np.ndarray:
    """The share of each item's content words found in its candidate window (rows aligned). A rewrite keeps most of
    them (dev: 5th percentile 0.61 for the combined rewrite, 0.62 for synonyms); a look-alike problem on the same
    template shares its grammar and a few topic words (median 0.2)."""
    return np.fromiter((len(content_words(t) & words) / max(1, len(words))
                        for t, words in zip(window_texts, item_words, strict=True)), dtype=np.float64,
                       count=len(window_texts))


def sharing_windows(windows, item_words: list[frozenset[str]], minimum: int, share: float,
                    block: int = 256) -> np.ndarray:
    """Per window of `windows` (tasks/stages/score/semantic.Windows): whether it is a run of sentences holding at
    least `minimum` and at least `share` of one benchmark item's content words; whole-document windows: False.

    The second look's overlap test needs `share` of the item's words in the window, so no window this leaves out
    could pass it. Its raw lowercase words hold every content word of its abstracted text but the "f" that stands
    for a function's name, which counts as found. The `minimum` keeps items of a word or two from passing every
    window. Polars, `block` documents at a time (memory follows the block, not the shard): the sentences' words
    joined to the items holding them, kept per (document, item) where the whole document holds enough, then
    counted per (window, item) over the window's sentences."""
    out = np.zeros(len(windows), dtype=bool)
    runs = np.flatnonzero(~windows.whole)
    if not runs.size or not item_words:
        return out
    vocabulary = pl.DataFrame({"item": np.arange(len(item_words)), "word": [sorted(w) for w in item_words]},
                              schema={"item": pl.Int64, "word": pl.List(pl.String)}).explode("word").drop_nulls()
    needed = pl.DataFrame({"item": np.arange(len(item_words)),
                           "needed": [float(max(minimum, share * len(w) - ("f" in w))) for w in item_words]})
    docs = windows.owner[runs]
    for start in range(int(docs[0]), int(docs[-1]) + 1, block):
        first, stop = np.searchsorted(windows.sentence_owner, [start, start + block])
        mine = runs[(docs >= start) & (docs < start + block)]
        if mine.size:
            out[_sharing_block(windows, mine, int(first), int(stop), vocabulary, needed)] = True
    return out


def _sharing_block(windows, runs: np.ndarray, first: int, stop: int, vocabulary: pl.DataFrame,
                   needed: pl.DataFrame) -> np.ndarray:
    """`sharing_windows` on the windows `runs`, whose sentences are rows first..stop of `windows.sentences`."""
    enough = pl.col("word").n_unique() >= pl.col("needed").first()
    words = (pl.DataFrame({"sentence": np.arange(first, stop), "doc": windows.sentence_owner[first:stop],
                           "text": windows.sentences[first:stop]})
             .select("sentence", "doc", word=pl.col("text").str.to_lowercase().str.extract_all(r"[a-z]+")
                     .list.unique())
             .explode("word").filter(~pl.col("word").is_in(list(_FUNCTION_WORDS))).join(vocabulary, on="word"))
    docs = (words.join(needed, on="item").group_by("doc", "item").agg(enough=enough).filter("enough")
            .select("doc", "item"))
    words = words.join(docs, on=["doc", "item"], how="semi")
    spans = (pl.DataFrame({"window": runs, "doc": windows.owner[runs], "first": windows.first[runs],
                           "count": windows.count[runs]})
             .join(docs.select("doc").unique(), on="doc", how="semi")
             .select("window", sentence=pl.int_ranges("first", pl.col("first") + pl.col("count"))).explode("sentence"))
    return (spans.join(words.select("sentence", "item", "word"), on="sentence").join(needed, on="item")
            .group_by("window", "item").agg(enough=enough).filter("enough")["window"].unique().to_numpy())


def item_questions(texts: list[str], embed) -> np.ndarray:
    """The abstracted question of each benchmark item field, embedded; zero for a field that asks nothing (an
    answer, a solution: its last sentence is no question, so the question test cannot pass on it)."""
    vectors = embed([abstracted(question(t)) for t in texts])
    asks = np.fromiter(("?" in t for t in texts), dtype=bool, count=len(texts))
    vectors[~asks] = 0.0
    return vectors


def candidates(window_emb: np.ndarray, owner: np.ndarray, items: np.ndarray, k: int, floor: float,
               windows: int = 3, device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc, window, item row, cosine): per document, its k best items over its windows at cosine >= floor, each
    with the `windows` windows that came closest to it (a page holding a rewritten item: one window may hold its
    facts, the next its question). Inner products on unit vectors (tasks/models/nearest.py), k items per window."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if items.shape[0] == 0 or window_emb.shape[0] == 0:
        return empty
    kk = min(k, items.shape[0])
    sims, idx = nearest.top_k(window_emb, items, kk, device)
    window = np.repeat(np.arange(window_emb.shape[0]), kk)
    sims, idx = sims.ravel().astype(np.float64), idx.ravel()
    keep = sims >= floor
    window, sims, idx = window[keep], sims[keep], idx[keep]
    if not window.size:
        return empty
    doc = owner[window]
    # per (doc, item): its windows, closest first
    order = np.lexsort((-sims, idx, doc))
    doc, window, idx, sims = doc[order], window[order], idx[order], sims[order]
    pair = np.r_[0, np.cumsum((doc[1:] != doc[:-1]) | (idx[1:] != idx[:-1]))]
    within = np.arange(pair.size) - np.searchsorted(pair, pair)
    # per doc: its k best items, ranked by their closest window
    heads = np.flatnonzero(within == 0)
    by_doc = heads[np.lexsort((-sims[heads], doc[heads]))]
    item_rank = np.empty(pair[-1] + 1, dtype=np.int64)
    item_rank[pair[by_doc]] = np.arange(by_doc.size) - np.searchsorted(doc[by_doc], doc[by_doc])
    pick = np.flatnonzero((within < windows) & (item_rank[pair] < k))
    return doc[pick], window[pick], idx[pick], sims[pick]


def second_look(window_texts: list[str], item_abstract: np.ndarray, item_question: np.ndarray, embed
                ) -> tuple[np.ndarray, np.ndarray]:
    """(abstracted cosine, question cosine) of each candidate window against its item's precomputed vectors
    (rows aligned with `window_texts`)."""
    if not window_texts:
        return np.zeros(0), np.zeros(0)
    texts = [abstracted(t) for t in window_texts] + [abstracted(question(t)) for t in window_texts]
    vectors = embed(texts)
    n = len(window_texts)
    return ((vectors[:n] * item_abstract).sum(1).astype(np.float64),
            (vectors[n:] * item_question).sum(1).astype(np.float64))


def is_code(text):
    """Whether each text (a polars expression or Series) holds a function definition. A code item's docstring asks
    no question, so a code pair (a `def` in the window and in the item) has its own test in `is_hit`."""
    return text.str.contains(r"\bdef\s+\w+\s*\(")


def is_hit(cosine: pl.Expr, abstract: pl.Expr, asked: pl.Expr, shared: pl.Expr, code: pl.Expr, cfg) -> pl.Expr:
    """Close enough on its own, or a candidate whose abstracted text and question both agree with the item and that
    holds enough of the item's content words. For code, whose docstring asks nothing, the abstracted text (function
    and argument names too) must agree at `code_abstract` instead."""
    agrees = ((abstract >= cfg.abstract_cosine) & (asked >= cfg.question_cosine)) | (
        code & (abstract >= cfg.code_abstract))
    second = (cosine >= cfg.candidate_cosine) & agrees & (shared >= cfg.overlap)
    return ((cosine >= cfg.threshold) | second).fill_null(False)


def rule(cfg) -> str:
    return (f"cosine >= {cfg.threshold}, or cosine >= {cfg.candidate_cosine} with abstracted >= "
            f"{cfg.abstract_cosine}, question >= {cfg.question_cosine} and overlap >= {cfg.overlap} (code, a def in "
            f"the window and the item: abstracted >= {cfg.code_abstract} in place of the abstracted and question "
            "tests)")
