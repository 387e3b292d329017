"""Length-sorted token-budget batches, tokenized and collated in background threads while the model computes,
copied to the device on a stream of their own, results put back in input order in one copy, and a batch that runs
out of device memory split in half and retried; `profiled()` times each of those phases.

Padding waste is what a fixed batch size costs: with documents sorted by length, every batch holds documents of
nearly one length, and its size is whatever fits `budget` tokens (rows x longest row).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import chain
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


def pad(ids: list[list[int]], pad_id: int, pin: bool = False, predicted: bool = False) -> tuple:
    """Right-padded (rows, longest) token ids and attention mask as int64 torch tensors, written in place into
    page-locked memory when `pin` (one host copy, not two; torch's caching host allocator reuses the pages). With
    `predicted`, also the flat positions (row * longest + column) whose next token is a real one: what a causal
    LM's loss is taken at, known on the host, so the device never has to say how many there are."""
    import torch

    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    longest = max(int(lengths.max(initial=0)), 1)
    tokens = torch.full((len(ids), longest), pad_id, dtype=torch.int64, pin_memory=pin)
    mask = torch.zeros((len(ids), longest), dtype=torch.int64, pin_memory=pin)
    valid = mask.numpy()
    real = np.arange(longest) < lengths[:, None]
    valid[real] = 1
    tokens.numpy()[real] = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    if not predicted:
        return tokens, mask
    rows, cols = np.nonzero(valid[:, 1:])
    positions = torch.from_numpy(rows * longest + cols)
    return tokens, mask, positions.pin_memory() if pin else positions


def collator(ids: list[list[int]], pad_id: int, pin: bool, predicted: bool = False
             ) -> Callable[[np.ndarray], tuple]:
    """Batch indices -> `pad`'s tensors, pinned for an asynchronous copy to a CUDA device."""

    def collate(idx: np.ndarray) -> tuple:
        return pad([ids[i] for i in idx], pad_id, pin, predicted)

    return collate


@dataclass
class Profile:
    """Seconds per phase of model scoring, summed over batches: `tokenize`, `collate` (padding and pinning, in the
    background thread), `starved` (the model's thread waiting for a collated batch), `copy_in` (host to device),
    `forward` and `copy_out` (the results back to the host, once per call). On CUDA the device phases are timed
    with CUDA events, read once at the end, so profiling adds no synchronization per batch."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: int = 0
    padded_tokens: int = 0
    _events: list = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, dev=None) -> Iterator[None]:
        if getattr(dev, "type", "cpu") == "cuda":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        began = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - began

    def resolve(self) -> dict[str, float]:
        for name, start, end in self._events:
            end.synchronize()
            self.seconds[name] += start.elapsed_time(end) / 1000
        self._events.clear()
        return dict(self.seconds)


_profile: ContextVar[Profile | None] = ContextVar("batching_profile", default=None)


@contextmanager
def profiled() -> Iterator[Profile]:
    """Time the phases of every embedding and perplexity call made inside (bench/score_profile.py, gpu_check)."""
    prof = Profile()
    token = _profile.set(prof)
    try:
        yield prof
    finally:
        _profile.reset(token)
        prof.resolve()


def phase(name: str, dev=None):
    prof = _profile.get()
    return prof.phase(name, dev) if prof is not None else nullcontext()


def count_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> None:
    """Real and padded token counts of a plan (what the profile's padding share is made of)."""
    prof = _profile.get()
    if prof is not None:
        prof.tokens += int(lengths.sum())
        prof.padded_tokens += sum(int(lengths[idx].max()) * idx.size for idx in batches if idx.size)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _Mover:
    """Host -> device copies on a stream of their own, so the next batch's copy overlaps this batch's kernels (the
    compute stream waits for the copy only when it uses the batch); on a CPU, nothing to move."""

    def __init__(self, dev) -> None:
        import torch

        self.dev = dev
        self.stream = torch.cuda.Stream(dev) if getattr(dev, "type", "cpu") == "cuda" else None

    def __call__(self, item: tuple) -> tuple:
        if self.stream is None:
            return item
        import torch

        with torch.cuda.stream(self.stream), phase("copy_in", self.dev):  # the events go on the copy stream
            moved = tuple(t.to(self.dev, non_blocking=True) for t in item)
        compute = torch.cuda.current_stream(self.dev)
        compute.wait_stream(self.stream)
        for t in moved:
            t.record_stream(compute)  # the caching allocator must not reuse its memory before compute is done
        return moved


def run(batches: list[np.ndarray], collate: Callable[[np.ndarray], Any], forward: Callable[[Any], Any], n: int,
        width: int | None = None, dtype=np.float32, dev=None) -> np.ndarray:
    """Run `forward` on every batch (collated ahead by a background thread, copied to `dev` on a side stream) and
    scatter the results into input order. `forward` returns a torch tensor with one row (or value) per document of
    its batch; the results stay on the device until every batch is done, then come back in one copy, so no batch
    waits for the one before it to return."""
    import torch

    ready: queue.Queue = queue.Queue(maxsize=2)
    prof = _profile.get()

    def produce() -> None:
        token = _profile.set(prof)  # a thread starts with an empty context
        try:
            for idx in batches:
                with phase("collate"):
                    item = collate(idx)
                ready.put((idx, item))
        except BaseException as exc:  # surfaced in the consumer
            ready.put((None, exc))
            return
        finally:
            _profile.reset(token)
        ready.put((None, None))

    threading.Thread(target=produce, name="collate", daemon=True).start()
    move = _Mover(dev)
    order, results = [], []
    while True:
        with phase("starved"):
            idx, item = ready.get()
        if idx is None:
            if item is not None:
                raise item
            break
        order.append(idx)
        results.append(_forward_halving(idx, item, collate, forward, move, dev))
    out = np.zeros((n, width), dtype=dtype) if width else np.zeros(n, dtype=np.float64)
    if results:
        with phase("copy_out", dev):
            values = torch.cat(results).cpu().numpy()
        out[np.concatenate(order)] = values
    return out


def _forward_halving(idx: np.ndarray, item: Any, collate, forward, move, dev):
    try:
        moved = move(item)
        with phase("forward", dev):
            return forward(moved)
    except Exception as exc:
        if not _is_oom(exc) or idx.size == 1:
            raise
        import torch

        torch.cuda.empty_cache()
        half = idx.size // 2
        return torch.cat([_forward_halving(part, collate(part), collate, forward, move, dev)
                          for part in (idx[:half], idx[half:])])


def tokenized_ahead(texts: list, tokenize: Callable[[list], Any], score: Callable[[Any], Any]) -> list:
    """`score(tokenize(part))` for every `TEXTS_AT_ONCE` texts, in order, with the next part tokenized in a
    background thread while this one is scored (a fast tokenizer's batch encoding runs in Rust without the GIL),
    so the device does not wait for the tokenizer between parts. Memory: two parts' encodings at most."""
    from concurrent.futures import ThreadPoolExecutor

    parts = list(chunks(texts, TEXTS_AT_ONCE)) or [texts]
    prof = _profile.get()

    def timed(part: list):
        token = _profile.set(prof)
        try:
            with phase("tokenize"):
                return tokenize(part)
        finally:
            _profile.reset(token)

    out = []
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        pending = pool.submit(timed, parts[0])
        for k in range(len(parts)):
            encoded = pending.result()
            if k + 1 < len(parts):
                pending = pool.submit(timed, parts[k + 1])
            out.append(score(encoded))
    return out


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
