"""report/index.html of a run: what the run did to the data, as charts first (funnel, quarantine reasons with
sample rows, signal histograms with their thresholds, lengths and languages, duplicate clusters, contamination,
score, selection, augmentation, the change against the previous version), then the tables behind them."""

from __future__ import annotations

import html
import json
import logging

from tasks.io.manifests import StageManifest
from tasks.ops.report import sections

log = logging.getLogger("sluice")

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}.err{color:#b00}figure.chart{margin:1em 0}figcaption{font-weight:600;margin-bottom:4px}
figcaption small{font-weight:400;color:#666;margin-left:.5em}td.text{max-width:560px;font-size:90%}
mark{background:#ffd54a}.muted{color:#777}nav a{margin-right:1em}h2{border-bottom:1px solid #ddd;padding-top:.5em}"""


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, build) -> tuple[str, str]:
    """(nav link, section html); a chart that cannot be drawn says why instead of taking the report down."""
    try:
        body = build()
    except Exception as exc:  # the report is read after a failure too; one broken chart must not hide the rest
        log.warning(f"report: section {title!r} could not be drawn: {type(exc).__name__}: {exc}")
        body = f'<p class="err">This section could not be drawn: {html.escape(f"{type(exc).__name__}: {exc}")}</p>'
    if not body:
        return "", ""
    return (f'<a href="#{anchor}">{html.escape(title)}</a>',
            f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')


def render_html(run: dict, manifests: list[StageManifest], storage=None) -> str:
    by = {m.stage: m for m in manifests}
    parts: list[tuple[str, str]] = [_section("funnel", "Funnel", lambda: sections.funnel(manifests)),
                                    _section("edits", "Edits: what rewrites removed from kept rows",
                                             lambda: sections.edits(manifests, run["run_id"]))]
    if storage is not None:
        parts.append(_section("quarantine", "Quarantine",
                              lambda: sections.quarantine(storage, manifests, run["run_id"])))
        if "quality" in by:
            parts.append(_section("signals", "Quality signals: kept vs rejected, thresholds dashed",
                                  lambda: sections.signals(storage, by["quality"], "q_",
                                                           sections.thresholds(by["quality"]))))
        if manifests:
            parts.append(_section("lengths", "Lengths and languages",
                                  lambda: sections.lengths_and_languages(storage, manifests)))
        if "audit" in by:
            parts.append(_section("audit", "Audit: poisoning findings", lambda: sections.audit_findings(by["audit"])))
        if "dedup" in by:
            parts.append(_section("dedup", "Duplicates", lambda: sections.dedup_clusters(storage, by["dedup"])))
        if "decontaminate" in by:
            parts.append(_section("contamination", "Benchmark contamination",
                                  lambda: sections.contamination(storage, by["decontaminate"])))
        if "score" in by:
            parts.append(_section("score", "Scores", lambda: sections.signals(storage, by["score"], "score_", {})))
        if "select" in by:
            parts.append(_section("select", "Selection", lambda: sections.selection(storage, by["select"])))
        if "augment" in by:
            parts.append(_section("augment", "Augmentation", lambda: sections.augment_share(by["augment"])))
        if "publish" in by and (by["publish"].published or {}).get("tokens"):
            parts.append(_section("tokens", "Token shards", lambda: sections.tokens_by_source(by["publish"])))
        parts.append(_section("change", "Change against the previous version",
                              lambda: sections.change_vs_previous(storage, run)))
    parts = [p for p in parts if p[1]]
    stages = _table(
        ["stage", "rows in", "synthetic", "rows out", "quarantined", "edited", "chars removed by edits", "contract",
         "seconds", "shards (resumed)"],
        [[m.stage, f"{m.rows_in:,}", f"{m.rows_synthetic:,}", f"{m.rows_out:,}", f"{m.rows_rejected:,}",
          f"{sections.edited_rows(m):,}", sections.chars_removed(m), "passed" if m.contract_passed else "FAILED",
          m.seconds, f"{m.shards} ({m.shards_resumed})"]
         for m in manifests],
    )
    reasons = _table(
        ["stage", "reason", "rows"],
        sorted([[m.stage, code, n] for m in manifests for code, n in m.rejected_by_reason.items()],
               key=lambda r: (-r[2], r[0], r[1])),
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
    figures = ""
    for m in manifests:
        if not m.summary:
            continue
        if all(isinstance(b, dict) for b in m.summary.values()):  # per benchmark (decontaminate)
            figures += f"<h3>{html.escape(m.stage)}</h3>" + _table(
                ["benchmark", "policy", "items found", "docs hit", "dropped", "redacted", "flagged"],
                [[name, b.get("policy", ""), b.get("items_found", ""), b.get("docs_hit", ""),
                  b.get("docs_dropped", ""), b.get("docs_redacted", ""), b.get("docs_flagged", "")]
                 for name, b in m.summary.items()])
        else:  # a stage's own figures (score: rows scored, the sample, semantic duplicates, ...)
            figures += f"<h3>{html.escape(m.stage)}</h3>" + _table(
                ["what", "value"], [[key, value if isinstance(value, int | float | str) or value is None
                                     else json.dumps(value)[:500]] for key, value in m.summary.items()])
    published = ""
    if run.get("published"):
        p = run["published"]
        published = f"<p>Published <b>{html.escape(p['dataset'])}</b> v{p['version']}: {html.escape(p['uri'])}</p>"
    nav = "<nav>" + "".join(link for link, _ in parts) + '<a href="#tables">Tables</a></nav>'
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Sluice run {html.escape(run['run_id'])}</title>
<style>{STYLE}</style></head><body>
<h1>Sluice run {html.escape(run['run_id'])} — {html.escape(run['status'])}</h1>{error}{published}
<p>code version {html.escape(run.get('code_version', ''))}; inputs: {html.escape(', '.join(run.get('inputs', [])))}</p>
{nav}{''.join(body for _, body in parts)}
<section id="tables"><h2>Tables</h2><h3>Stages</h3>{stages}<h3>Quarantine reasons</h3>{reasons}{figures}
<h3>Contracts</h3>{contracts}<p><a href="contracts.html">Every contract check</a> (offline; GE validation results as
JSON in validations/); <a href="contracts/index.html">Great Expectations Data Docs</a> (need network for their
scripts)</p></section>
</body></html>"""
