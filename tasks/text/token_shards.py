"""Token shards: a published part's documents as token ids a trainer reads with `numpy.memmap`.

Per part, three files (the nanoGPT layout, plus an index and the rows):
  part-NNNNN.bin         token ids, little-endian uint16 (vocabularies up to 65,536) or uint32, every document
                         followed by the EOS id; with `seq_len` the last sequence is padded with EOS to the length
  part-NNNNN.idx         uint64 offsets into .bin, one per document and one past the end: document i is
                         tokens[idx[i]:idx[i+1]], its EOS included
  part-NNNNN.docs.parquet  the documents in .bin order: id, source, tokens (its count, EOS included)

Reading one back: `np.memmap("part-00000.bin", dtype=np.uint16)`, `np.fromfile("part-00000.idx", np.uint64)`; with
`seq_len`, `.reshape(-1, seq_len)` gives the packed training rows.

A document is its text's ids and one EOS, without the tokenizer's own special tokens. The ids are those of Hugging
Face `tokenizers` for the tokenizer.json; a plain byte-level BPE (GPT-2's pre-tokenizer, no normalizer: SmolLM2's,
GPT-2's, most trained with `tokenizers`) is encoded by tiktoken's byte-pair encoder loaded with the same vocabulary
and merges, about twice as fast, and only after it gives the same ids as `tokenizers` on a probe of awkward text
(digits, whitespace runs, control characters, special tokens, scripts, emoji); any other tokenizer, or one that
disagrees, is encoded by `tokenizers` (`encode_batch_fast`: Rust threads, no offsets computed).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from schemas.errors import BadInput

BATCH = 1024  # documents handed to the tokenizer at once
# GPT-2's pre-tokenizer, as `tokenizers`' ByteLevel(use_regex=True) applies it
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Text on which the two engines must agree before tiktoken is used: what differs between BPE implementations
PROBE = ["In the beginning God created the heaven and the earth.", "it's we'll they're I'm you'd 'quoted'",
         "12345 3.14159 1,000,000 v2.0 x1y2", "a  1", "  two  spaces\t\ttabs \n\n\r\n  newlines   ", " ", "",
         "Ünïcödé façade naïve Ωμέγα Привет мир", "日本語のテキストと한국어 텍스트", "العربية ٣٤٥ עברית",
         "ﬁ ﬂ ligatures ½ ²", "emoji 🙂👍🏽👨‍👩‍👧 flags 🇫🇷", "control\x04chars\x1d and \x00nul",
         "<|endoftext|>inside<|endoftext|> text", "x\u00a0nbsp\u2009thin\u200bzero-width",
         "https://example.com/a?b=c&d=e#f", "def f(x):\n    return x**2  # sq", "a" * 61, "---===***!!!???...,,,;;;",
         "MiXeD CaSe WoRdS"]
log = logging.getLogger(__name__)


class TokenizerError(BadInput):
    """The configured tokenizer is missing, changed, or has no EOS token."""


@dataclass(frozen=True)
class Encoded:
    tokens: np.ndarray  # uint16/uint32 ids, documents in `order`, each ending in EOS
    offsets: np.ndarray  # uint64, len(order) + 1
    order: np.ndarray  # row positions of the frame, in the order they were written
    padding: int  # EOS ids added after the last document to fill its sequence


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str, sha256: str | None):
    """A `tokenizers` tokenizer from a tokenizer.json, checked against its pinned sha256 when one is given."""
    from tokenizers import Tokenizer

    file = Path(path)
    if not file.is_file():
        raise TokenizerError(f"tokenizer file {file} does not exist")
    data = file.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerError(f"tokenizer file {file} has sha256 {hashlib.sha256(data).hexdigest()}, not the pinned "
                             f"{sha256}: refusing to tokenize with a file that changed")
    return Tokenizer.from_str(data.decode("utf-8"))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes (what a byte-level vocabulary is written in), back to the bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(c): b for b, c in zip(printable + others, printable + [256 + i for i in range(len(others))],
                                       strict=True)}


class TokenizersBPE:
    """Hugging Face `tokenizers` itself: any tokenizer.json."""

    engine = "tokenizers"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def encode(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(the documents' ids concatenated, int64; each document's count)."""
        return _flat(self.ids(texts.to_list()))


