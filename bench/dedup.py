"""Near-dup dedup end to end: Sluice vs datatrove's MinHash pipeline vs datasketch MinHashLSH, same corpus.

    .venv/bin/python bench/dedup.py [--docs 100000]

Corpus: documents of 6 random KJV verses each (unrelated to one another), plus planted copies of random documents
with 0.5% to 20% of words replaced. Each planted pair's exact Jaccard (word 5-gram sets, Sluice's tokens) is measured,
and recall is reported per Jaccard band. datatrove and datasketch use their defaults' banding, 14 bands x 8 rows
(112 permutations); Sluice runs its defaults (20 x 5 + exact Jaccard >= 0.7) and the old 14 x 8 without
verification. Reported: docs/s end to end (signatures, buckets, clustering, filtering), recall per Jaccard band,
and false merges (an original document removed, or a copy merged into a cluster that is not its source's). Also the
theoretical S-curve of both bandings.
datatrove and datasketch run in the datatrove virtualenv (bench/quality.py makes it), as their own processes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

FILES = 8
RATES = (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.10, 0.20)
BANDS = ((0.9, 1.01), (0.8, 0.9), (0.7, 0.8), (0.6, 0.7), (0.5, 0.6), (0.0, 0.5))

DATATROVE = r'''
import sys, time, json
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup import (MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster,
                                      MinhashDedupFilter)
from datatrove.pipeline.dedup.minhash import MinhashConfig
src, w, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = MinhashConfig()
t = time.perf_counter()
LocalPipelineExecutor([JsonlReader(src, compression=None), MinhashDedupSignature(f"{w}/sig", config=cfg)],
                      tasks=files, workers=2, logging_dir=f"{w}/l1").run()
LocalPipelineExecutor([MinhashDedupBuckets(f"{w}/sig", f"{w}/buckets", config=cfg)],
                      tasks=cfg.num_buckets, workers=2, logging_dir=f"{w}/l2").run()
LocalPipelineExecutor([MinhashDedupCluster(f"{w}/buckets", f"{w}/remove", config=cfg)],
                      tasks=1, logging_dir=f"{w}/l3").run()
LocalPipelineExecutor([JsonlReader(src, compression=None),
                       MinhashDedupFilter(f"{w}/remove", exclusion_writer=JsonlWriter(f"{w}/removed",
                                                                                       compression=None)),
                       JsonlWriter(f"{w}/kept", compression=None)], tasks=files, workers=2,
                      logging_dir=f"{w}/l4").run()
print("SECONDS", time.perf_counter() - t)
'''

DATASKETCH = r'''
import sys, time, json, glob, re
import numpy as np
from datasketch import MinHash, MinHashLSH
src = sys.argv[1]
docs = [json.loads(l) for f in sorted(glob.glob(src + "/*.jsonl")) for l in open(f)]
t = time.perf_counter()
lsh = MinHashLSH(num_perm=112, params=(14, 8))
parent = list(range(len(docs)))
def find(x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]; x = parent[x]
    return x
for i, d in enumerate(docs):
    words = re.findall(r"\w+", d["text"].lower())
    sh = {" ".join(words[j:j + 5]).encode() for j in range(max(1, len(words) - 4))}
    m = MinHash(num_perm=112, seed=1)
    m.update_batch(list(sh))
    for k in lsh.query(m):
        a, b = find(i), find(k)
        if a != b:
            parent[max(a, b)] = min(a, b)
    lsh.insert(i, m)
removed = [docs[i]["id"] for i in range(len(docs)) if find(i) != i]
print("SECONDS", time.perf_counter() - t)
print("REMOVED", json.dumps(removed))
'''


def _jaccard(a: str, b: str) -> float:
    import polars as pl

    from tasks.text import tokens

    def grams(text: str) -> set:
        words = pl.select(tokens.words(pl.lit(text.lower()))).item().to_list()
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def build(folder: Path, n_docs: int, seed: int = 11) -> dict[str, tuple[str, float]]:
    """Writes the corpus; returns planted copy id -> (source id, exact Jaccard with it)."""
    sys.path.insert(0, str(HERE.parent))
    from tasks.ops.demo_corpus import kjv_records

    verses = [r["text"] for r in kjv_records()]
    rng = random.Random(seed)
    n_planted = max(30, n_docs // 100)
    base = [" ".join(rng.sample(verses, 6)) for _ in range(n_docs - n_planted * len(RATES))]
    docs = [(f"b{i}", t) for i, t in enumerate(base)]
    planted = {}
    for rate in RATES:
        for k in range(n_planted):
            src = rng.randrange(len(base))
            words = base[src].split()
            for j in range(len(words)):
                if rng.random() < rate:
                    words[j] = rng.choice(["quartz", "zephyr", "glimmer", "vortex", "ember", "lattice"])
            cid = f"p{rate * 1000:03.0f}-{k}"
            planted[cid] = (f"b{src}", _jaccard(base[src], " ".join(words)))
            docs.append((cid, " ".join(words)))
    rng.shuffle(docs)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per = -(-len(docs) // FILES)
    for f in range(FILES):
        with open(folder / f"docs-{f:02d}.jsonl", "w") as fh:
            for doc_id, text in docs[f * per:(f + 1) * per]:
                fh.write(json.dumps({"id": doc_id, "text": text, "timestamp": None}) + "\n")
    return planted


def run_sluice(folder: Path, near) -> tuple[float, set[str], dict[str, str]]:
    import polars as pl

    from schemas.config import DedupConfig, SpanDedupConfig
    from tasks.runtime.plan import run_in_memory
    from tasks.stages.dedup import PLAN

    cfg = DedupConfig(exact=False, spans=SpanDedupConfig(enabled=False), near=near)  # near-dup only, like the peers
    t = time.perf_counter()  # reading included, as for the peers
    shards = [pl.read_ndjson(f, schema={"id": pl.String, "text": pl.String, "timestamp": pl.String})
              .with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
              for f in sorted(folder.glob("*.jsonl"))]
    results, _, _ = run_in_memory(PLAN, shards, cfg, partitions=2)  # the partitioned steps, shuffles in memory
    wall = time.perf_counter() - t
    rejected = pl.concat([r.rejected for r in results])
    survivor = {r["id"]: json.loads(r["evidence"])["survivor_id"] for r in rejected.iter_rows(named=True)}
    return wall, set(survivor), survivor


def oracle_agreement(folder: Path, survivor: dict[str, str]) -> str:
    """The rows removed and their survivors, against the pre-issue-25 single pass (the tests' oracle)."""
    import polars as pl

    sys.path.insert(0, str(HERE.parent / "tests"))
    from dedup_oracle import decide, features

    from schemas.config import DedupConfig, NearDupConfig, SpanDedupConfig

    cfg = DedupConfig(exact=False, spans=SpanDedupConfig(enabled=False), near=NearDupConfig())
    whole = pl.concat([pl.read_ndjson(f, schema={"id": pl.String, "text": pl.String, "timestamp": pl.String})
                       for f in sorted(folder.glob("*.jsonl"))]).with_columns(
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    oracle = decide(features(whole, cfg), cfg).filter(pl.col("action") != "keep")
    expected = dict(zip(oracle["id"], oracle["survivor"], strict=True))
    differ = sum(1 for k in expected.keys() | survivor.keys() if expected.get(k) != survivor.get(k))
    return (f"{len(expected):,} rows removed by the single pass, {len(survivor):,} by the steps, "
            f"{differ} differing in row or survivor")


def score(removed: set[str], planted: dict[str, tuple[str, float]], survivor: dict[str, str] | None) -> dict:
    """A planted pair counts as found when either side was removed (engines differ in which one survives); a
    false merge is a removed document that belongs to no planted pair, or a copy merged into a stranger."""
    out = {}
    for lo, hi in BANDS:
        ids = [c for c, (_, j) in planted.items() if lo <= j < hi]
        out[(lo, hi)] = (sum(c in removed or planted[c][0] in removed for c in ids) / len(ids)) if ids else None
    sources = {src for src, _ in planted.values()}
    false = [i for i in removed if i not in planted and i not in sources]
    wrong = 0
    if survivor is not None:
        wrong = sum(1 for c in removed & planted.keys()
                    if survivor.get(c) != planted[c][0] and planted.get(survivor.get(c), ("",))[0] != planted[c][0])
    out["false merges"] = len(false) + wrong
    return out


def s_curve() -> list[str]:
    """P(a pair becomes a candidate | Jaccard J) = 1 - (1 - J^rows)^bands, for both bandings."""
    js = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    lines = ["| banding | " + " | ".join(f"J={j}" for j in js) + " |", "|---|" + "---:|" * len(js)]
    for b, r in ((14, 8), (20, 5)):
        lines.append(f"| {b} bands x {r} rows | " + " | ".join(f"{1 - (1 - j ** r) ** b:.1%}" for j in js) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--work", default=str(RESULTS / "dedup-work"))
    args = parser.parse_args()
    work = Path(args.work)
    corpus = work / "corpus"
    planted = build(corpus, args.docs)
    n = sum(len(f.read_text().splitlines()) for f in corpus.glob("*.jsonl"))
    sys.path.insert(0, str(HERE.parent))
    from bench.quality import ensure_datatrove

    py = ensure_datatrove()
    rows = []

    shutil.rmtree(work / "dt", ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([str(py), "-c", DATATROVE, str(corpus), str(work / "dt"), str(FILES)],
                          capture_output=True, text=True)
    dt_wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    dt_removed = {json.loads(line)["id"] for f in (work / "dt" / "removed").glob("*.jsonl")
                  for line in f.read_text().splitlines()}
    rows.append(("datatrove 0.10.1 (Signature, Buckets, Cluster, Filter; 2 workers)", dt_wall, dt_removed, None))

    t = time.perf_counter()
    proc = subprocess.run([str(py), "-c", DATASKETCH, str(corpus)], capture_output=True, text=True)
    ds_wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    ds_removed = set(json.loads(proc.stdout.split("REMOVED", 1)[1]))
    rows.append(("datasketch MinHashLSH (single process)", ds_wall, ds_removed, None))

    from schemas.config import NearDupConfig

    old_wall, old_removed, old_survivor = run_sluice(corpus, NearDupConfig(bands=14, rows=8, verify_jaccard=False))
    rows.append(("Sluice, before issue 10 (14 x 8, no verification)", old_wall, old_removed, old_survivor))
    sl_wall, sl_removed, survivor = run_sluice(corpus, NearDupConfig())
    rows.append(("Sluice defaults (20 x 5 + exact Jaccard >= 0.7)", sl_wall, sl_removed, survivor))
    same = oracle_agreement(corpus, survivor)

    per_band = {b: sum(1 for _, j in planted.values() if b[0] <= j < b[1]) for b in BANDS}
    lines = [f"Corpus: {n:,} documents in {FILES} files, {len(planted):,} planted copies "
             f"({len(planted) // len(RATES):,} per edit rate, {len(RATES)} rates from 0.5% to 20%); word 5-grams; "
             "2 cores. Planted pairs per Jaccard band: "
             + ", ".join(f"[{lo}, {min(hi, 1.0)}): {per_band[(lo, hi)]:,}" for lo, hi in BANDS) + ".", "",
             "| engine | seconds | docs/s | " + " | ".join(f"recall J in [{lo}, {min(hi, 1.0)})" for lo, hi in BANDS)
             + " | false merges |", "|---|---:|---:|" + "---:|" * (len(BANDS) + 1)]
    for name, wall, removed, surv in rows:
        s = score(removed, planted, surv)
        lines.append(f"| {name} | {wall:.1f} | {n / wall:,.0f} | "
                     + " | ".join("-" if s[b] is None else f"{s[b]:.1%}" for b in BANDS)
                     + f" | {s['false merges']} |")
    lines += ["", f"Partitioned steps vs the single-process pass Sluice ran before issue 25 (tests/dedup_oracle.py), "
              f"same corpus: {same}."]
    lines += ["", f"Speed ratio Sluice defaults / datatrove: **{dt_wall / sl_wall:.1f}x**; / datasketch: "
              f"**{ds_wall / sl_wall:.1f}x**.", "", "Theoretical S-curve, P(candidate | J):", "", *s_curve()]
    table = "\n".join(lines)
    publish("dedup.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
