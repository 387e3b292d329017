"""Commands that read a run's records: runs, show, sample, quarantine, edits, audit, benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli.common import _load_run, _storage, orjson_line


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


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit stage's findings, most severe and largest first, each with its evidence and example rows."""
    from schemas.config import load_config
    from tasks.stages import audit

    args.stage = "audit"
    loaded = _load_stage(args)
    if loaded is None:
        return 2
    _, m = loaded
    reviewed = set(load_config(args.config).audit.reviewed) if args.config else set()
    found = [f for f in audit.findings_of(m.stats) if args.kind is None or f["kind"] == args.kind]
    if args.format == "jsonl":
        for f in found:
            sys.stdout.write(orjson_line({**f, "name": audit.name_of(f), "reviewed": audit.name_of(f) in reviewed}))
        return 0
    if not found:
        print(f"run {args.run_id}: the audit found nothing" + (f" of kind {args.kind}" if args.kind else ""))
        return 0
    flagged = m.stats.counts.get("audit.flagged", 0)
    print(f"run {args.run_id}: {len(found)} finding{'s' if len(found) != 1 else ''}, {flagged:,} rows flagged; "
          "accept one by listing its name in audit.reviewed")
    for f in found[:args.limit]:
        evidence = {k: v for k, v in f["evidence"].items() if k != "examples"}
        mark = "  (reviewed)" if audit.name_of(f) in reviewed else ""
        print(f"\n{f['severity']:<6} {audit.name_of(f)!r}: {f['rows_flagged']:,} rows{mark}")
        print("    " + ", ".join(f"{k} {v}" for k, v in evidence.items()))
        if f["evidence"].get("examples"):
            print("    examples: " + ", ".join(f["evidence"]["examples"]))
    if len(found) > args.limit:
        print(f"\n... {len(found) - args.limit} more (use --limit, --kind, --format jsonl)")
    return 0