class TiktokenBPE:
    """A byte-level BPE tokenizer.json run by tiktoken. tiktoken merges by the rank of the merged bytes; ranks here
    are the merges' order (single bytes first), and a table maps each rank to the tokenizer's id.

    A byte the vocabulary lacks (SmolLM2 lacks six ASCII control characters) is dropped by `tokenizers` before it
    merges, so its neighbours can merge across it, where tiktoken keeps it between them: a document holding one
    is encoded by `tokenizers` instead (rare: such characters are control codes)."""

    engine = "tiktoken"

    def __init__(self, spec: dict, reference: TokenizersBPE):
        import tiktoken

        to_byte = _byte_decoder()

        def as_bytes(token: str) -> bytes | None:
            return bytes(to_byte[ch] for ch in token) if all(ch in to_byte for ch in token) else None

        ranks = {bytes([b]): b for b in range(256)}
        for merge in spec["model"]["merges"]:
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            merged = as_bytes(left + right)
            if merged is None:
                raise TokenizerError(f"merge {left!r} + {right!r} is not written in byte-level characters")
            ranks.setdefault(merged, len(ranks))
        added = spec.get("added_tokens") or []
        specials = {t["content"]: len(ranks) + k for k, t in enumerate(added)}
        self._id_of_rank = np.full(len(ranks) + len(specials), -1, dtype=np.int64)
        for token, token_id in spec["model"]["vocab"].items():
            rank = ranks.get(as_bytes(token))
            if rank is not None:
                self._id_of_rank[rank] = token_id
        for token in added:
            self._id_of_rank[specials[token["content"]]] = token["id"]
        lacking = "".join(_chars_of_byte(b) for b in range(256) if self._id_of_rank[b] < 0)
        self._lacking = f"[{lacking}]" if lacking else None  # a polars (Rust) regex class
        known = np.flatnonzero(self._id_of_rank >= 0)
        self._rank_of_id = np.zeros(int(self._id_of_rank.max()) + 1, dtype=np.uint32)
        self._rank_of_id[self._id_of_rank[known]] = known
        self._reference = reference
        self._encoding = tiktoken.Encoding("sluice-bpe", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                                           special_tokens=specials)
        self._allowed = self._encoding.special_tokens_set
        self._workers = max(1, len(os.sched_getaffinity(0)))
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tiktoken")

    def encode(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(the documents' ids concatenated, int64; each document's count)."""
        odd = texts.str.contains(self._lacking).to_numpy() if self._lacking else None
        if odd is None or not odd.any():
            ranks = self._ranks(texts.to_list())
        else:
            ranks = [np.zeros(0, dtype=np.uint32)] * texts.len()
            plain = np.flatnonzero(~odd)
            for i, found in zip(plain, self._ranks(texts.gather(plain).to_list()), strict=True):
                ranks[i] = found
            for i, ids in zip(np.flatnonzero(odd), self._reference.ids(texts.filter(odd).to_list()), strict=True):
                ranks[i] = self._rank_of_id[np.asarray(ids, dtype=np.int64)]
        sizes = np.fromiter(map(len, ranks), dtype=np.int64, count=len(ranks))
        flat = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.uint32)
        return self._id_of_rank[flat], sizes

    def _ranks(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ranks as a uint32 array (tiktoken's buffer: no Python int per token), in threads: tiktoken
        lets go of the GIL while it encodes."""
        step = max(1, -(-len(texts) // (4 * self._workers)))
        runs = self._pool.map(self._ranks_of_run, [texts[i:i + step] for i in range(0, len(texts), step)])
        return [found for run in runs for found in run]

    def _ranks_of_run(self, texts: list[str]) -> list[np.ndarray]:
        encode, allowed = self._encoding._core_bpe.encode_to_tiktoken_buffer, self._allowed
        return [np.frombuffer(encode(text, allowed), dtype=np.uint32) for text in texts]

    @staticmethod
    def fits(spec: dict) -> bool:
        """Whether the tokenizer.json is a BPE that tiktoken computes the same way: byte-level pieces split by
        GPT-2's pattern, no normalizer, no dropout, no word affixes, added tokens matched as plain strings."""
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        return (model.get("type") == "BPE" and not model.get("dropout") and not model.get("byte_fallback")
                and not model.get("ignore_merges") and not model.get("continuing_subword_prefix")
                and not model.get("end_of_word_suffix") and spec.get("normalizer") is None
                and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
                and all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word")) for t in
                        spec.get("added_tokens") or []))


def _chars_of_byte(b: int) -> str:
    """A regex class body (Rust syntax) for the characters whose UTF-8 form holds byte b ("" for bytes UTF-8 never
    uses)."""
    if b < 0x80:
        return f"\\x{{{b:x}}}"
    if b < 0xC2 or b > 0xF4:
        if b >= 0xC0:
            return ""
        raise TokenizerError(f"the vocabulary lacks the UTF-8 continuation byte {b:#x}")
    bits, width = (b & 0x1F, 6) if b < 0xE0 else (b & 0x0F, 12) if b < 0xF0 else (b & 0x07, 18)
    low = max(bits << width, 0x80 if width == 6 else 0x800 if width == 12 else 0x10000)
    return f"\\x{{{low:x}}}-\\x{{{min((bits + 1 << width) - 1, 0x10FFFF):x}}}"


def _flat(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(sizes.sum())), sizes


@functools.lru_cache(maxsize=4)
def encoder_for(tokenizer) -> TiktokenBPE | TokenizersBPE:
    """The fastest engine that gives `tokenizer`'s ids: tiktoken when the tokenizer fits it and agrees on PROBE."""
    reference = TokenizersBPE(tokenizer)
    spec = json.loads(tokenizer.to_str())
    if not TiktokenBPE.fits(spec):
        return reference
    try:
        fast = TiktokenBPE(spec, reference)
    except TokenizerError as err:
        log.warning("not encoding with tiktoken: %s", err)
        return reference
    want, got = reference.encode(pl.Series(PROBE)), fast.encode(pl.Series(PROBE))
    if not (np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])):
        log.warning("tiktoken disagrees with tokenizers on this tokenizer's probe text; encoding with tokenizers")
        return reference
    return fast


