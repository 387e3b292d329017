"""report/index.html of a run: counts, quarantine reasons, contracts, timings."""

from __future__ import annotations

import html
import json

from tasks.io.manifests import StageManifest


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(run: dict, manifests: list[StageManifest]) -> str:
    stages = _table(
        ["stage", "rows in", "rows out", "quarantined", "contract", "seconds", "shards (resumed)"],
        [[m.stage, f"{m.rows_in:,}", f"{m.rows_out:,}", f"{m.rows_rejected:,}",
          "passed" if m.contract_passed else "FAILED", m.seconds, f"{m.shards} ({m.shards_resumed})"]
         for m in manifests],
    )
    reasons = _table(
        ["stage", "reason", "rows"],
        [[m.stage, code, f"{n:,}"] for m in manifests for code, n in m.rejected_by_reason.items()],
    )
    contracts = _table(
        ["stage", "expectation", "arguments", "result"],
        [[m.stage, r["expectation"], r["kwargs"], "ok" if r["success"] else f"FAILED {r['result']}"]
         for m in manifests for r in m.contract.get("results", [])],
    )
    error = f"<p class=err>{html.escape(run['error'])}</p>" if run.get("error") else ""
    warned = [(m.stage, w) for m in manifests for w in m.warnings]
    if warned:
        error += "<h2>Warnings</h2><ul>" + "".join(
            f"<li class=err>{html.escape(stage)}: {html.escape(w)}</li>" for stage, w in warned) + "</ul>"
    summaries = [(m.stage, m.summary) for m in manifests if m.summary]
    stage_sections = ""
    for stage, summary in summaries:
        if all(isinstance(b, dict) for b in summary.values()):  # per benchmark (decontaminate)
            stage_sections += f"<h2>{html.escape(stage)}</h2>" + _table(
                ["benchmark", "policy", "items found", "docs hit", "dropped", "redacted", "flagged"],
                [[name, b.get("policy", ""), b.get("items_found", ""), b.get("docs_hit", ""),
                  b.get("docs_dropped", ""), b.get("docs_redacted", ""), b.get("docs_flagged", "")]
                 for name, b in summary.items()])
        else:  # a stage's own figures (score: rows scored, the sample, semantic duplicates, ...)
            stage_sections += f"<h2>{html.escape(stage)}</h2>" + _table(
                ["what", "value"], [[key, value if isinstance(value, int | float | str) or value is None
                                     else json.dumps(value)[:500]] for key, value in summary.items()])
    published = ""
    if run.get("published"):
        p = run["published"]
        published = f"<p>Published <b>{html.escape(p['dataset'])}</b> v{p['version']}: {html.escape(p['uri'])}</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Sluice run {html.escape(run['run_id'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.err{{color:#b00}}</style></head><body>
<h1>Sluice run {html.escape(run['run_id'])} — {html.escape(run['status'])}</h1>{error}{published}
<p>code version {html.escape(run.get('code_version', ''))}; inputs: {html.escape(', '.join(run.get('inputs', [])))}</p>
<h2>Stages</h2>{stages}{stage_sections}<h2>Quarantine</h2>{reasons}
<p>Browse: <code>sluice quarantine {html.escape(run['run_id'])} --output ROOT</code></p>
<h2>Contracts</h2>{contracts}<p><a href="contracts/index.html">Great Expectations Data Docs</a></p>
</body></html>"""
