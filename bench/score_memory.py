"""Memory and time of the score stage's partitioned steps after the models (fit, assign, semdedup, dynamics, apply)
on N rows x 384 dims of random unit vectors with 7 labels, as the runner runs them: 50,000-row shards on local
storage, two threads, every step a unit of work reading and writing its files. The models' step (embed) is replaced
by one that writes seeded random embeddings to the side shards, so what is measured is what the corpus size costs.

Reported: the process's peak resident memory (VmHWM) and seconds per step. Before issue 25 the score stage's decide
held every embedding (1M x 384 float16: 768 MB) plus the dynamics' state in one process.

    .venv/bin/python bench/score_memory.py --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARD_ROWS = 50_000
GENRES = ["law", "history", "wisdom", "prophets", "gospels", "letters", "apocalyptic"]


def random_embed(batch, inputs, params, loaded=None):
    """What `steps.embed` writes, with seeded random unit vectors instead of the models' output."""
    import numpy as np
    import polars as pl

    from tasks.runtime.plan import PART

    rng = np.random.default_rng(int(inputs.unit.replace("-", "")))
    emb = rng.standard_normal((batch.height, 384), dtype=np.float32)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    feats = batch.select("id", "timestamp", "label", length=pl.lit(200, pl.UInt32)).with_columns(
        pl.Series("embedding", emb, dtype=pl.Array(pl.Float16, 384)),
        score_nll=pl.lit(2.0), score_bits_per_char=pl.lit(1.0), score_contam_item=pl.lit(None, pl.String),
        score_contam_cosine=pl.lit(None, pl.Float64), score_contam_abstract=pl.lit(None, pl.Float64),
        score_contam_question=pl.lit(None, pl.Float64), score_contam_overlap=pl.lit(None, pl.Float64),
        contam_window=pl.lit(None, pl.String), score_contam_hit=pl.lit(False), score_novelty=pl.lit(None, pl.Float64))
    cfg = params.score
    fraction = min(1.0, max(cfg.semdedup.sample, cfg.negatives) / max(inputs.rows, 1))
    chosen = feats.filter(pl.col("id").hash(seed=29) % 1_000_000 < round(fraction * 1_000_000))
    return {"side:embeddings": feats,
            "fit-sample": chosen.select("id", "embedding").with_columns(pl.lit(0, pl.Int32).alias(PART))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import polars as pl
    import torch

    from bench.plan_memory import run_plan, status

    torch.set_num_threads(2)
    from schemas.config import SluiceConfig
    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage
    from tasks.runtime.context import RunContext
    from tasks.runtime.plan import MapStep
    from tasks.stages import score

    root = tempfile.mkdtemp(prefix="sluice-score-memory-")
    storage = Storage(root)
    outputs = []
    for i, start in enumerate(range(0, args.rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, args.rows - start)
        part = pl.DataFrame({"id": [f"r{start + j}" for j in range(n)], "text": [""] * n,
                             "timestamp": pl.repeat(None, n, dtype=pl.Datetime("us", "UTC"), eager=True),
                             "label": [GENRES[(start + j) % 7] for j in range(n)]})
        outputs.append(storage.write_parquet(f"runs/bench/prev/part-{i:05d}-00000.parquet", part))
    source = StageManifest(stage="prev", run_id="bench", rows_in=args.rows, rows_out=args.rows, rows_rejected=0,
                           outputs=outputs)
    stage = replace(score.STAGE, plan=replace(score.PLAN, steps=(MapStep("embed", random_embed),
                                                                 *score.PLAN.steps[1:])), setup=None)
    ctx = RunContext(storage, "bench", SluiceConfig())
    held = status("VmRSS")
    receipts, summary, seconds, total = run_plan(ctx, stage, source)
    peak = status("VmHWM")
    issues = sum(r.stats.counts.get("score.label_issues", 0) for r in receipts)
    print(f"rows {args.rows:,}  peak RSS {peak / 2**30:.2f} GiB (before the steps {held / 2**30:.2f} GiB)  "
          f"{total:.1f} s  label issues {issues:,}  partitions {summary['partitions']}")
    print("  seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
