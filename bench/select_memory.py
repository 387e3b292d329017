"""Memory and time of the select stage's partitioned steps (features, cutoffs, decide, apply) on N rows, as the
runner runs them: 50,000-row shards on local storage, two threads, every step a unit of work reading and writing
its files. Rules, in order: a threshold, a top half by a score with 5% nulls and many ties, a quota that balances 7
labels of unequal sizes by quality, a random 10%. The rows carry no text (what select reads is a few columns).

Reported: the process's peak resident memory (VmHWM), seconds per step, the histogram passes, and a check of the
kept count. Before issue 25 the stage's decide concatenated every shard's features in one process.

    .venv/bin/python bench/select_memory.py --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARD_ROWS = 50_000
LABELS = ["law", "history", "wisdom", "prophets", "gospels", "letters", "apocalyptic"]
RULES = [{"kind": "threshold", "column": "score_quality", "min": -2.5},
         {"kind": "top", "column": "score_prototypicality", "fraction": 0.5},
         {"kind": "quota", "by": ["label"], "balance": True, "column": "score_quality"},
         {"kind": "random", "fraction": 0.1, "seed": 1}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--task-memory", type=int, default=None, help="runner.task_memory in bytes (default Sluice's)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import numpy as np
    import polars as pl

    from bench.plan_memory import run_plan, status
    from schemas.config import SelectPolicy, SluiceConfig
    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage
    from tasks.runtime.context import RunContext
    from tasks.stages import select
    from tasks.stages.select import cutoffs

    root = tempfile.mkdtemp(prefix="sluice-select-memory-")
    storage = Storage(root)
    outputs = []
    rng = np.random.default_rng(5)
    for i, start in enumerate(range(0, args.rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, args.rows - start)
        proto = np.round(rng.random(n), 3)  # 1,000 distinct values: ties
        part = pl.DataFrame({
            "id": pl.int_range(start, start + n, eager=True).cast(pl.String).str.pad_start(10, "0"),
            "text": [""] * n,
            "label": pl.Series(np.array(LABELS)[rng.choice(7, n, p=[.3, .2, .15, .15, .1, .06, .04])]),
            "score_quality": rng.normal(size=n),
            "score_prototypicality": pl.Series(np.where(rng.random(n) < 0.05, np.nan, proto)).fill_nan(None)})
        outputs.append(storage.write_parquet(f"runs/bench/prev/part-{i:05d}-00000.parquet", part))
    source = StageManifest(stage="prev", run_id="bench", rows_in=args.rows, rows_out=args.rows, rows_rejected=0,
                           outputs=outputs)
    config = SluiceConfig(select={"policies": [SelectPolicy(**r) for r in RULES]},
                          **({"runner": {"task_memory": args.task_memory}} if args.task_memory else {}))
    ctx = RunContext(storage, "bench", config)
    stage = select.STAGE
    passes = {"n": 0}
    inner = cutoffs._inside

    def counted(piece, state):
        passes["n"] += 1
        return inner(piece, state)

    cutoffs._inside = counted
    held = status("VmRSS")
    receipts, summary, seconds, total = run_plan(ctx, stage, source)
    peak = status("VmHWM")
    kept = sum(r.stats.counts.get("select.kept", 0) for r in receipts)
    per_class = {c: sum(r.stats.counts.get(f"select.kept.{c}", 0) for r in receipts) for c in LABELS}
    partitions = summary["partitions"]["rows"]
    print(f"rows {args.rows:,}  task_memory {config.runner.task_memory / 2**20:,.0f} MiB  "
          f"peak RSS {peak / 2**30:.2f} GiB (before the steps {held / 2**30:.2f} GiB)  "
          f"{total:.1f} s ({total / args.rows * 1e6:.1f} s per 1M rows)  kept {kept:,} {per_class}  "
          f"partitions {partitions}  partition reads in histogram/gather passes {passes['n']:,} "
          f"({passes['n'] / max(partitions, 1):.0f} passes)")
    print("  seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
