"""Markdown: the dataset card of a published version, and the run summary (report/card.md, the Prefect artifact)."""

from __future__ import annotations

from tasks.io import layout
from tasks.io.manifests import StageManifest


def summary_rows(manifests: list[StageManifest]) -> list[dict]:
    return [{"stage": m.stage, "rows_in": m.rows_in, "rows_out": m.rows_out, "rows_rejected": m.rows_rejected,
             "rows_edited": m.stats.counts.get("edits.rows", 0),
             "contract": "passed" if m.contract_passed else "failed", "seconds": m.seconds} for m in manifests]


def markdown_summary(run: dict, manifests: list[StageManifest]) -> str:
    lines = [f"# Sluice run `{run['run_id']}` — {run['status']}", ""]
    lines += ["| stage | in | out | quarantined | edited | contract | seconds |", "|---|---:|---:|---:|---:|---|---:|"]
    for r in summary_rows(manifests):
        lines.append(f"| {r['stage']} | {r['rows_in']:,} | {r['rows_out']:,} | {r['rows_rejected']:,} | "
                     f"{r['rows_edited']:,} | {r['contract']} | {r['seconds']:.2f} |")
    if run.get("error"):
        lines += ["", f"**Error:** {run['error']}"]
    warnings = [f"- {m.stage}: {w}" for m in manifests for w in m.warnings]
    if warnings:
        lines += ["", "**Warnings:**", *warnings]
    if run.get("published"):
        p = run["published"]
        lines += ["", f"Published `{p['dataset']}` v{p['version']} at `{p['uri']}`"]
    return "\n".join(lines) + "\n"


SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
ARROW_TO_HF = {"string": "string", "large_string": "string", "double": "float64", "float": "float32",
               "halffloat": "float16", "bool": "bool", "timestamp[us, tz=UTC]": "timestamp[us, tz=UTC]",
               **{f"{sign}int{bits}": f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}}


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1B")


def _feature_yaml(name: str, arrow_type: str) -> list[str]:
    inner = arrow_type.removeprefix("list<item: ").removeprefix("large_list<item: ").removesuffix(">")
    if inner != arrow_type and inner in ARROW_TO_HF:
        return [f"  - name: {name}", f"    sequence: {ARROW_TO_HF[inner]}"]
    return [f"  - name: {name}", f"    dtype: {ARROW_TO_HF.get(arrow_type, 'string')}"]


def data_files(version: StageManifest) -> list[str]:
    """The version's data files relative to its folder: `data/*.parquet`, or, when it shares files with the
    versions before it (append), each file (`../v1/data/part-00000.parquet`, ...)."""
    published = version.published or {}
    own = f"{layout.version_dir(published['dataset'], published['version'])}/"
    paths = [o.path for o in version.outputs]
    if all(p.startswith(own + layout.VERSION_DATA + "/") for p in paths):
        return [f"{layout.VERSION_DATA}/*.parquet"]
    parent = own.rsplit("/", 2)[0] + "/"
    return [p.removeprefix(own) if p.startswith(own) else "../" + p.removeprefix(parent) for p in paths]


def front_matter(published: dict, rows: int, publish_cfg, features: dict[str, str],
                 files: list[str] | None = None, num_bytes: int = 0) -> list[str]:
    """Hugging Face dataset-card metadata: license, languages, size, features, and the data files of the default
    config (so `datasets.load_dataset(<version folder>)` reads exactly the version's files)."""
    files = files or [f"{layout.VERSION_DATA}/*.parquet"]
    languages = sorted(published.get("rows_by_language") or {})
    lines = ["---", f"license: {publish_cfg.license}"]
    lines += ["language:", *(f"- {code}" for code in languages)] if languages else []
    lines += ["size_categories:", f"- {size_category(rows)}", "configs:", "- config_name: default", "  data_files:",
              "  - split: train"]
    lines += [f"    path: {files[0]}"] if len(files) == 1 else ["    path:", *(f"    - {f}" for f in files)]
    if features and all(t in ARROW_TO_HF or t.startswith(("list<", "large_list<")) for t in features.values()):
        lines += ["dataset_info:", "  features:"]
        lines += [line for name, t in features.items() for line in _feature_yaml(name, t)]
        # `datasets` warns on a split without num_bytes; the Parquet bytes stand in for the Arrow size
        lines += ["  splits:", "  - name: train", f"    num_bytes: {num_bytes}", f"    num_examples: {rows}",
                  f"  download_size: {num_bytes}", f"  dataset_size: {num_bytes}"]
    return [*lines, "---", ""]


