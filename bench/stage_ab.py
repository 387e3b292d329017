"""Each stage's seconds in a fresh process, this tree against an earlier commit, on the same corpus (issue 27 item 7).

    .venv/bin/python bench/stage_ab.py [--base 20772f8] [--corpus bench/results/dedup-work/corpus]
        [--stages ingest,decontaminate,quality,dedup,publish] [--pairs 3]

The base commit is checked out in a temporary git worktree and run with this virtualenv (`python -m flows.cli run`
with the worktree on PYTHONPATH); both sides run as a user's `sluice run` would, in a process of their own
(SLUICE_WARM_WORKER=off: every import, model and GE context made anew) against the shared local Prefect server,
each into a fresh output root. Runs are interleaved base, head, base, head, ... so that a machine busier in one
minute than the next weighs on both sides alike. Per stage: the median of the runs' `run.json` timings and the ratio
head / base; wall time of the whole command beside it. Corpus: by default the 100,000-document holdout of
bench/dedup.py (the one the issue measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _worktree(commit: str, where: Path) -> Path:
    if where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False,
                       capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit], check=True,
                   capture_output=True)
    return where


def _run(tree: Path, corpus: Path, out: Path, stages: str, config: Path | None) -> tuple[float, dict[str, float]]:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLUICE_PREFECT")}
    env.update(SLUICE_WARM_WORKER="off", PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "flows.cli", "run", "--input", str(corpus), "--output", str(out), "--stages", stages,
           "--run-id", "ab"]
    if config is not None:
        cmd += ["--config", str(config)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    timings = json.loads((out / "runs" / "ab" / "run.json").read_text())["timings"]
    return wall, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="20772f8", help="the earlier commit (default: issue 27's reference)")
    parser.add_argument("--corpus", default=str(HERE / "results" / "dedup-work" / "corpus"))
    parser.add_argument("--stages", default="ingest,decontaminate,quality,dedup,publish")
    parser.add_argument("--config", default=None, help="a TOML config both sides can read (default: none)")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved base/head pairs")
    parser.add_argument("--work", default=str(HERE / "results" / "stage-ab-work"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus).resolve()
    if not corpus.exists():
        raise SystemExit(f"{corpus}: no corpus (bench/dedup.py builds the default one)")
    base = _worktree(args.base, work / "base")
    config = Path(args.config).resolve() if args.config else None
    sides = {"base": base, "head": ROOT}
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"base": [], "head": []}
    try:
        for pair in range(args.pairs):
            for side, tree in sides.items():
                wall, timings = _run(tree, corpus, work / f"out-{side}", args.stages, config)
                runs[side].append((wall, timings))
                print(f"pair {pair + 1} {side}: wall {wall:.1f} s  "
                      + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False,
                       capture_output=True)
    head_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    rows = []
    for stage in args.stages.split(",") + ["wall"]:
        def seconds(side: str, stage: str = stage) -> list[float]:
            return [w if stage == "wall" else t[stage] for w, t in runs[side]]
        b, h = seconds("base"), seconds("head")
        rows.append({"stage": stage, "base_s": [round(x, 2) for x in b], "head_s": [round(x, 2) for x in h],
                     "base_median": round(statistics.median(b), 2), "head_median": round(statistics.median(h), 2),
                     "ratio": round(statistics.median(h) / statistics.median(b), 2)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stage-ab.json").write_text(json.dumps({"base": args.base, "head": head_commit, "corpus": str(corpus),
                                                       "pairs": args.pairs, "rows": rows}, indent=2))
    print(f"\n{args.pairs} interleaved pairs, fresh process each (SLUICE_WARM_WORKER=off), {corpus.name}")
    print(f"| stage | {args.base} median (s) | {head_commit} median (s) | ratio | {args.base} runs | "
          f"{head_commit} runs |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['base_median']} | {r['head_median']} | {r['ratio']:.2f}x | "
              f"{', '.join(map(str, r['base_s']))} | {', '.join(map(str, r['head_s']))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
