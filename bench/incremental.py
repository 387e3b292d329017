"""Incremental curation: does a nightly increment cost the increment, not the dataset?

    .venv/bin/python bench/incremental.py [--rows 1000000] [--increment 10000] [--duplicates 2000]

1. Publish ROWS documents (4 random KJV verses each, 8 JSONL files) as v1 of dataset `big`, through the pipeline
   (ingest, dedup, publish; mode replace). Quality is left out: its default rules reject most random-verse
   documents, and it costs the same per new row in both runs below.
2. Build an increment of INCREMENT documents: INCREMENT - DUPLICATES new ones, DUPLICATES/2 exact copies of v1
   rows and DUPLICATES/2 near copies (one word in 50 replaced: Jaccard of word 5-grams ~0.8).
3. Curate the increment twice, each `sluice run` in its own process:
     alone     into a fresh root (mode replace): what curating those rows costs with no history;
     appended  onto `big` v1 (mode append): new rows deduplicated against the 1M published rows' index.
   Reported: wall time, peak RSS of the process, the duplicates caught by check, v2's row count, the index's size.
Goal (issue 15): every duplicate caught, appended <= 2x alone, memory bounded by the index, not the dataset.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
from orchestration import build  # noqa: E402 (the same random-verse corpus)

SLUICE = str(Path(sys.executable).parent / "sluice")
FILES = 8
CONFIG = """stages = ["ingest", "dedup", "publish"]
[ingest]
shard_rows = 50000
[publish]
dataset = "big"
[runner]
workers = 2
"""


def verses() -> list[str]:
    from tasks.ops.demo_corpus import kjv_records

    return [r["text"] for r in kjv_records()]


def near_copy(text: str, rng: random.Random) -> str:
    """Replace one word in 50 (two in a 4-verse document): the hash changes, Jaccard of word 5-grams stays ~0.8."""
    words = text.split()
    for j in rng.sample(range(len(words)), max(1, len(words) // 50)):
        words[j] = "selah"
    return " ".join(words)


def build_increment(published: Path, folder: Path, total: int, duplicates: int, seed: int = 11) -> dict:
    """New documents plus copies of rows v1 actually published (read from its files)."""
    import polars as pl

    pool = verses()
    rng = random.Random(seed)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    picked = pl.read_parquet(published / "*.parquet", columns=["source_id", "text"]).sample(duplicates, seed=seed)
    rows = [{"id": f"new{i}", "text": " ".join(rng.sample(pool, 4))} for i in range(total - duplicates)]
    half = duplicates // 2
    rows += [{"id": f"exact-{sid}", "text": text} for sid, text in picked.head(half).iter_rows()]
    rows += [{"id": f"near-{sid}", "text": near_copy(text, rng)} for sid, text in picked.tail(duplicates - half)
             .iter_rows()]
    rng.shuffle(rows)
    with open(folder / "increment.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return {"new": total - duplicates, "exact": half, "near": duplicates - half}


def timed_run(args: list[str]) -> dict:
    """`sluice run` in a child process: wall seconds and the child's peak RSS (this wrapper is a fresh process, so
    RUSAGE_CHILDREN holds exactly that child)."""
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter()\n"
             "log = open('/tmp/sluice-bench-inc.log', 'w')\n"
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=log).returncode\n"
             "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, SLUICE, "run", *args], capture_output=True, text=True,
                         check=True).stdout.split()
    if int(out[0]) != 0:
        raise RuntimeError("sluice run failed: " + Path("/tmp/sluice-bench-inc.log").read_text()[-3000:])
    return {"seconds": round(float(out[1]), 1), "peak_rss_mib": round(int(out[2]) / 1024)}


def folder_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--increment", type=int, default=10_000)
    ap.add_argument("--duplicates", type=int, default=2_000)
    ap.add_argument("--work", default="/tmp/sluice-bench-incremental")
    ap.add_argument("--reuse-base", action="store_true", help="keep a v1 already published under --work")
    a = ap.parse_args()
    work = Path(a.work)
    config = work / "incremental.toml"
    base_root = work / "root"
    if not a.reuse_base:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        build(work / "base", a.rows, seed=7, per_doc=4, files=FILES, prefix="b")
        config.write_text(CONFIG)
        v1 = timed_run(["--input", str(work / "base"), "--output", str(base_root), "--config", str(config),
                        "--run-id", "base", "--publish-mode", "replace"])
        print(f"v1: {a.rows:,} rows published in {v1['seconds']} s (peak RSS {v1['peak_rss_mib']} MiB)", flush=True)
    else:
        v1 = json.loads((work / "v1.json").read_text())
    (work / "v1.json").write_text(json.dumps(v1))
    planted = build_increment(base_root / "datasets/big/v1/data", work / "increment", a.increment, a.duplicates)

    alone_root = work / "alone"
    shutil.rmtree(alone_root, ignore_errors=True)
    shutil.rmtree(base_root / "datasets" / "big" / "v2", ignore_errors=True)
    for name in ("_claims/v2.json",):
        (base_root / "datasets" / "big" / name).unlink(missing_ok=True)
    shutil.rmtree(base_root / "datasets" / "big" / "_index" / "v2", ignore_errors=True)
    shutil.rmtree(base_root / "runs" / "inc", ignore_errors=True)
    common = ["--input", str(work / "increment"), "--config", str(config), "--run-id", "inc"]
    alone = timed_run([*common, "--output", str(alone_root), "--publish-mode", "replace"])
    appended = timed_run([*common, "--output", str(base_root), "--publish-mode", "append"])

    dedup = json.loads((base_root / "runs/inc/dedup/_manifest.json").read_text())
    import polars as pl

    rejected = pl.read_parquet(base_root / "runs/inc/dedup/rejected/*.parquet").select("source_id", "reason")
    caught = {kind: rejected.filter(pl.col("source_id").str.starts_with(f"{kind}-")).group_by("reason").len()
              .sort("reason").rows() for kind in ("exact", "near")}
    false = rejected.filter(pl.col("source_id").str.starts_with("new")).height
    v2 = json.loads((base_root / "datasets/big/v2/_manifest.json").read_text())
    timings = json.loads((base_root / "runs/inc/run.json").read_text())["timings"]
    alone_timings = json.loads((alone_root / "runs/inc/run.json").read_text())["timings"]
    result = {"rows": a.rows, "increment": a.increment, "planted": planted, "v1": v1, "alone": alone,
              "appended": appended, "ratio": round(appended["seconds"] / alone["seconds"], 2),
              "stage_seconds_appended": timings, "stage_seconds_alone": alone_timings,
              "dedup_rejected_by_reason": dedup["rejected_by_reason"], "caught": caught,
              "new_rows_rejected": false, "v2_rows": v2["rows_out"],
              "index_mib": folder_mib(base_root / "datasets/big/_index"),
              "v1_data_mib": folder_mib(base_root / "datasets/big/v1/data")}
    print(json.dumps(result, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "incremental.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
