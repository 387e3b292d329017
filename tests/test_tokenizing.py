"""Tokenizing only a long text's leading part gives the whole text's first tokens (ids and offsets), with the real
packaged tokenizers, on real documents and on text built to break a cut; tokenizers a cut could change are left
whole."""

from __future__ import annotations

import random
from pydoc_data.topics import topics

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from schemas.config import ScoreConfig
from tasks.models import loading, perplexity, tokenizing

CFG = ScoreConfig(device="cpu")
PIECES = ["word", "Wörd", "e\u0301", "\u00a8", "a\u0308", "日本語", "中文字", "😀", "it's", "they're", "3.14", "12345",
          "...", "--", "—", "[SEP]", "[CLS]", "<|im_start|>", "<|endoftext|>", "\x00", "\x1c", "\u00a0", "\u2003",
          "\u200b", "\u0085", "İ", "ß", "ﬁ", "¼", "http://x.org/a?b=c", "snake_case", "CamelCase", "$$", "'s", "🙂👍🏽"]
SEPARATORS = [" ", " ", " ", "", "\n", "  ", "\t", "\r\n", "\n\n", " \n", "\u00a0", "\u3000"]


def hostile(n: int, seed: int = 5) -> list[str]:
    """Texts of the pieces a tokenizer treats specially (combining marks, CJK, control and odd space characters,
    special tokens written in the text, contractions), joined by every kind of whitespace."""
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) + rng.choice(SEPARATORS) for _ in range(rng.randint(5, 500)))
            for _ in range(n)]


def tokenizer(which: str):
    folder = loading.embedder_folder(CFG.embedder) if which == "embedder" else loading.lm_folder(CFG.lm)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("which", ["embedder", "lm"])
@pytest.mark.parametrize("max_length", [8, 24, 256])
def test_a_cut_long_text_tokenizes_to_the_whole_texts_first_tokens(which, max_length):
    tok = tokenizer(which)
    texts = list(topics.values()) + hostile(600) + ["x" * 5000, " " * 3000 + "tail", "a " * 4000]
    options = {"truncation": True, "max_length": max_length, "return_offsets_mapping": True,
               "add_special_tokens": which == "embedder"}
    whole = tok(texts, **options)
    tokenized = []

    def tokenize(part: list[str]):
        tokenized.append(part)
        return tok(part, **options)

    assert tokenizing.cuttable(tok)
    got = tokenizing.encode(texts, max_length, tokenize, tokenizing.cuttable(tok))
    assert got["input_ids"] == whole["input_ids"]
    assert got["offset_mapping"] == whole["offset_mapping"]  # the LM's bits per character come from these
    from_rust = tokenizing.encoder(tok, max_length, which == "embedder", chars=True)(texts)
    assert from_rust["input_ids"] == whole["input_ids"]
    assert from_rust["chars"] == [x[-1][1] if x else 0 for x in whole["offset_mapping"]]
    _, was_cut = tokenizing.cut(texts, max_length)
    assert was_cut.size >= 80  # the cut was taken, often
    assert len(tokenized[0][0]) < len(texts[0]) or len(texts[0]) <= max_length * tokenizing.CHARS_PER_TOKEN
    if max_length == 8:  # whitespace-heavy texts whose cut fell short of 8 tokens: tokenized again whole
        assert len(tokenized) == 2 and 0 < len(tokenized[1]) < was_cut.size
        assert all(t in texts for t in tokenized[1])


def test_the_cut_is_at_a_space_after_a_word_and_never_in_the_first_half():
    assert tokenizing.boundary("alpha beta gamma", 12) == 10  # "alpha beta| gamma"
    assert tokenizing.boundary("alpha beta  gamma", 11) == 10  # a second space follows a space: the first one
    assert tokenizing.boundary("alpha\u00a0beta", 11) == -1  # a no-break space is not a cut
    assert tokenizing.boundary("a" * 40 + " b", 40) == 40
    assert tokenizing.boundary("a " + "b" * 40, 40) == -1  # only in the first half: tokenized whole
    texts, was_cut = tokenizing.cut(["short", "word " * 100, "y" * 1000], 4)
    assert texts[0] == "short" and texts[1] == "word " * 5 + "word" and texts[2] == "y" * 1000
    assert was_cut.tolist() == [1]


def wrapped(model, normalizer=None, pre=None, **kwargs) -> PreTrainedTokenizerFast:
    backend = Tokenizer(model)
    if normalizer is not None:
        backend.normalizer = normalizer
    if pre is not None:
        backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def test_tokenizers_a_cut_could_change_are_tokenized_whole():
    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    wordpiece = models.WordPiece(vocab, unk_token="[UNK]")
    assert tokenizing.cuttable(wrapped(wordpiece, normalizers.Lowercase(), pre_tokenizers.Whitespace()))
    assert tokenizing.cuttable(wrapped(wordpiece, None, pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)])))
    refused = {
        "a regex split (Llama 3's joins punctuation to the newlines after it)": wrapped(
            wordpiece, None, pre_tokenizers.Split(r" ?[^\s\p{L}\p{N}]+[\r\n]*", "isolated")),
        "SentencePiece's metaspace": wrapped(wordpiece, None, pre_tokenizers.Metaspace()),
        "no whitespace split": wrapped(wordpiece, None, pre_tokenizers.Digits()),
        "no pre-tokenizer": wrapped(wordpiece),
        "byte level without its regex": wrapped(wordpiece, None, pre_tokenizers.ByteLevel(use_regex=False)),
        "a normalizer that rewrites text": wrapped(wordpiece, normalizers.Replace(" ", ""),
                                                   pre_tokenizers.Whitespace()),
        "truncation on the left": wrapped(wordpiece, None, pre_tokenizers.Whitespace(), truncation_side="left"),
    }
    with_space = wrapped(wordpiece, None, pre_tokenizers.Whitespace())
    with_space.add_tokens(["a b"])
    refused["an added token holding a space"] = with_space
    assert [name for name, tok in refused.items() if tokenizing.cuttable(tok)] == []
    seen = []
    texts = ["a b " * 500]
    tokenizing.encode(texts, 4, lambda part: seen.append(part) or {"input_ids": [[1]] * len(part)}, False)
    assert seen == [texts]


def test_perplexity_of_long_documents_is_unchanged_by_the_cut(monkeypatch):
    lm, tok = loading.load_lm(CFG.lm, loading.device("cpu"))
    docs = sorted(topics.values(), key=len)[-12:]  # the longest: 10-62 KB
    cfg = CFG.lm.model_copy(update={"max_tokens": 48})
    cut_nll, cut_bpc = perplexity.nll(docs, lm, tok, cfg, loading.device("cpu"))
    monkeypatch.setattr(tokenizing, "CHARS_PER_TOKEN", 10**9)  # no text is long enough to cut
    whole_nll, whole_bpc = perplexity.nll(docs, lm, tok, cfg, loading.device("cpu"))
    assert np.array_equal(cut_nll, whole_nll) and np.array_equal(cut_bpc, whole_bpc)
