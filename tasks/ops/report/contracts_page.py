"""Every data contract of a run, as people who use Great Expectations expect to find it, offline:
`report/contracts.html` (our own page, no script, rendered from the merged results, so a check done in hash
buckets or per shard shows once, with its counts, at any size) and `report/validations/<stage>.json`, each a GE
ExpectationSuiteValidationResult that GE's own schema loads. GE's Data Docs are still copied to `contracts/`,
but they fetch jQuery, Bootstrap and Vega from CDNs and are blank offline."""

from __future__ import annotations

import html
import json

from tasks.io.manifests import StageManifest

GE_PAGE_NOTE = ("Great Expectations' own Data Docs are under contracts/ too; they load their scripts from CDNs, so "
                "they render only with network access.")


def validation_result(m: StageManifest) -> dict:
    """The stage's merged contract as a GE ExpectationSuiteValidationResult (JSON dict)."""
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    results = m.contract.get("results", [])
    evrs = [ExpectationValidationResult(
        success=bool(r["success"]),
        expectation_config=ExpectationConfiguration(type=r["expectation"], kwargs=dict(r["kwargs"]),
                                                    meta={"scope": r.get("scope", "shard")}),
        result={k: v for k, v in (r.get("result") or {}).items() if k != "exception"},
        exception_info={"raised_exception": bool((r.get("result") or {}).get("exception")),
                        "exception_message": (r.get("result") or {}).get("exception"), "exception_traceback": None})
        for r in results]
    passed = sum(1 for r in results if r["success"])
    return ExpectationSuiteValidationResult(
        success=bool(m.contract.get("success", True)), results=evrs, suite_name=m.contract.get("suite", m.stage),
        statistics={"evaluated_expectations": len(results), "successful_expectations": passed,
                    "unsuccessful_expectations": len(results) - passed,
                    "success_percent": 100.0 * passed / len(results) if results else 100.0},
        meta={"run_id": m.run_id, "stage": m.stage, "rows_in": m.rows_in, "rows_out": m.rows_out},
    ).to_json_dict()


def contracts_html(run: dict, manifests: list[StageManifest]) -> str:
    sections = []
    for m in manifests:
        rows = []
        for r in m.contract.get("results", []):
            res = r.get("result") or {}
            counts = ", ".join(f"{k} {v}" for k, v in res.items() if k in (
                "element_count", "unexpected_count", "unexpected_percent", "observed_value", "exception"))
            args = ", ".join(f"{k}={v!r}" for k, v in r["kwargs"].items())
            status = "passed" if r["success"] else "FAILED"
            rows.append(f'<tr class="{status.lower()}"><td>{status}</td><td><code>{html.escape(r["expectation"])}'
                        f"</code></td><td>{html.escape(args)}</td><td>{html.escape(r.get('scope', 'shard'))}</td>"
                        f"<td>{html.escape(counts)}</td></tr>")
        failures = "".join(f"<li class=err>{html.escape(f)}</li>" for f in m.contract.get("failures", []))
        sections.append(
            f'<section id="{html.escape(m.stage)}"><h2>{html.escape(m.stage)}: '
            f'{"passed" if m.contract_passed else "FAILED"}</h2><p>suite <code>'
            f'{html.escape(str(m.contract.get("suite", "")))}</code>; {m.rows_out:,} rows out; GE JSON: '
            f'<a href="validations/{html.escape(m.stage)}.json">validations/{html.escape(m.stage)}.json</a></p>'
            + (f"<ul>{failures}</ul>" if failures else "")
            + "<table><thead><tr><th>result</th><th>expectation</th><th>arguments</th><th>scope</th><th>counts</th>"
              "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Contracts of run {html.escape(run['run_id'])}
</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px
solid #ccc;padding:4px 8px;text-align:left}}tr.failed td{{background:#fde2dc}}.err{{color:#b00}}</style></head><body>
<h1>Data contracts of run {html.escape(run['run_id'])}</h1><p><a href="index.html">back to the report</a>.
Checks with scope "shard" ran on every shard and are summed here; "global" checks ran once at commit (uniqueness in
hash buckets, merged); "stage" checks are the reject-rate ceilings.</p>{''.join(sections)}
<p class="muted">{html.escape(GE_PAGE_NOTE)}</p></body></html>"""


def write_contracts(write, run: dict, manifests: list[StageManifest]) -> None:
    """`write(relative path under report/, bytes)`."""
    write("contracts.html", contracts_html(run, manifests).encode())
    for m in manifests:
        write(f"validations/{m.stage}.json", json.dumps(validation_result(m), indent=1, default=str).encode())
