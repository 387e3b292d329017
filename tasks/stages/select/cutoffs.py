"""The k-th row of every group, in the order a rule ranks rows, over rows streamed piece by piece: what a top-k,
quota or random rule keeps, found without holding the corpus (a radix select over histograms).

A row's place in a rule's order is two unsigned 64-bit codes compared in turn: `c1` from the rule's key (an
order-preserving encoding of a float, flipped for a descending rule; null keys last) and `c2`, the hash of the id
that breaks ties. A rule keeps a row when (c1, c2) <= the cutoff of its group, the codes of the k-th row.

Each pass over the pieces counts, per unresolved group, the rows in its current window of codes in 65,536
buckets (fewer when groups are many: the histograms stay under about 4M cells), and narrows the window to the
bucket holding the k-th row. Once a group's window holds at most `gather` rows, one last pass collects them and
sorts them exactly. Memory: a piece, the histograms, and at most `gather` rows per group; passes: one per 16 bits
of spread in the codes near the cutoff, usually two or three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

MAX = (1 << 64) - 1
SIGN = np.uint64(1 << 63)
GATHER = 200_000
CELLS = 1 << 22


def float_codes(values: pl.Series, descending: bool) -> np.ndarray:
    """Order-preserving uint64 codes of a numeric column (NaN above every number, as polars sorts), nulls last."""
    x = values.cast(pl.Float64).to_numpy()
    null = values.is_null().to_numpy()
    x = np.where(x == 0.0, 0.0, x)  # -0.0 and 0.0 sort as equal
    x = np.where(np.isnan(x), np.nan, x)  # one NaN
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    code = np.where(bits & SIGN, ~bits, bits | SIGN)
    if descending:
        code = ~code
    code[null] = np.uint64(MAX)
    return code


def decode_float(code: int, descending: bool) -> float | None:
    """The value a code stands for (the evidence's cutoff); None for the null code."""
    if code == MAX:
        return None
    c = np.uint64(code)
    if descending:
        c = ~c
    bits = c & ~SIGN if c & SIGN else ~c
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


@dataclass
class _Window:
    need: int  # the k-th row's rank inside the window (1-based)
    count: int  # rows inside the window
    lo: int
    hi: int
    level: int = 0  # 0: narrowing c1; 1: c1 fixed, narrowing c2
    fixed: int = 0


def _state(windows: dict[str, _Window], only: set[str]) -> pl.DataFrame:
    names = sorted(only)
    buckets = max(256, min(1 << 16, CELLS // max(len(names), 1)))
    return pl.DataFrame({
        "g": names,
        "level": [windows[g].level for g in names],
        "fixed": pl.Series([windows[g].fixed for g in names], dtype=pl.UInt64),
        "lo": pl.Series([windows[g].lo for g in names], dtype=pl.UInt64),
        "hi": pl.Series([windows[g].hi for g in names], dtype=pl.UInt64),
        "width": pl.Series([(windows[g].hi - windows[g].lo) // buckets + 1 for g in names], dtype=pl.UInt64),
    })


def _inside(piece: pl.DataFrame, state: pl.DataFrame) -> pl.DataFrame:
    code = pl.when(pl.col("level") == 0).then(pl.col("c1")).otherwise(pl.col("c2"))
    return (piece.join(state, on="g", how="inner")
            .filter(((pl.col("level") == 0) | (pl.col("c1") == pl.col("fixed")))
                    & (code >= pl.col("lo")) & (code <= pl.col("hi")))
            .with_columns(code=code))


def kth(pieces: Callable[[], Iterator[pl.DataFrame]], wanted: dict[str, int], spans: dict[str, tuple[int, int, int]],
        gather: int = GATHER) -> dict[str, tuple[int, int]]:
    """Per group g of `wanted`, the codes (c1, c2) of its wanted[g]-th smallest row (1-based). `pieces()` streams
    frames of columns g (String), c1, c2 (UInt64) anew on each call; `spans[g]` is (rows, min c1, max c1)."""
    windows = {g: _Window(need=k, count=spans[g][0], lo=spans[g][1], hi=spans[g][2]) for g, k in wanted.items()}
    found: dict[str, tuple[int, int]] = {}
    while True:
        narrowing = {g for g, w in windows.items() if g not in found and w.count > gather}
        if not narrowing:
            break
        state = _state(windows, narrowing)
        counts = [_inside(p, state).with_columns(bucket=(pl.col("code") - pl.col("lo")) // pl.col("width"))
                  .group_by("g", "bucket").len() for p in pieces()]
        hist = pl.concat(counts).group_by("g", "bucket").agg(pl.col("len").sum()).sort("g", "bucket")
        widths = dict(zip(state["g"], state["width"].to_list(), strict=True))
        for (g,), h in hist.partition_by("g", as_dict=True).items():
            w = windows[g]
            cum = h["len"].cum_sum().to_numpy()
            at = int(np.searchsorted(cum, w.need))
            bucket, before = int(h["bucket"][at]), int(cum[at - 1]) if at else 0
            w.lo, w.hi = w.lo + bucket * widths[g], min(w.hi, w.lo + (bucket + 1) * widths[g] - 1)
            w.need, w.count = w.need - before, int(h["len"][at])
            if w.lo == w.hi and w.count > gather:
                if w.level == 1:  # every row here has the same codes: that is the cutoff
                    found[g] = (w.fixed, w.lo)
                else:  # one key value holds too many rows: narrow by the tie hash
                    w.level, w.fixed, w.lo, w.hi = 1, w.lo, 0, MAX
    last = {g for g in windows if g not in found}
    if last:
        state = _state(windows, last)
        rows = pl.concat([_inside(p, state).select("g", "c1", "c2") for p in pieces()])
        for (g,), r in rows.sort("g", "c1", "c2").partition_by("g", as_dict=True).items():
            row = r.row(windows[g].need - 1)
            found[g] = (int(row[1]), int(row[2]))
    return found


def kept(c1: np.ndarray, c2: np.ndarray, cut1: np.ndarray, cut2: np.ndarray) -> np.ndarray:
    """Rows at or before their group's cutoff."""
    return (c1 < cut1) | ((c1 == cut1) & (c2 <= cut2))