def _limitations(published: dict, run_manifests: list[StageManifest]) -> list[str]:
    """What a user of this version should know before training on it, from what the run did."""
    by = {m.stage: m for m in run_manifests}
    out = []
    if "quality" in by:
        out.append("- The quality rules (Gopher, C4, FineWeb) and their thresholds were made for English web pages; "
                   "on other text they reject and keep differently (the run's report shows each signal against its "
                   "threshold).")
    if "dedup" in by:
        out.append("- Duplicates are found by exact normalized text and MinHash at Jaccard ≥ the configured "
                   "threshold; paraphrases below it remain.")
    if "decontaminate" in by:
        out.append("- Benchmark contamination is found by 13-gram overlap (and, where the score stage ran, embedding "
                   "similarity); a benchmark not configured is not checked.")
    skipped = [s for s in ("decontaminate", "quality", "dedup") if s not in by]
    if skipped:
        out.append(f"- Not run for this version: {', '.join(skipped)}; its rows were not checked for that.")
    if "score" in by and (by["score"].summary or {}).get("sample", 1.0) < 1.0:
        out.append(f"- Model scores cover a sample of rows only ({by['score'].summary['note']}); rows outside it "
                   "have null scores.")
    synthetic = sum(m.rows_synthetic for m in run_manifests)
    if synthetic:
        out.append(f"- {synthetic:,} rows were generated by a model (columns `syn_*` say which, from which parent).")
    edited = sum(m.stats.counts.get("edits.rows", 0) for m in run_manifests)
    if edited:
        out.append(f"- {edited:,} rows were edited (lines, boilerplate or PII removed); the run's edit ledger says "
                   "what (`sluice edits`).")
    return out


def _lineage(published: dict) -> list[str]:
    if published.get("tombstone"):
        t = published["tombstone"]
        return [f"- made by `sluice forget` from v{published.get('base_version')}: "
                f"{published.get('rows_forgotten', 0):,} rows removed ({t.get('selector')}), reason: {t.get('reason')}"]
    if published.get("base_version"):
        return [f"- appended {published.get('rows_added', 0):,} rows to v{published['base_version']}"]
    return []


def _token_lines(tokens: dict | None, rows: int) -> list[str]:
    """The card's section on the token shards: tokenizer, layout, how to read them, tokens by source."""
    if not tokens:
        return []
    tok = tokens["tokenizer"]
    covers = "every row" if tokens["rows"] == rows else f"{tokens['rows']:,} of the {rows:,} rows"
    packing = f"packed in rows of {tokens['seq_len']:,} tokens" if tokens["seq_len"] else "documents back to back"
    order = f"shuffled per part (seed {tokens['shuffle_seed']})" if tokens["shuffle_seed"] is not None else \
        "in the published order"
    lines = ["", "## Token shards", "",
             f"{tokens['tokens']:,} tokens of {covers}, tokenized with {tok['name']} (tokenizer.json sha256 "
             f"`{tok['sha256'][:16]}…`, {tok['vocab_size']:,} ids, EOS id {tok['eos_id']} after every document), "
             f"{tok['dtype']}, {packing}, {order}, in {len(tokens['parts'])} part(s) under `tokens/`: "
             "`part-NNNNN.bin` (`numpy.memmap(path, dtype)`), `part-NNNNN.idx` (uint64 document offsets) and "
             "`part-NNNNN.docs.parquet` (id, source, tokens per document).", "",
             "| source | tokens |", "|---|---:|"]
    return lines + [f"| `{src}` | {n:,} |" for src, n in tokens["tokens_by_source"].items()]


