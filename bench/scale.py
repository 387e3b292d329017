"""Scale: ingest + dedup + publish at growing corpus sizes, memory and time per document, beside datatrove.

    .venv/bin/python bench/scale.py [--sizes 1000000,3000000,10000000] [--peer 1000000] [--work DIR]

Corpus: documents of 6 random KJV verses (~150 words), in files of 250,000, plus 1,000 planted exact copies and
1,000 planted near copies (one word in 50 replaced: Jaccard of word 5-grams ~0.8) of random documents. Each size
is one `run_curate(stages=["ingest", "dedup", "publish"])` in its own process (the local runner, 2 workers), against
one Prefect server started here. The process tree is sampled every 0.5 s (psutil): peak RSS of the largest process
and of all together. Reported: wall time, seconds per million documents, peak RSS, bytes the dedup steps wrote to
storage (the shuffles), planted recall and false merges. `--peer N` also runs datatrove's MinHash pipeline
(Signature, Buckets, Cluster, Filter; its defaults; 2 workers; bench/dedup.py's script) on the N-document corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

PER_FILE = 250_000
PLANTED = 1_000
RUN = r'''
import json, sys, time
from flows.curate import run_curate
t = time.perf_counter()
run = run_curate([sys.argv[1]], sys.argv[2], sys.argv[3], stages=["ingest", "dedup", "publish"], run_id="scale")
print("RESULT", json.dumps({"wall": time.perf_counter() - t, "timings": run["timings"], "status": run["status"]}))
'''


def build(folder: Path, n: int, seed: int = 3) -> dict[str, tuple[str, str]]:
    """The corpus (if not there yet); returns planted copy id -> (kind, source id)."""
    import numpy as np
    import polars as pl

    from tasks.ops.demo_corpus import kjv_records

    verses = pl.Series([r["text"] for r in kjv_records()])
    rng = np.random.default_rng(seed)
    planted_file = folder / ".planted.json"  # hidden: ingest skips it (the answer key is no input)
    if planted_file.exists():
        return json.loads(planted_file.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    base = n - 2 * PLANTED
    pick = random.Random(seed)
    sources = pick.sample(range(base), 2 * PLANTED)
    planted: dict[str, tuple[str, str]] = {}
    extra: list[dict] = []
    for start in range(0, base, PER_FILE):
        count = min(PER_FILE, base - start)
        idx = rng.integers(0, verses.len(), size=(count, 6))
        texts = pl.DataFrame({f"v{j}": verses.gather(idx[:, j]) for j in range(6)}).select(
            text=pl.concat_str(pl.all(), separator=" "))["text"]
        frame = pl.DataFrame({"id": [f"d{start + i}" for i in range(count)], "text": texts})
        for k, src in enumerate(sources):
            if start <= src < start + count:
                text = texts[src - start]
                if k < PLANTED:
                    extra.append({"id": f"x{k}", "text": text})
                    planted[f"x{k}"] = ("exact", f"d{src}")
                else:
                    words = text.split()
                    for j in range(7, len(words), 50):
                        words[j] = pick.choice(["quartz", "zephyr", "glimmer", "vortex", "ember", "lattice"])
                    extra.append({"id": f"n{k}", "text": " ".join(words)})
                    planted[f"n{k}"] = ("near", f"d{src}")
        frame.write_ndjson(folder / f"docs-{start // PER_FILE:04d}.jsonl")
    pl.DataFrame(extra).write_ndjson(folder / "planted.jsonl")
    planted_file.write_text(json.dumps(planted))
    return planted


def sampled(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a command, sampling its process tree's RSS every 0.5 s."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"largest_mb": 0.0, "total_mb": 0.0, "peak_at_s": 0.0, "timeline": []}
    done = threading.Event()
    started = time.perf_counter()

    def watch() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs if p.is_running()]
            except psutil.Error:
                rss = []
            if rss:
                now = time.perf_counter() - started
                if max(rss) / 2**20 > peak["largest_mb"]:
                    peak["largest_mb"], peak["peak_at_s"] = max(rss) / 2**20, round(now, 1)
                peak["total_mb"] = max(peak["total_mb"], sum(rss) / 2**20)
                if not peak["timeline"] or now - peak["timeline"][-1][0] >= 10:  # (s, MB) every 10 s
                    peak["timeline"].append((round(now), round(max(rss) / 2**20)))
            done.wait(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


def recall(out: Path, planted: dict[str, tuple[str, str]]) -> dict:
    import polars as pl

    rejected = pl.read_parquet(out / "runs" / "scale" / "dedup" / "rejected" / "*.parquet",
                               columns=["source_id", "reason"])
    removed = dict(rejected.iter_rows())
    sources = {src for _, src in planted.values()}
    found = {kind: sum(1 for c, (k, src) in planted.items() if k == kind and (c in removed or src in removed))
             for kind in ("exact", "near")}
    false = [i for i in removed if i not in planted and i not in sources]
    return {"exact_recall": found["exact"] / PLANTED, "near_recall": found["near"] / PLANTED,
            "false_merges": len(false), "removed": len(removed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--peer", type=int, default=1_000_000, help="run datatrove at this size (0: no)")
    parser.add_argument("--work", default=str(RESULTS / "scale-work"))
    parser.add_argument("--keep", action="store_true", help="keep each size's output root")
    parser.add_argument("--shard-rows", type=int, default=None, help="ingest.shard_rows (default: Sluice's)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "SLUICE_PREFECT": "ephemeral"})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "scale.toml"
    config.write_text('[publish]\ndataset = "scale"\n'
                      + (f"[ingest]\nshard_rows = {args.shard_rows}\n" if args.shard_rows else ""))
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        env = dict(os.environ, PREFECT_API_URL=prefect.settings.PREFECT_API_URL.value())
        env.pop("SLUICE_PREFECT")
        for n in [int(s) for s in args.sizes.split(",") if s]:
            corpus = work / f"corpus-{n}"
            planted = build(corpus, n)
            out = work / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            done, peak = sampled([sys.executable, "-c", RUN, str(corpus), str(out), str(config)], env)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            result = json.loads(done.stdout.split("RESULT", 1)[1])
            dedup = json.loads((out / "runs" / "scale" / "dedup" / "_manifest.json").read_text())
            spilled = sum(s["bytes_written"] for s in dedup["plan"]["steps"])
            engine = "Sluice" + (f", shard_rows {args.shard_rows:,}" if args.shard_rows else "")
            row = {"engine": engine, "docs": n, "wall": result["wall"], **peak, "timings": result["timings"],
                   "spilled_mb": spilled / 2**20, "partitions": dedup["plan"]["partitions"],
                   "steps": {s["step"]: {k: s.get(k) for k in ("units", "seconds", "rows_written", "bytes_written",
                                                               "files_written", "peak_rss_mb")}
                             for s in dedup["plan"]["steps"]},
                   **recall(out, planted)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            if n == args.peer:
                from bench.dedup import DATATROVE
                from bench.quality import ensure_datatrove

                py = ensure_datatrove()
                dt = work / "datatrove"
                shutil.rmtree(dt, ignore_errors=True)
                t = time.perf_counter()
                done, peak = sampled([str(py), "-c", DATATROVE, str(corpus), str(dt), str(len(list(
                    corpus.glob("*.jsonl"))))], dict(os.environ))
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                removed = {json.loads(line)["id"] for f in (dt / "removed").glob("*.jsonl")
                           for line in f.read_text().splitlines()}
                sources = {src for _, src in planted.values()}
                rows.append({"engine": "datatrove 0.10.1", "docs": n, "wall": time.perf_counter() - t, **peak,
                             "spilled_mb": sum(f.stat().st_size for f in dt.rglob("*") if f.is_file()) / 2**20,
                             "exact_recall": sum(1 for c, (k, s) in planted.items() if k == "exact" and (
                                 c in removed or s in removed)) / PLANTED,
                             "near_recall": sum(1 for c, (k, s) in planted.items() if k == "near" and (
                                 c in removed or s in removed)) / PLANTED,
                             "false_merges": len([i for i in removed if i not in planted and i not in sources]),
                             "removed": len(removed)})
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(dt, ignore_errors=True)
    lines = ["| engine | documents | wall s | s per 1M docs | peak RSS, largest process (MB) | peak RSS, all (MB) "
             "| spilled (MB) | exact recall | near recall | false merges |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['docs']:,} | {r['wall']:,.0f} | {r['wall'] / r['docs'] * 1e6:,.0f} | "
                     f"{r['largest_mb']:,.0f} | {r['total_mb']:,.0f} | {r['spilled_mb']:,.0f} | "
                     f"{r['exact_recall']:.1%} | {r['near_recall']:.1%} | {r['false_merges']} |")
    sl = [r for r in rows if r["engine"] == "Sluice"]
    if len(sl) > 1:
        lines += ["", f"Largest/smallest: peak RSS {sl[-1]['largest_mb'] / sl[0]['largest_mb']:.2f}x, seconds per "
                  f"document {sl[-1]['wall'] / sl[-1]['docs'] / (sl[0]['wall'] / sl[0]['docs']):.2f}x."]
    table = "\n".join(lines)
    publish("scale.md", table)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
