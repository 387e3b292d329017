"""Decontamination: real GSM8K and HumanEval items planted in real text, hard negatives, policies, errors, contract."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import REPO
from judge import judge

from flows.cli import main
from schemas.config import BenchmarkConfig, DecontaminateConfig, SluiceConfig
from tasks.ops.demo_corpus import kjv_records
from tasks.stages.decontaminate import BenchmarkError, build_index, builtin_path, decontaminate
from tasks.stages.decontaminate.index import normalized
from tasks.stages.decontaminate.matches import word_offsets

VERSES = [r["text"] for r in kjv_records()]
GSM8K = [orjson.loads(line) for line in Path(builtin_path("gsm8k")).read_text().splitlines()]
HUMANEVAL = [orjson.loads(line) for line in gzip.decompress(Path(builtin_path("humaneval")).read_bytes()).splitlines()
             if line.strip()]


def filler(start: int, chars: int) -> str:
    out, i = [], start
    while sum(len(v) + 1 for v in out) < chars:
        out.append(VERSES[i % len(VERSES)])
        i += 1
    return " ".join(out)


def norm(text: str) -> str:
    return pl.select(normalized(pl.lit(text))).item()


def frame(texts: list[str], timestamps: list[datetime | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts,
                         "timestamp": timestamps or [None] * len(texts)},
                        schema={"id": pl.String, "text": pl.String, "timestamp": pl.Datetime("us", "UTC")})


def evidence_of(rejected: pl.DataFrame) -> dict[str, dict]:
    return {r["id"]: json.loads(r["evidence"]) for r in rejected.iter_rows(named=True)}


def test_builtin_index_counts_and_template_free():
    index = build_index(DecontaminateConfig())
    assert index.counts() == {"gsm8k": 1319, "humaneval": 164}
    assert index.keys.size > 100_000 and index.short.height == 0


def test_planted_items_are_caught_in_every_form():
    g, h = GSM8K[10], HUMANEVAL[20]
    item_words = f"{g['question']} {g['answer']}".split()
    cases = {
        "verbatim-middle": f"{filler(0, 6000)}\n\n{g['question']}\n{g['answer']}\n\n{filler(500, 6000)}",
        "case-space-punct": re.sub(r"\s+", "   ", GSM8K[11]["question"].upper()).replace(",", ";").replace("?", "!")
        + " " + GSM8K[11]["answer"].replace("\n", "  "),
        "span-60pct": filler(900, 800) + " " + " ".join(item_words[: int(len(item_words) * 0.6)]),
        "answer-only": f"Worked solution:\n{GSM8K[12]['answer']}\n" + filler(1200, 400),
        "question-only": filler(1500, 300) + " Q: " + GSM8K[13]["question"] + " " + filler(1600, 3000),
        "humaneval-full": filler(2000, 2000) + "\n```python\n" + h["prompt"] + h["canonical_solution"] + "```\n",
        "humaneval-prompt": "Exercise:\n" + HUMANEVAL[21]["prompt"] + "\n" + filler(2500, 500),
    }
    expected = {"verbatim-middle": ("gsm8k", "gsm8k-11"), "case-space-punct": ("gsm8k", "gsm8k-12"),
                "span-60pct": ("gsm8k", "gsm8k-11"), "answer-only": ("gsm8k", "gsm8k-13"),
                "question-only": ("gsm8k", "gsm8k-14"), "humaneval-full": ("humaneval", h["task_id"]),
                "humaneval-prompt": ("humaneval", HUMANEVAL[21]["task_id"])}
    df = frame(list(cases.values()))
    result = decontaminate(df, DecontaminateConfig())
    assert result.kept.height == 0
    ev = evidence_of(result.rejected)
    for i, name in enumerate(cases):
        row = result.rejected.filter(pl.col("id") == f"d{i}").row(0, named=True)
        bench, item = expected[name]
        assert row["reason"] == f"contamination.{bench}", name
        match = ev[f"d{i}"]["matches"][0]
        assert (match["benchmark"], match["item_id"]) == (bench, item), name
        assert match["coverage"] >= 0.5 or match["span_words"] >= 50, name
    middle = ev["d0"]["matches"][0]
    text = cases["verbatim-middle"]
    matched = text[middle["char_start"]:middle["char_end"]]
    assert middle["char_start"] == text.index(g["question"]) and matched.startswith(g["question"])
    assert matched.endswith(g["answer"].split()[-1]) and middle["char_end"] == text.index(g["answer"]) + len(
        g["answer"])
    assert middle["span_words"] >= len(item_words)
    assert ev["d4"]["matches"][0]["best_field"] == "question" and ev["d4"]["matches"][0]["coverage_item"] < 0.5
    assert ev["d3"]["matches"][0]["best_field"] == "answer"


def test_hard_negatives_sharing_short_phrases_are_kept():
    docs = []
    for k, item in enumerate(GSM8K[:60]):
        opening = " ".join(item["question"].split()[:9])  # under 13 words: a shared phrase, not a leak
        docs.append(f"{filler(k * 37, 600)} {opening} {filler(k * 37 + 20, 600)}")
    docs += [f"How many apples does she have left? {filler(3000, 800)}",
             "from typing import List\n\n\ndef solve(numbers: List[int]) -> int:\n    return sum(numbers)\n",
             "def add(x: int, y: int):\n    \"\"\"Add two numbers x and y\"\"\"\n    return x + y\n" * 3]
    result = decontaminate(frame(docs), DecontaminateConfig())
    assert result.rejected.height == 0, result.rejected["evidence"].to_list()[:2]
    assert result.kept["contam_action"].null_count() == len(docs)


def test_redact_removes_the_span_and_window_and_keeps_the_rest():
    cfg = DecontaminateConfig(benchmarks=[BenchmarkConfig(name="gsm8k", policy="redact")])
    g = GSM8K[30]
    before, after = filler(4000, 1500), filler(4100, 1500)
    long_doc = f"{before}\n{g['question']} {g['answer']}\n{after}"
    short_doc = f"{filler(4200, 100)} {g['question']} {g['answer']}"
    result = decontaminate(frame([long_doc, short_doc]), cfg)
    [kept] = result.kept.to_dicts()
    assert kept["contam_action"] == "redacted" and kept["contam_benchmark"] == "gsm8k"
    assert kept["text"].startswith(before[: len(before) - 250].strip())
    assert kept["text"].endswith(after[250:].strip())
    assert norm(g["question"])[:60] not in norm(kept["text"])
    assert len(kept["text"]) < len(long_doc) - len(g["question"]) - 400
    [dropped] = result.rejected.to_dicts()
    assert dropped["reason"] == "contamination.gsm8k"
    assert json.loads(dropped["evidence"])["action"] == "redact_dropped"
    [edit] = result.edits.to_dicts()  # the redaction is in the edit ledger, with what it cut
    assert edit["id"] == kept["id"] and edit["rule"] == "decontaminate.redact" and edit["units_removed"] == 1
    assert edit["chars_before"] == len(long_doc) and edit["chars_removed"] == len(long_doc) - len(kept["text"])
    # a redaction that would leave a fragment (the item and its windows are most of the doc) rejects it instead
    mostly = f"{filler(4300, 600)}\n{g['question']} {g['answer']}\n{filler(4400, 250)}"
    bounded = decontaminate(frame([mostly]), cfg)
    assert bounded.kept.height == 0 and bounded.edits.height == 0
    [row] = bounded.rejected.to_dicts()
    ev = json.loads(row["evidence"])
    assert row["reason"] == "decontaminate.redact.removed_too_much" and row["text"] == mostly
    assert ev["action"] == "redact_too_much" and ev["removed_fraction"] > 0.5 and ev["max_removed_fraction"] == 0.5
    loose = decontaminate(frame([mostly]), cfg.model_copy(update={"redact_max_removed_fraction": 0.9}))
    assert loose.kept["contam_action"].to_list() == ["redacted"]


def test_flag_policy_keeps_and_marks_and_temporal_evidence():
    cfg = DecontaminateConfig(benchmarks=[BenchmarkConfig(name="humaneval", policy="flag")])
    h = HUMANEVAL[40]
    docs = [h["prompt"] + h["canonical_solution"]] * 3 + [filler(10, 500)]
    stamps = [datetime(2019, 5, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), None, None]
    result = decontaminate(frame(docs, stamps), cfg)
    assert result.rejected.height == 0
    k = result.kept.sort("id")
    assert k["contam_action"].to_list() == ["flagged", "flagged", "flagged", None]
    assert k["contam_item"].to_list()[:3] == [h["task_id"]] * 3
    assert k["contam_predates_release"].to_list() == [True, False, None, None]
    assert k["text"].to_list() == docs  # flag never edits


def write_benchmark(path: Path, records: list, raw: bytes | None = None) -> Path:
    path.write_bytes(raw if raw is not None else b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    return path


def test_user_benchmark_fields_templates_and_short_items(tmp_path):
    template = "Read the following passage carefully and answer the question that comes after it in one word"
    items = [{"uid": f"u{i}", "prompt": f"{template}. {VERSES[i * 3]} {VERSES[i * 3 + 1]}", "completion": "yes"}
             for i in range(12)]
    items.append({"uid": "short", "prompt": "zebra quantum lantern orchard", "completion": "violet"})
    bench = write_benchmark(tmp_path / "mine.jsonl", items)
    cfg = DecontaminateConfig(builtins=[], benchmarks=[BenchmarkConfig(
        name="mine", path=str(bench), fields=["prompt", "completion"], id_field="uid", released_at="2020-01-01")])
    index = build_index(cfg)
    assert index.counts() == {"mine": 13} and index.templated > 0
    docs = [f"{template}. {filler(7000, 400)}",                 # the template alone: ignored
            f"{filler(7100, 300)} {items[5]['prompt']} {filler(7200, 300)}",
            "the zebra quantum lantern orchard, violet! was seen",  # the short item as a whole string
            "a zebra and a quantum lantern in an orchard"]         # its words, not the string
    result = decontaminate(frame(docs), cfg)
    ev = evidence_of(result.rejected)
    assert set(ev) == {"d1", "d2"}
    assert ev["d1"]["matches"][0]["item_id"] == "u5" and ev["d2"]["matches"][0]["item_id"] == "short"
    assert ev["d2"]["matches"][0]["char_start"] == docs[2].index("zebra")


@pytest.mark.parametrize("case, message", [
    ("empty", "has no items"),
    ("bad-json", "mine.jsonl:2: not valid JSON"),
    ("missing-field", "mine.jsonl:1: field 'completion' is missing"),
    ("not-text", "mine.jsonl:1: field 'prompt' is int, not text"),
    ("too-short", "mine.jsonl:2: item mine-2 has 1 word(s) after normalization"),
    ("no-file", "does not exist"),
])
def test_bad_benchmarks_give_clear_errors(tmp_path, case, message):
    path = tmp_path / "mine.jsonl"
    good = orjson.dumps({"prompt": "a perfectly ordinary benchmark question", "completion": "an answer"})
    raw = {"empty": b"", "bad-json": good + b"\n{not json\n",
           "missing-field": orjson.dumps({"prompt": "what is this"}) + b"\n",
           "not-text": orjson.dumps({"prompt": 7, "completion": "x"}) + b"\n",
           "too-short": good + b"\n" + orjson.dumps({"prompt": "?", "completion": "yes"}) + b"\n"}.get(case)
    if raw is not None:
        path.write_bytes(raw)
    cfg = DecontaminateConfig(builtins=[], benchmarks=[BenchmarkConfig(name="mine", path=str(path),
                                                                       fields=["prompt", "completion"])])
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        build_index(cfg)


def test_word_offsets_follow_the_normalizer():
    text = "Ｆｕｌｌ width, ﬁne: café's 3.5% — done"
    assert norm(text).split(" ") == ["full", "width", "fine", "café", "s", "3", "5", "done"]
    offsets = word_offsets(text)
    assert [text[s:e] for s, e in offsets] == ["Ｆｕｌｌ", "width", "ﬁne:", "café", "s", "3", "5", "done"]


def test_default_pipeline_runs_decontaminate(prefect_server, tmp_path, capsys):
    from tasks.runtime.registry import DEFAULT_PIPELINE

    assert SluiceConfig().stages is None  # none configured: the registry's default pipeline
    assert DEFAULT_PIPELINE == ["ingest", "decontaminate", "quality", "dedup", "publish"]
    data = tmp_path / "in.jsonl"
    rows = [{"id": f"v{i}", "text": filler(i * 5, 300)} for i in range(300)]
    rows += [{"id": f"leak{i}", "text": filler(9000 + i, 400) + " " + GSM8K[100 + i]["question"] + " "
              + GSM8K[100 + i]["answer"], "timestamp": "2018-03-01T00:00:00Z"} for i in range(3)]
    write_benchmark(data, rows)
    out = tmp_path / "out"
    assert main(["run", "--input", str(data), "--output", str(out), "--stages", "ingest,decontaminate",
                 "--run-id", "dc"]) == 0
    m = json.loads((out / "runs" / "dc" / "decontaminate" / "_manifest.json").read_text())
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (303, 300, 3)
    assert m["rejected_by_reason"] == {"contamination.gsm8k": 3}
    assert m["summary"]["gsm8k"]["items_found"] == 3 and m["summary"]["gsm8k"]["docs_dropped"] == 3
    assert m["summary"]["humaneval"]["docs_hit"] == 0
    assert m["warnings"] and "contamination.gsm8k: 3 of 303 documents (0.99%) > warning level 0.10%" in m["warnings"][0]
    assert m["contract"]["success"]
    report = (out / "runs" / "dc" / "report" / "index.html").read_text()
    assert "Warnings" in report and "contamination.gsm8k: 3 of 303 documents" in report
    assert "items found" in report
    capsys.readouterr()
    assert main(["quarantine", "dc", "--output", str(out), "--stage", "decontaminate", "--format", "jsonl"]) == 0
    quarantined = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {json.loads(q["evidence"])["matches"][0]["predates_release"] for q in quarantined} == {True}


def test_a_mass_hit_stops_the_run_naming_the_benchmark(prefect_server, tmp_path, capsys):
    common = "and it came to pass that the people went out and gathered it together in the field"
    bench = write_benchmark(tmp_path / "broken.jsonl", [{"q": common}, {"q": VERSES[5] + " " + VERSES[6]}])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[decontaminate.benchmarks]]\nname = "broken"\npath = "{bench}"\nfields = ["q"]\n')
    data = write_benchmark(tmp_path / "in.jsonl", [{"text": filler(i, 200) + (" " + common if i % 10 == 0 else "")}
                                                   for i in range(200)])
    code = main(["run", "--input", str(data), "--output", str(tmp_path / "out"), "--config", str(cfg),
                 "--stages", "ingest,decontaminate", "--run-id", "mass"])
    assert code == 3
    err = capsys.readouterr().err
    assert re.search(r"contamination.broken: 2\d of 200 documents \(1\d.\d\d%\) > ceiling 5.00%", err)
    assert "broken benchmark file or normalizer" in err
    assert not (tmp_path / "out" / "runs" / "mass" / "decontaminate" / "_manifest.json").exists()


def test_benchmarks_list_and_s3_benchmark(s3_env, tmp_path, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    fs.mkdir("benchmarks")
    fs.pipe("benchmarks/evals/mine.jsonl", b"\n".join(orjson.dumps({"text": f"{VERSES[i]} {VERSES[i + 1]}"})
                                                      for i in range(0, 40, 2)))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[decontaminate.benchmarks]]\nname = "mine"\npath = "s3://benchmarks/evals/mine.jsonl"\n'
                   'fields = ["text"]\nreleased_at = 2022-02-02\npolicy = "flag"\n')
    assert main(["benchmarks", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"gsm8k\s+1,319\s+drop\s+2021-10-27", out)
    assert re.search(r"humaneval\s+164\s+drop\s+2021-07-07", out)
    assert re.search(r"mine\s+20\s+flag\s+2022-02-02\s+text\s+\(s3://benchmarks/evals/mine.jsonl\)", out)


def test_a_benchmark_on_s3_is_read_with_the_configured_credentials_not_the_environment(s3_server, tmp_path,
                                                                                       monkeypatch):
    """The runtime reads a stage's declared files with the run's storage options (tasks/runtime/externals.py): a
    benchmark on S3 is reached with the key and secret config refers to, with no AWS variable set; without those
    options the same read has no credentials."""
    import botocore.exceptions
    import s3fs

    from schemas.config import SluiceConfig
    from tasks.runtime import lifecycle
    from tasks.runtime.externals import Externals, gather
    from tasks.stages.decontaminate import STAGE

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BENCH_KEY", "bench-key")
    monkeypatch.setenv("BENCH_SECRET", "bench-secret-never-logged")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = s3fs.S3FileSystem(key="bench-key", secret="bench-secret-never-logged",
                           client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("creds-bench")
    fs.pipe("creds-bench/mine.jsonl", b"\n".join(orjson.dumps({"text": f"{VERSES[i]} {VERSES[i + 1]}"})
                                                  for i in range(0, 40, 2)))
    cfg = SluiceConfig.model_validate({
        "storage": {"endpoint_url": s3_server, "key": "env:BENCH_KEY", "secret": "env:BENCH_SECRET"},
        "decontaminate": {"builtins": [], "benchmarks": [
            {"name": "mine", "path": "s3://creds-bench/mine.jsonl", "fields": ["text"]}]}})
    index = lifecycle.loaded_for(STAGE, cfg.decontaminate, cfg.storage.s3_options())
    assert index.counts() == {"mine": 20}
    lifecycle.release("decontaminate")
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        gather(Externals(files=("s3://creds-bench/mine.jsonl",)),
               {"client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}})


def test_demo_config_runs_decontaminate_before_quality_and_dedup():
    """Contaminated rows must go before dedup picks survivors among them (DESIGN.md), in the demo as anywhere."""
    from schemas.config import load_config

    stages = load_config(REPO / "infra" / "demo.toml").stages
    assert stages.index("ingest") < stages.index("decontaminate") < stages.index("quality") < stages.index("dedup")


def test_judge_decontaminate_alone():
    g = GSM8K[3]
    leaked = f"{filler(0, 400)} {g['question']} {g['answer']} {filler(50, 400)}"
    assert judge("decontaminate", filler(100, 600), leaked) == [None, "contamination.gsm8k"]
