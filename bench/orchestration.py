"""Orchestration overhead: what Prefect (flow, task runs, mapping, state tracking) adds to a run, per runner and
shard size.

    .venv/bin/python bench/orchestration.py [--docs 100000] [--shard-rows 2000,5000,25000]
        [--stages ingest,dedup,publish] [--runners local,dask] [--task-rows 0,20000]
    .venv/bin/python bench/orchestration.py --cli [--cli-stages 'ingest,decontaminate;ingest,quality'] [--repeat 3]

For each shard size the same corpus is curated three ways, each into a fresh output root (nothing resumed):
  direct  the runner's functions (tasks/runner.py) called from a plain ThreadPoolExecutor, no Prefect at all;
  local   `run_curate` with the ThreadPoolTaskRunner (what `sluice run` does), on Prefect's embedded server;
  dask    `run_curate` with prefect-dask's DaskTaskRunner on a running 2-process LocalCluster (as in production,
          where the cluster outlives runs; its cold start is measured and reported separately).
Overhead = (T_runner - T_direct) / T_runner. The direct path does the same data work, contracts and report, so the
difference is orchestration. One-off costs are excluded: every path first runs once on a 500-doc warm-up corpus
(imports, the Prefect server's start, Dask workers' imports).
Corpus: documents of 6 random KJV verses, in 4 JSONL files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
FILES = 4


def build(folder: Path, n_docs: int, seed: int = 5, per_doc: int = 6, files: int = FILES, prefix: str = "d") -> None:
    """`n_docs` documents of `per_doc` random KJV verses, in `files` JSONL files (also bench/incremental.py's)."""
    from tasks.ops.demo_corpus import kjv_records

    verses = [r["text"] for r in kjv_records()]
    rng = random.Random(seed)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per = -(-n_docs // files)
    for f in range(files):
        with open(folder / f"docs-{f:02d}.jsonl", "w") as fh:
            for i in range(f * per, min(n_docs, (f + 1) * per)):
                fh.write(json.dumps({"id": f"{prefix}{i}", "text": " ".join(rng.sample(verses, per_doc))}) + "\n")


def run_direct(inputs: list[str], out: str, config_path: str, run_id: str, stages: list[str], workers: int) -> None:
    """The flow's data work without Prefect: same runner functions, same order, same thread count."""
    from schemas.config import load_config
    from tasks.io.readers import resolve_inputs
    from tasks.io.storage import Storage
    from tasks.ops.report import write_report
    from tasks.runtime import lifecycle, registry, runner
    from tasks.runtime.context import RunContext
    from tasks.runtime.contracts import close_contracts, contracts_for

    cfg = load_config(config_path)
    ctx = RunContext(Storage(out), run_id, cfg, {})
    contracts = contracts_for(run_id)
    manifests: list = []
    previous = None
    with ThreadPoolExecutor(workers) as pool:
        for name in stages:
            started = time.perf_counter()
            stage = registry.STAGES[name]
            target = None
            if stage.kind == "source":
                files = resolve_inputs(inputs)
                stage_inputs = [f.as_dict() for f in files]
                groups = [[files[i] for i in g] for g in runner.file_groups(files, workers)]
                receipts = [r for rs in pool.map(lambda a, st=stage: runner.source_group(ctx, st, *a),
                                                 enumerate(groups)) for r in rs]
            else:
                stage_inputs, shards = [o.as_json() for o in previous.outputs], runner.shards_of(previous)
                if stage.kind == "sink":
                    target = stage.sink.open(ctx, stage_inputs)
                    receipts = list(pool.map(lambda a, st=stage, t=target: runner.sink_shard(ctx, st, a[0], a[1][1], t),
                                             enumerate(shards)))
                elif stage.plan is not None:
                    from tasks.runtime import partitioned

                    def units(step, names, inputs, gen, counts, upstream, published, st=stage):
                        return list(pool.map(lambda a: partitioned.run_unit(ctx, st, step.name, a[0], gen, counts,
                                                                            upstream, a[1], published),
                                             zip(names, inputs, strict=True)))

                    def applied(gen, counts, upstream, st=stage, sh=shards):
                        return list(pool.map(lambda s: partitioned.apply_shard(ctx, st, s[0], s[1], gen, counts,
                                                                               upstream), sh))

                    receipts, _, _ = partitioned.execute(ctx, stage, previous, units, applied)
                else:
                    receipts = list(pool.map(lambda s, st=stage: runner.map_shard(ctx, st, s[0], s[1]), shards))
            previous = runner.commit_stage(ctx, stage, receipts, stage_inputs, contracts, started, sink_target=target)
            lifecycle.release(name)
            manifests.append(previous)
    run = {"run_id": run_id, "status": "succeeded", "inputs": inputs, "stages": stages, "timings": {}}
    write_report(ctx, run, manifests, contracts)
    close_contracts(run_id)
    contracts.close()


def cli_runs(args) -> int:
    """`sluice run` as a user types it, in a subprocess: Prefect's temporary server per command
    (SLUICE_PREFECT=ephemeral, the old behaviour); the shared server's first run (cold: it starts the server and
    the warm worker); later runs in a fresh process of their own (SLUICE_WARM_WORKER=off: the cold-process case,
    every import and GE context made anew); later runs forked from the warm worker (the default). Wall time
    against the seconds the stages themselves took (run.json timings), and each stage's seconds (min-max over the
    runs: a stage slower in a fresh process than through the warm worker shows here); the later runs are repeated
    `--repeat` times."""
    import subprocess

    from flows.launcher import prefect_server

    work = Path(args.work)
    corpus = work / "corpus"
    build(corpus, args.docs)
    sluice = str(Path(sys.executable).parent / "sluice")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SLUICE_PREFECT", "SLUICE_WARM_WORKER")}
    modes = {"ephemeral": ({"SLUICE_PREFECT": "ephemeral"}, 1), "cold": ({}, 1),
             "warm, own process": ({"SLUICE_WARM_WORKER": "off"}, args.repeat), "warm worker": ({}, args.repeat)}
    rows = []
    for stages in args.cli_stages.split(";"):
        prefect_server.stop()
        for mode, (extra, repeat) in modes.items():
            walls, stage_times, per_stage = [], [], {}
            for attempt in range(repeat):
                if mode == "warm worker" and attempt == 0:
                    _wait_for_worker()
                out = work / "cli-run"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                proc = subprocess.run([sluice, "run", "--input", str(corpus), "--output", str(out), "--stages",
                                       stages, "--run-id", "bench"], capture_output=True, text=True,
                                      env={**env, **extra})
                walls.append(time.perf_counter() - t)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-2000:])
                run = json.loads((out / "runs" / "bench" / "run.json").read_text())
                stage_times.append(sum(run["timings"].values()))
                for name, seconds in run["timings"].items():
                    per_stage.setdefault(name, []).append(seconds)
            wall, stage_s = sum(walls) / repeat, sum(stage_times) / repeat
            tasks = sum(json.loads((out / "runs" / "bench" / s / "_manifest.json").read_text())["shards"]
                        for s in stages.split(","))
            rows.append({"stages": stages, "mode": mode, "runs": repeat, "wall_s": round(wall, 2),
                         "stage_s": round(stage_s, 2), "overhead": round((wall - stage_s) / stage_s, 4),
                         "shard_tasks": tasks,
                         "stage_seconds": {n: [round(x, 2) for x in v] for n, v in per_stage.items()}})
            print(f"{stages:<24} {mode:<18} wall {wall:7.2f} s  stages {stage_s:7.2f} s  ({repeat} runs)  "
                  + ", ".join(f"{n} {min(v):.2f}-{max(v):.2f} s" for n, v in per_stage.items()), flush=True)
    prefect_server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration-cli.json").write_text(json.dumps({"docs": args.docs, "rows": rows}, indent=2))
    print(f"\n{args.docs:,} docs, `sluice run` in a subprocess")
    print("| stages | Prefect server | runs | wall (s) | stages (s) | wall over stage time | shard tasks | "
          "each stage, min-max (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        each = ", ".join(f"{n} {min(v):.2f}-{max(v):.2f}" for n, v in r["stage_seconds"].items())
        print(f"| {r['stages']} | {r['mode']} | {r['runs']} | {r['wall_s']} | {r['stage_s']} | {r['overhead']:+.1%} | "
              f"{r['shard_tasks']} | {each} |")
    return 0


def _wait_for_worker(timeout: float = 120) -> None:
    from flows.launcher import warm_worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = warm_worker.read_record()
        if record and Path(record["socket"]).exists():
            return
        time.sleep(0.5)
    raise SystemExit("the warm worker did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--shard-rows", default="2000,5000,25000")
    parser.add_argument("--stages", default="ingest,dedup,publish")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runners", default="local,dask")
    parser.add_argument("--work", default=str(RESULTS / "orchestration-work"))
    parser.add_argument("--cli", action="store_true", help="time `sluice run` in a subprocess: temporary server vs "
                        "the shared server, cold and warm (issue 16)")
    parser.add_argument("--cli-stages", default="ingest,decontaminate;ingest,quality",
                        help="';'-separated stage lists for --cli")
    parser.add_argument("--task-rows", default=None,
                        help="comma-separated [runner] task_rows values to compare in one go (0: one Prefect task "
                        "per shard; unset: the default)")
    parser.add_argument("--repeat", type=int, default=3, help="--cli: runs of each warm mode, averaged")
    args = parser.parse_args()
    if args.cli:
        return cli_runs(args)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.curate import _api_url_for_workers, run_curate

    os.environ["PREFECT_API_URL"] = _api_url_for_workers()  # one server for this process and the Dask workers
    work = Path(args.work)
    corpus, warm = work / "corpus", work / "warm-up"
    build(corpus, args.docs)
    build(warm, 500)
    stages = args.stages.split(",")
    runners = args.runners.split(",")
    cluster, cold_start = None, None
    if "dask" in runners:
        from distributed import LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"PREFECT_API_URL": os.environ["PREFECT_API_URL"]})
        cluster_start = time.perf_counter() - t
    address = cluster.scheduler_address if cluster else None

    def run(runner: str, inputs: Path, out: Path, cfg: Path) -> float:
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        if runner == "direct":
            run_direct([str(inputs)], str(out), str(cfg), "bench", stages, args.workers)
        else:
            run_curate([str(inputs)], str(out), str(cfg), "bench", stages, args.workers, runner, address)
        return time.perf_counter() - t

    rows = []
    for shard_rows in (int(s) for s in args.shard_rows.split(",")):
        configs = {}
        for task_rows in (args.task_rows.split(",") if args.task_rows else [None]):
            cfg = work / f"shard-{shard_rows}-{task_rows}.toml"
            runner_cfg = f"[runner]\ntask_rows = {task_rows}\n" if task_rows is not None else ""
            cfg.write_text(f'[ingest]\nshard_rows = {shard_rows}\n[publish]\ndataset = "bench"\n{runner_cfg}')
            configs[task_rows] = cfg
        cfg = next(iter(configs.values()))
        for runner in ["direct", *runners]:
            seconds = run(runner, warm, work / f"warm-{runner}", cfg)
            if runner == "dask" and cold_start is None:
                cold_start = cluster_start + seconds
                print(f"Dask LocalCluster start {cluster_start:.1f} s + first (warm-up) run {seconds:.1f} s")
        timings = {"direct": run("direct", corpus, work / f"out-{shard_rows}-direct", cfg)}
        print(f"shard_rows {shard_rows:>6}  direct {timings['direct']:8.2f} s", flush=True)
        variants = [(runner, task_rows) for runner in runners for task_rows in configs]
        for runner, task_rows in variants:
            timings[runner, task_rows] = run(runner, corpus, work / f"out-{shard_rows}-{runner}", configs[task_rows])
            print(f"shard_rows {shard_rows:>6}  {runner:<6} task_rows {task_rows or 'default'} "
                  f"{timings[runner, task_rows]:8.2f} s", flush=True)
        shards = json.loads((work / f"out-{shard_rows}-direct" / "runs" / "bench" / stages[0] / "_manifest.json")
                            .read_text())["shards"]
        for runner, task_rows in variants:
            took = timings[runner, task_rows]
            rows.append({"shard_rows": shard_rows, "shards": shards, "runner": runner, "task_rows": task_rows,
                         "direct_s": round(timings["direct"], 2), "runner_s": round(took, 2),
                         "overhead": round((took - timings["direct"]) / took, 4)})
    if cluster is not None:
        cluster.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration.json").write_text(json.dumps({"docs": args.docs, "stages": stages, "rows": rows,
                                                            "dask_cold_start_s": cold_start}, indent=2))
    print(f"\n{args.docs:,} docs, stages {','.join(stages)}, {args.workers} workers")
    print("| shard rows | shards per stage | runner | task_rows | no Prefect (s) | with Prefect (s) | overhead |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shard_rows']:,} | {r['shards']} | {r['runner']} | {r['task_rows'] or 'default'} | "
              f"{r['direct_s']} | {r['runner_s']} | {r['overhead']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
