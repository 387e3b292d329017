"""Texts to the token ids a model scores: straight from the fast tokenizer's Rust backend, and only the beginning of
a long text, the part its first `max_length` tokens can come from.

The Rust backend, not the transformers wrapper: the wrapper also turns every encoding's attention mask and token type
ids into Python lists, in the calling thread, about 0.4 s per 1.5 M tokens whatever the cores (measured), which caps
one feeder near 3.5 M tokens/s. Here only the ids (and, for the LM, where its kept tokens end) are taken.

Only the beginning: a fast tokenizer truncates after tokenizing the whole text, so a 50 KB page costs 50 KB of
tokenizing for the 256 tokens the embedder keeps. Cut at a word boundary after `max_length * CHARS_PER_TOKEN`
characters, a text's tokens are the whole text's first tokens, for the tokenizers `cuttable` admits: at a space, tab
or newline that follows a non-space character, no pre-token of theirs spans the cut (WordPiece splits at whitespace;
byte-level BPE's regex gives a space to the word after it), and their normalizers work on each side of such a cut
alone. A cut text that comes out shorter than `max_length` tokens may have lost some, so it is tokenized again whole.
Other tokenizers (a custom `Split` regex, SentencePiece's metaspace) tokenize whole texts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from weakref import WeakKeyDictionary

import numpy as np

# The CPython docs run 3.6 characters a token (MiniLM) and 4.1 (SmolLM2); a cut text short of its tokens is
# tokenized again whole, so a margin of 2x costs little where it falls short
CHARS_PER_TOKEN = 8
CUT_AT = (" ", "\n", "\t")
NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "ByteLevel"}  # split at whitespace
PRE_TOKENIZERS = SPLITTERS | {"Digits", "Punctuation"}  # with a splitter: they only split further


def _admitted(part: dict | None, kinds: set[str], key: str) -> bool:
    if part is None:
        return True
    if part["type"] == "Sequence":
        return all(_admitted(p, kinds, key) for p in part[key])
    if part["type"] == "ByteLevel" and key == "pretokenizers":
        return bool(part.get("use_regex", True))
    return part["type"] in kinds


def _kinds(part: dict) -> set[str]:
    return set().union(*map(_kinds, part["pretokenizers"])) if part["type"] == "Sequence" else {part["type"]}


def cuttable(tokenizer) -> bool:
    """Whether a cut at a word boundary keeps this (Hugging Face fast) tokenizer's leading tokens: it truncates on
    the right, its normalizer and pre-tokenizer are of the kinds above and split at whitespace, and no added token
    holds whitespace (one could span the cut)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and _cuttable(json.loads(backend.to_str()), tokenizer)


def _cuttable(spec: dict, tokenizer) -> bool:
    pre = spec.get("pre_tokenizer")
    return (getattr(tokenizer, "truncation_side", "right") == "right"
            and _admitted(spec.get("normalizer"), NORMALIZERS, "normalizers")
            and pre is not None and _admitted(pre, PRE_TOKENIZERS, "pretokenizers") and bool(_kinds(pre) & SPLITTERS)
            and not any(any(c.isspace() for c in added["content"]) for added in spec.get("added_tokens") or ()))


def boundary(text: str, end: int) -> int:
    """The last position in (end / 2, end] where a space, tab or newline follows a non-space character; -1 if none
    (a text with no such place that early is tokenized whole)."""
    low, p = end // 2, end
    while p > low:
        p = max(text.rfind(c, low, p + 1) for c in CUT_AT)
        if p <= low:
            return -1
        if not text[p - 1].isspace():
            return p
        p -= 1
    return -1


def cut(texts: list[str], max_length: int) -> tuple[list[str], np.ndarray]:
    """The texts, those longer than `max_length * CHARS_PER_TOKEN` characters cut at a `boundary`; and which."""
    chars = max_length * CHARS_PER_TOKEN
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    out, was_cut = list(texts), []
    for i in np.flatnonzero(lengths > chars).tolist():  # the long texts only; each cut is a few str.rfind
        p = boundary(texts[i], chars)
        if p > 0:
            out[i] = texts[i][:p]
            was_cut.append(i)
    return out, np.asarray(was_cut, dtype=np.int64)


def encoder(tokenizer, max_length: int, special_tokens: bool = True, chars: bool = False
            ) -> Callable[[list[str]], dict[str, list]]:
    """texts -> {"input_ids": [...]}, truncated at `max_length` tokens as `tokenizer(texts, truncation=True,
    max_length=max_length)` would give them, only the leading part of each long text tokenized where the tokenizer
    is `cuttable`. With `chars`, also "chars": where each text's kept tokens end (its last token's end offset, 0 for
    none), what the LM's bits per character divide by; only that offset is taken (every token's offsets as Python
    tuples held 300 MB per 8,192 texts of 511 tokens). Through the wrapper for a tokenizer that has no backend."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        def through_wrapper(texts: list[str]) -> Mapping[str, list]:
            enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=special_tokens,
                            return_offsets_mapping=chars)
            out = {"input_ids": enc["input_ids"]}
            if chars:
                out["chars"] = [offsets[-1][1] if offsets else 0 for offsets in enc["offset_mapping"]]
            return out

        return lambda texts: encode(texts, max_length, through_wrapper, False)
    backend, can_cut = _truncating(tokenizer, max_length)
    batch = backend.encode_batch if chars else backend.encode_batch_fast  # _fast computes no offsets: 1.1-1.3x

    def whole(texts: list[str]) -> Mapping[str, list]:
        encodings = batch(texts, add_special_tokens=special_tokens)
        out = {"input_ids": [e.ids for e in encodings]}
        if chars:
            out["chars"] = [(e.token_to_chars(len(e.ids) - 1) or (0, 0))[1] if e.ids else 0 for e in encodings]
        return out

    return lambda texts: encode(texts, max_length, whole, can_cut)


_TRUNCATING: WeakKeyDictionary = WeakKeyDictionary()  # tokenizer -> {max_length: (backend copy, cuttable)}


def _truncating(tokenizer, max_length: int):
    """A copy of the tokenizer's Rust backend set to truncate at `max_length` (the wrapper's own backend is left as
    it is), made once per tokenizer and length: copying the LM's tokenizer takes about 0.2 s."""
    from tokenizers import Tokenizer

    made = _TRUNCATING.setdefault(tokenizer, {})
    if max_length not in made:
        spec = tokenizer.backend_tokenizer.to_str()
        backend = Tokenizer.from_str(spec)
        backend.no_padding()
        backend.enable_truncation(max_length)
        made[max_length] = backend, _cuttable(json.loads(spec), tokenizer)
    return made[max_length]


def encode(texts: list[str], max_length: int, tokenize: Callable[[list[str]], Mapping[str, list]],
           cuttable: bool) -> dict[str, list]:
    """`tokenize(texts)` (truncating at `max_length` tokens), the same lists it would give, tokenizing only the
    leading part of each long text when the tokenizer is `cuttable`."""
    if not cuttable:
        return dict(tokenize(texts))
    short, was_cut = cut(texts, max_length)
    encoded = {key: list(values) for key, values in tokenize(short).items()}
    ids = encoded["input_ids"]
    again = [i for i in was_cut.tolist() if len(ids[i]) < max_length]
    if again:
        whole = tokenize([texts[i] for i in again])
        for key, values in encoded.items():
            for i, value in zip(again, whole[key], strict=True):
                values[i] = value
    return encoded
