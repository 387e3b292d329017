"""Markdown: the dataset card of a published version, and the run summary (report/card.md, the Prefect artifact)."""

from __future__ import annotations

from tasks.io.manifests import StageManifest


def summary_rows(manifests: list[StageManifest]) -> list[dict]:
    return [{"stage": m.stage, "rows_in": m.rows_in, "rows_out": m.rows_out, "rows_rejected": m.rows_rejected,
             "contract": "passed" if m.contract_passed else "failed", "seconds": m.seconds} for m in manifests]


def markdown_summary(run: dict, manifests: list[StageManifest]) -> str:
    lines = [f"# Sluice run `{run['run_id']}` — {run['status']}", ""]
    lines += ["| stage | in | out | quarantined | contract | seconds |", "|---|---:|---:|---:|---|---:|"]
    for r in summary_rows(manifests):
        lines.append(f"| {r['stage']} | {r['rows_in']:,} | {r['rows_out']:,} | {r['rows_rejected']:,} | "
                     f"{r['contract']} | {r['seconds']:.2f} |")
    if run.get("error"):
        lines += ["", f"**Error:** {run['error']}"]
    warnings = [f"- {m.stage}: {w}" for m in manifests for w in m.warnings]
    if warnings:
        lines += ["", "**Warnings:**", *warnings]
    if run.get("published"):
        p = run["published"]
        lines += ["", f"Published `{p['dataset']}` v{p['version']} at `{p['uri']}`"]
    return "\n".join(lines) + "\n"


def dataset_card(version: StageManifest, run_manifests: list[StageManifest], description: str) -> str:
    """card.md of a published version: what it holds, where it came from, what was removed and why."""
    published = version.published or {}
    lines = [
        f"# {published['dataset']} v{published['version']}",
        "",
        description or "Curated with Sluice.",
        "",
        f"- run: `{version.run_id}`",
        f"- rows: {version.rows_out:,}",
        f"- published: {published['published_at']}",
        f"- code version: `{version.code_version}`",
        "",
        "## Sources",
        "",
        "| source | rows |",
        "|---|---:|",
    ]
    lines += [f"| `{src}` | {rows:,} |" for src, rows in published.get("rows_by_source", {}).items()]
    lines += ["", "## Stages", "", "| stage | in | out | quarantined | contract |", "|---|---:|---:|---:|---|"]
    for m in run_manifests:
        ok = "passed" if m.contract_passed else "FAILED"
        lines.append(f"| {m.stage} | {m.rows_in:,} | {m.rows_out:,} | {m.rows_rejected:,} | {ok} |")
    lines += ["", "## Quarantine reasons", ""]
    reasons: dict[str, int] = {}
    for m in run_manifests:
        for code, count in m.rejected_by_reason.items():
            reasons[code] = reasons.get(code, 0) + count
    lines += [f"- `{code}`: {count:,}" for code, count in sorted(reasons.items())] or ["- none"]
    lines += ["", "## Contract of this version", ""]
    for r in version.contract.get("results", []):
        lines.append(f"- {'✓' if r['success'] else '✗'} `{r['expectation']}` {r['kwargs']}")
    return "\n".join(lines) + "\n"