def eos_id(tokenizer, name: str | None = None) -> int:
    """The id of `name`, or of the first end-of-text token the vocabulary has."""
    for candidate in [name] if name else ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]"]:
        found = tokenizer.token_to_id(candidate)
        if found is not None:
            return int(found)
    raise TokenizerError(f"the tokenizer has no end-of-text token {name or '(<|endoftext|>, </s>, <eos>, ...)'}; "
                         "name one with publish.tokens.eos_token")


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def order_of(n: int, seed: int | None, salt: int) -> np.ndarray:
    """The documents' order in the shard: as published, or shuffled by `seed` (salted by the part, so parts
    differ and a part re-tokenized on resume is the same)."""
    if seed is None:
        return np.arange(n)
    return np.random.default_rng([seed, salt]).permutation(n)


def encode(texts: pl.Series, tokenizer, eos: int, dtype: np.dtype, order: np.ndarray, seq_len: int = 0,
           encoder: TiktokenBPE | TokenizersBPE | None = None) -> Encoded:
    """The documents' ids concatenated in `order`, EOS after each; with `seq_len`, padded with EOS to a multiple
    of it (the padding is counted, never a document's tokens cut). `encoder`: the engine (default: the fastest
    that gives `tokenizer`'s ids)."""
    texts = texts.gather(order) if len(order) else texts.clear()
    lengths = np.empty(len(texts), dtype=np.int64)
    chunks: list[np.ndarray] = []
    encoder = encoder or encoder_for(tokenizer)
    for start in range(0, len(texts), BATCH):
        flat, sizes = encoder.encode(texts.slice(start, BATCH).fill_null(""))
        ends = np.cumsum(sizes + 1) - 1  # where each document's EOS goes
        chunk = np.empty(flat.size + len(sizes), dtype=dtype)
        text_at = np.ones(chunk.size, dtype=bool)
        text_at[ends] = False
        chunk[text_at], chunk[ends] = flat, eos
        lengths[start:start + len(sizes)] = sizes + 1
        chunks.append(chunk)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    offsets = np.zeros(len(texts) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    padding = 0
    if seq_len and tokens.size % seq_len:
        padding = seq_len - tokens.size % seq_len
        tokens = np.concatenate([tokens, np.full(padding, eos, dtype=dtype)])
    return Encoded(tokens, offsets, order, padding)


def decode(tokens: np.ndarray, offsets: np.ndarray, tokenizer, eos: int) -> list[str]:
    """The documents back from a shard (each without its EOS): what the round-trip test compares."""
    return [tokenizer.decode(tokens[int(a):int(b) - 1].tolist(), skip_special_tokens=False)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
