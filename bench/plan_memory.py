"""What the memory benches share: a global stage's plan run as the runner runs it (every step a unit of work on
local storage, two threads), with the process's peak resident memory and seconds per step."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS now, VmHWM the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def run_plan(ctx, stage, source) -> tuple[list, dict, dict[str, float], float]:
    """(apply receipts, plan summary, seconds per step, seconds in all) of `stage` over `source`'s shards."""
    from tasks.runtime import partitioned
    from tasks.runtime.runner import shards_of

    seconds: dict[str, float] = {}
    pool = ThreadPoolExecutor(2)

    def units(step, names, inputs, gen, counts, upstream, published):
        t = time.perf_counter()
        got = list(pool.map(lambda a: partitioned.run_unit(ctx, stage, step.name, a[0], gen, counts, upstream, a[1],
                                                           published), zip(names, inputs, strict=True)))
        seconds[step.name] = time.perf_counter() - t
        return got

    def applied(gen, counts, upstream):
        t = time.perf_counter()
        got = list(pool.map(lambda s: partitioned.apply_shard(ctx, stage, s[0], s[1], gen, counts, upstream),
                            shards_of(source)))
        seconds["apply"] = time.perf_counter() - t
        return got

    started = time.perf_counter()
    receipts, _, summary = partitioned.execute(ctx, stage, source, units, applied)
    return receipts, summary, seconds, time.perf_counter() - started
