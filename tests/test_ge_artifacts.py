"""Great Expectations as its users know it: the suites are GE ExpectationSuites, the validation results are GE
JSON, and every check of every stage is on an offline page, however many buckets or shards it ran in."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import great_expectations as gx
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema

from schemas.expectations import load_suite, scope_of, scoped


def test_every_suite_file_loads_with_ges_own_api():
    files = sorted((resources.files("schemas") / "suites").iterdir(), key=lambda p: p.name)
    assert len(files) >= 9
    for path in files:
        raw = json.loads(path.read_text())
        suite = gx.ExpectationSuite(**raw)
        assert suite.name == raw["name"] and len(suite.expectations) == len(raw["expectations"]) > 0
        scopes = {e.meta.get("scope", "shard") if e.meta else "shard" for e in suite.expectations}
        assert scopes <= {"shard", "global"}, path.name


def test_scopes_are_read_from_the_expectation_meta():
    dedup = load_suite("dedup")
    globals_ = scoped(dedup, "global")["expectations"]
    assert globals_ and all(scope_of(e) == "global" for e in globals_)
    assert any(e["type"] == "expect_column_values_to_be_unique" for e in globals_)
    assert all(scope_of(e) == "shard" for e in scoped(dedup, "shard")["expectations"])


def test_the_run_writes_ge_validation_results_and_a_contracts_page(demo_run):
    out, run = demo_run
    report = Path(run["report"]).parent
    page = (report / "contracts.html").read_text()
    for stage in run["stages"]:
        data = json.loads((report / "validations" / f"{stage}.json").read_text())
        result = ExpectationSuiteValidationResultSchema().load(data)
        manifest = json.loads((out / "runs" / "demo-run" / stage / "_manifest.json").read_text())
        assert len(result.results) == len(manifest["contract"]["results"]) > 0
        assert result.success is manifest["contract"]["success"]
        assert f'<section id="{stage}">' in page
    # the id uniqueness check of ingest ran in hash buckets; it is one row of the page, with the rows it saw
    ingest = json.loads((out / "runs" / "demo-run" / "ingest" / "_manifest.json").read_text())
    unique = [r for r in ingest["contract"]["results"] if r["expectation"] == "expect_column_values_to_be_unique"]
    assert unique and page.count("expect_column_values_to_be_unique") >= len(run["stages"]) - 1
