"""Memory and time of the score stage's decide step (clusters, prototypicality, SemDeDup, training dynamics, label
noise) and the select stage's decide step on N rows x 384 dims, as the runner hands them their features: float16
embeddings in a polars frame, 7 labels.

Each measurement runs in its own process and reports the peak resident memory (VmHWM) above what the features frame
itself holds (VmRSS once it is built), the seconds, and where score's time goes (seconds per step).
`--code DIR` measures another checkout of the code (the commit before the float16 streaming, for the baseline).

    .venv/bin/python bench/score_memory.py --rows 1000000
    .venv/bin/python bench/score_memory.py --rows 1000000 --code /tmp/before   # a `git worktree` of an older commit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: now, VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _timed_steps(score) -> dict[str, float]:
    """Wrap the decide step's parts (looked up as module attributes at call time) to add up their seconds."""
    spent: dict[str, float] = {}
    parts = [(score.semantic, "kmeans", "k-means"), (score.semantic, "prototypicality", "prototypicality"),
             (score.semantic, "duplicates", "SemDeDup"), (score.dynamics, "training_dynamics", "training dynamics"),
             (score.dynamics, "label_issues", "cleanlab + ranking"), (score, "_quality", "quality head")]
    def wrap(fn, label):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
        return timed

    for module, name, label in parts:
        setattr(module, name, wrap(getattr(module, name), label))
    return spent


def features(rows: int, dim: int = 384, seed: int = 0):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    emb = np.empty((rows, dim), dtype=np.float16)
    for i in range(0, rows, 100_000):  # built in pieces: the bench must not itself hold a float32 copy
        part = rng.standard_normal((min(100_000, rows - i), dim), dtype=np.float32)
        emb[i:i + part.shape[0]] = part / np.linalg.norm(part, axis=1, keepdims=True)
    genres = ["law", "history", "wisdom", "prophets", "gospels", "letters", "apocalyptic"]
    frame = pl.DataFrame({
        "id": [f"r{i}" for i in range(rows)], "timestamp": pl.repeat(None, rows, dtype=pl.Datetime("us", "UTC"),
                                                                    eager=True),
        "length": rng.integers(20, 2000, rows), "label": pl.Series(genres).sample(rows, with_replacement=True,
                                                                               seed=seed),
        "embedding": pl.Series(emb, dtype=pl.Array(pl.Float16, dim)),
        "score_nll": rng.random(rows) * 4, "score_bits_per_char": rng.random(rows),
        "score_contam_item": pl.repeat(None, rows, dtype=pl.String, eager=True),
        "score_contam_cosine": pl.repeat(None, rows, dtype=pl.Float64, eager=True),
        "score_novelty": pl.repeat(None, rows, dtype=pl.Float64, eager=True)})
    del emb
    return frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--code", default=str(HERE.parent), help="the checkout whose score stage is measured")
    args = ap.parse_args()
    sys.path.insert(0, args.code)
    import torch

    torch.set_num_threads(2)
    from schemas.config import ScoreParams, SluiceConfig
    from tasks.stages import score

    cfg = SluiceConfig()
    params = ScoreParams(score=cfg.score, decontaminate=cfg.decontaminate)
    feats = features(args.rows)
    import gc

    gc.collect()
    held = _status("VmRSS")
    spent = _timed_steps(score)
    started = time.perf_counter()
    decisions, _ = score.decide(feats, params, None)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    print(f"rows {args.rows:,}  code {args.code}  features frame {held / 2**30:.2f} GiB  "
          f"peak above it {(peak - held) / 2**30:.2f} GiB  total peak {peak / 2**30:.2f} GiB  "
          f"score decide {seconds:.1f} s  label issues {int(decisions['label_issue'].sum()):,}")
    print("  where score's decide time goes: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()))
    try:
        from schemas.config import SelectConfig, SelectPolicy
        from tasks.stages import select
    except ImportError:
        return
    rules = SelectConfig(policies=[SelectPolicy(kind="label_noise"),
                                   SelectPolicy(kind="threshold", column="score_prototypicality", max=1.0),
                                   SelectPolicy(kind="quota", by=["label"], max_per_group=120_000),
                                   SelectPolicy(kind="keep_hard", column="score_el2n", fraction=0.7),
                                   SelectPolicy(kind="random", fraction=0.9)])
    joined = feats.select("id", "label").join(decisions, on="id")
    started = time.perf_counter()
    chosen = select.decide(select.features(joined, rules), rules)
    print(f"  select decide (label_noise, threshold, quota, keep_hard 70%, random 90%): "
          f"{time.perf_counter() - started:.1f} s, kept {chosen['reason'].null_count():,}")


if __name__ == "__main__":
    main()