def dataset_card(version: StageManifest, run_manifests: list[StageManifest], publish_cfg,
                 features: dict[str, str] | None = None, examples: list[dict] | None = None) -> str:
    """README.md of a published version: Hugging Face front matter, then what it holds, where it came from, what
    was removed and why."""
    published = version.published or {}
    files = data_files(version)
    lines = front_matter(published, version.rows_out, publish_cfg, features or {}, files,
                         sum(o.bytes for o in version.outputs))
    lines += [
        f"# {published['dataset']} v{published['version']}",
        "",
        publish_cfg.description or "Curated with Sluice.",
        "",
        f"- run: `{version.run_id}`",
        f"- rows: {version.rows_out:,}",
        f"- published: {published['published_at']}",
        f"- code version: `{version.code_version}`",
        *([f"- **a trial run**: made from only the first {published['trial']['limit_rows']:,} input rows "
           "(`--limit`), published with `--publish`"] if published.get("trial") else []),
        ("- data: `data/*.parquet` (polars, duckdb, pandas, pyarrow.dataset, `datasets.load_dataset` on this folder)"
         if files == [f"{layout.VERSION_DATA}/*.parquet"] else
         f"- data: {len(files)} files, some shared with earlier versions (listed in the front matter and in "
         "`_manifest.json`; `datasets.load_dataset` on this folder reads them, `sluice files` prints their URIs)"),
        *_lineage(published),
        "",
        "## Sources",
        "",
        "| source | rows |",
        "|---|---:|",
    ]
    lines += [f"| `{src}` | {rows:,} |" for src, rows in published.get("rows_by_source", {}).items()]
    lines += _token_lines(published.get("tokens"), version.rows_out)
    if examples:
        lines += ["", "## Example rows", ""]
        for row in examples:
            text = " ".join(str(row.get("text") or "").split())
            shown = {k: v for k, v in row.items() if k in ("id", "source", "label") and v is not None}
            lines.append(f"- {', '.join(f'{k}: `{v}`' for k, v in shown.items())}: "
                         f"{text[:300]}{'…' if len(text) > 300 else ''}")
    excluded = published.get("columns_excluded") or []
    if excluded:
        lines += ["", "## Columns kept in the run only", "",
                  "`publish.columns` leaves these out of the published files (the run's parts keep them): "
                  + ", ".join(f"`{c}`" for c in excluded) + "."]
    lines += ["", "## Limitations", "", *_limitations(published, run_manifests)]
    left_out = published.get("columns_left_out") or []
    if left_out:
        lines += ["", "## Columns left out", "",
                  "No row of this version has a value in these columns of the pipeline's schema, so the published "
                  "files do not carry them: " + ", ".join(f"`{c}`" for c in left_out) + "."]
    lines += ["", "## Stages", "", "| stage | in | out | quarantined | contract |", "|---|---:|---:|---:|---|"]
    for m in run_manifests:
        ok = "passed" if m.contract_passed else "FAILED"
        lines.append(f"| {m.stage} | {m.rows_in:,} | {m.rows_out:,} | {m.rows_rejected:,} | {ok} |")
    lines += ["", "## Quarantine reasons", ""]
    reasons: dict[str, int] = {}
    for m in run_manifests:
        for code, count in m.rejected_by_reason.items():
            reasons[code] = reasons.get(code, 0) + count
    lines += [f"- `{code}`: {count:,}" for code, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
              ] or ["- none"]
    lines += ["", "## Contract of this version", ""]
    for r in version.contract.get("results", []):
        lines.append(f"- {'✓' if r['success'] else '✗'} `{r['expectation']}` {r['kwargs']}")
    return "\n".join(lines) + "\n"
