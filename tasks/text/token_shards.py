"""Token shards: a published part's documents as token ids a trainer reads with `numpy.memmap`.

Per part, three files (the nanoGPT layout, plus an index and the rows):
  part-NNNNN.bin         token ids, little-endian uint16 (vocabularies up to 65,536) or uint32, every document
                         followed by the EOS id; with `seq_len` the last sequence is padded with EOS to the length
  part-NNNNN.idx         uint64 offsets into .bin, one per document and one past the end: document i is
                         tokens[idx[i]:idx[i+1]], its EOS included
  part-NNNNN.docs.parquet  the documents in .bin order: id, source, tokens (its count, EOS included)

Reading one back: `np.memmap("part-00000.bin", dtype=np.uint16)`, `np.fromfile("part-00000.idx", np.uint64)`; with
`seq_len`, `.reshape(-1, seq_len)` gives the packed training rows.

Encoding is Hugging Face `tokenizers` in batches (`encode_batch_fast`: Rust threads, no offsets computed), without
the tokenizer's own special tokens: a document is its text's ids and one EOS.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

BATCH = 1024  # documents handed to the tokenizer at once


class TokenizerError(ValueError):
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


def encode(texts: pl.Series, tokenizer, eos: int, dtype: np.dtype, order: np.ndarray, seq_len: int = 0
           ) -> Encoded:
    """The documents' ids concatenated in `order`, EOS after each; with `seq_len`, padded with EOS to a multiple
    of it (the padding is counted, never a document's tokens cut)."""
    texts = texts.gather(order) if len(order) else texts.clear()
    lengths = np.empty(len(texts), dtype=np.int64)
    chunks: list[np.ndarray] = []
    for start in range(0, len(texts), BATCH):
        batch = texts.slice(start, BATCH).fill_null("").to_list()
        ids = [e.ids for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False)]
        sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(sizes.sum()))
        ends = np.cumsum(sizes + 1) - 1  # where each document's EOS goes
        chunk = np.empty(flat.size + len(ids), dtype=dtype)
        text_at = np.ones(chunk.size, dtype=bool)
        text_at[ends] = False
        chunk[text_at], chunk[ends] = flat, eos
        lengths[start:start + len(ids)] = sizes + 1
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
