"""What the edit ledger costs: stage time and bytes of a run's parts, this tree against the commit before issue 26.

    .venv/bin/python bench/edits.py [--docs 100000] [--before 1ca35e2] [--repeat 2]

The corpus is bench/quality.py's (real KJV/quote text with planted junk lines, so C4's line filter edits rows).
Both trees run `sluice run --stages ingest,decontaminate,quality,dedup` on it (demo config, 2 workers), `--repeat`
times each, alternating; reported: the best seconds per stage, and the bytes of the run's parts (kept, quarantined,
and the ledger's). The comparison includes everything issue 26 added (ledger, bounds, reflow), so the ledger alone
costs at most this. Writes bench/results/edits.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "results" / "edits-work"
STAGES = ("ingest", "decontaminate", "quality", "dedup")


def tree_at(commit: str) -> Path:
    path = WORK / f"tree-{commit}"
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def run(tree: Path, corpus: Path, out: Path, run_id: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PREFECT_LOGGING_LEVEL": "WARNING"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run", "--input", str(corpus / "*.jsonl"), "--output",
                    str(out), "--config", str(tree / "infra" / "demo.toml"), "--run-id", run_id, "--stages",
                    ",".join(STAGES)], cwd=tree, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    result = {"wall": wall}
    root = out / "runs" / run_id
    for stage in STAGES:
        m = json.loads((root / stage / "_manifest.json").read_text())
        parts = sum(f.stat().st_size for f in (root / stage).rglob("*.parquet"))
        ledger = sum(f.stat().st_size for f in (root / stage / "edits").rglob("*.parquet")) \
            if (root / stage / "edits").exists() else 0
        result[stage] = {"seconds": m["seconds"], "bytes": parts, "ledger_bytes": ledger,
                         "rows_out": m["rows_out"], "edited": m["stats"]["counts"].get("edits.rows", 0)}
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--before", default="1ca35e2")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from quality import build_corpus

    corpus = WORK / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    build_corpus(corpus / "docs.jsonl", args.docs)
    trees = {"before": tree_at(args.before), "now": REPO}
    best: dict[str, dict] = {}
    for i in range(args.repeat):
        for label, tree in trees.items():
            out = WORK / f"out-{label}-{i}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            got = run(tree, corpus, out, f"bench-{label}-{i}")
            print(label, json.dumps(got), flush=True)
            for stage in STAGES:
                if stage not in best.setdefault(label, {}) or got[stage]["seconds"] < best[label][stage]["seconds"]:
                    best[label][stage] = got[stage]
    lines = ["| stage | seconds before | seconds now | ratio | part bytes before | part bytes now | of them ledger | "
             "ratio | rows edited |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for stage in STAGES:
        b, n = best["before"][stage], best["now"][stage]
        lines.append(f"| {stage} | {b['seconds']:.2f} | {n['seconds']:.2f} | {n['seconds'] / b['seconds']:.3f} | "
                     f"{b['bytes']:,} | {n['bytes']:,} | {n['ledger_bytes']:,} | {n['bytes'] / b['bytes']:.3f} | "
                     f"{n['edited']:,} |")
    total_b = sum(best["before"][s]["bytes"] for s in STAGES)
    total_n = sum(best["now"][s]["bytes"] for s in STAGES)
    lines.append(f"| all | | | | {total_b:,} | {total_n:,} | | {total_n / total_b:.3f} | |")
    md = "\n".join(lines)
    print(md)
    (HERE / "results" / "edits.md").write_text(f"# bench/edits.py ({time.strftime('%Y-%m-%d')}, {args.docs:,} docs, "
                                               f"before = {args.before}, best of {args.repeat})\n\n{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
