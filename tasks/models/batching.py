"""Length-sorted token-budget batches, collated in a background thread while the model computes, results put back
in input order, and a batch that runs out of device memory split in half and retried.

Padding waste is what a fixed batch size costs: with documents sorted by length, every batch holds documents of
nearly one length, and its size is whatever fits `budget` tokens (rows x longest row).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# Token budget of one batch when config leaves it unset: (CPU, CUDA). On a CPU larger batches only add padding
# and memory; on an H200 the CPU budgets left the GPU idle between small kernels (peak 1.4 GiB; bench/gpu_check.py).
DEFAULT_BUDGET = {"embedder": (16_384, 262_144), "lm": (8_192, 131_072)}


def budget(configured: int | None, model: str, dev) -> int:
    cpu, cuda = DEFAULT_BUDGET[model]
    return configured or (cuda if getattr(dev, "type", "cpu") == "cuda" else cpu)


def token_budget_batches(lengths: np.ndarray, budget: int, max_rows: int = 1024) -> list[np.ndarray]:
    """Indices of the documents in each batch, longest first (so an out-of-memory shows up on the first batch)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < order.size:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, budget // longest))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (rows, longest) token ids and attention mask, as numpy (collation, off the model's thread)."""
    longest = max((len(x) for x in ids), default=1) or 1
    out = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return out, mask


def collator(ids: list[list[int]], pad_id: int, pin: bool) -> Callable[[np.ndarray], tuple]:
    """Batch indices -> padded (token ids, attention mask) tensors, pinned for a fast copy to a CUDA device."""
    import torch

    def collate(idx: np.ndarray) -> tuple:
        tokens, mask = pad([ids[i] for i in idx], pad_id)
        tokens, mask = torch.from_numpy(tokens), torch.from_numpy(mask)
        return (tokens.pin_memory(), mask.pin_memory()) if pin else (tokens, mask)

    return collate


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run(batches: list[np.ndarray], collate: Callable[[np.ndarray], Any], compute: Callable[[Any], np.ndarray],
        n: int, width: int | None = None, dtype=np.float32) -> np.ndarray:
    """Run `compute` on every batch (collated ahead by a background thread) and scatter the results into input
    order. `compute` returns one row (or value) per document of its batch."""
    out = np.zeros((n, width), dtype=dtype) if width else np.zeros(n, dtype=np.float64)
    ready: queue.Queue = queue.Queue(maxsize=2)

    def produce() -> None:
        try:
            for idx in batches:
                ready.put((idx, collate(idx)))
        except BaseException as exc:  # surfaced in the consumer
            ready.put((None, exc))
            return
        ready.put((None, None))

    threading.Thread(target=produce, name="collate", daemon=True).start()
    while True:
        idx, item = ready.get()
        if idx is None:
            if item is not None:
                raise item
            return out
        out[idx] = _compute_halving(idx, item, collate, compute)


def _compute_halving(idx: np.ndarray, item: Any, collate, compute) -> np.ndarray:
    try:
        return compute(item)
    except Exception as exc:
        if not _is_oom(exc) or idx.size == 1:
            raise
        import torch

        torch.cuda.empty_cache()
        half = idx.size // 2
        return np.concatenate([_compute_halving(part, collate(part), collate, compute)
                               for part in (idx[:half], idx[half:])])


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


CHUNK = 65536  # rows converted or gathered at a time
# texts tokenized at a time by the embedder and the LM: a fast tokenizer's encodings of a whole shard (40,000 pages of
# 1.3 KB) held 3 GB more than its embeddings; sorted by length within 8,192 texts, batches pad as little
TEXTS_AT_ONCE = 8192


def float32_chunks(emb: np.ndarray):
    """(start, float32 rows) over `emb` (float16 or float32), CHUNK rows at a time, so no step needs a float32 copy
    of every embedding (1M x 384: 1.5 GB on top of the float16 768 MB)."""
    for i in range(0, emb.shape[0], CHUNK):
        yield i, np.ascontiguousarray(emb[i:i + CHUNK], dtype=np.float32)


def index_chunks(rows: np.ndarray):
    """(positions, row indices) of `rows`, CHUNK at a time: the proxy classifier's forward passes."""
    for i in range(0, rows.size, CHUNK):
        yield slice(i, i + CHUNK), rows[i:i + CHUNK]
