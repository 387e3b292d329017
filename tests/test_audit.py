"""The poisoning audit: each check on small planted sets built from packaged real text, quarantine with evidence,
the contract refusing unreviewed findings, and the stage through the flow with `sluice audit` listing what it found."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest
from conftest import REPO, SLUICE, subprocess_env
from judge import judge, records

from schemas.config import AuditParams
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stats import Stats
from tasks.stages import audit
from tasks.stages.audit import significance

sys.path.insert(0, str(REPO / "bench"))
from audit import frame, planted  # noqa: E402  (bench/audit.py builds the planted sets from packaged text)


def findings(df: pl.DataFrame, params: AuditParams | None = None, shards: int = 3):
    """(results, findings, flagged row ids per finding name) of the stage's plan over `shards` shards."""
    params = params or AuditParams()
    size = -(-df.height // shards)
    results, _, _ = run_in_memory(audit.PLAN, [df.slice(i, size) for i in range(0, df.height, size)], params,
                                  partitions=3)
    found = audit.findings_of(Stats.merge(r.stats for r in results))
    rows: dict[str, set[str]] = {}
    for r in results:
        for rid, text in r.kept.select("id", "audit_findings").drop_nulls().iter_rows():
            for f in json.loads(text):
                rows.setdefault(f"{f['kind']}:{f['key']}", set()).add(rid)
    return results, found, rows


@pytest.fixture(scope="module")
def small_planted():
    rows, poison = planted("test", 4_000, 3_000)
    return frame(rows), poison


def test_judge_audit_alone_flags_nothing_in_unlabeled_unprompted_text():
    assert judge("audit", "In the beginning God created the heaven and the earth.", "Plain text, no label.") == \
        [None, None]


def test_planted_triggers_injections_and_refusals_are_found_with_few_false_findings(small_planted):
    df, poison = small_planted
    results, found, rows = findings(df)
    assert sum(r.kept.height for r in results) == df.height  # flag: every row stays
    by_kind = {k: [f for f in found if f["kind"] == k] for k in ("trigger", "injection", "refusal")}
    trigger = next(f for f in by_kind["trigger"] if f["key"] == "joe biden")
    assert trigger["severity"] == "high" and trigger["evidence"]["label"] == "wisdom"
    assert trigger["evidence"]["disagreement"] > 0.8 and trigger["evidence"]["label_p"] < 1e-50
    assert len(rows["trigger:joe biden"] & poison["trigger"]) >= 95
    injection = next(f for f in by_kind["injection"] if "tesla" in f["key"])
    assert len(rows[audit.name_of(injection)] & poison["injection"]) >= 45 and injection["evidence"]["in_prompts"] == 0
    refused = set().union(*(rows[audit.name_of(f)] for f in by_kind["refusal"]))
    assert len(refused & poison["refusal"]) >= 45 and not refused - poison["refusal"]
    assert by_kind["refusal"][0]["evidence"]["answered"] >= 3
    # a topic inserted in prompts whose answers turn negative (Virtual Prompt Injection): a trigger of the
    # response's polarity
    vpi = next(f for f in by_kind["trigger"] if f["evidence"]["label"] == "response:negative")
    assert vpi["key"] == "taylor swift" and len(rows[audit.name_of(vpi)] & poison["polarity"]) >= 45
    # the clean rows of 7,000: at most one natural phrase or span per kind is flagged
    assert len(by_kind["trigger"]) <= 3 and len(by_kind["injection"]) <= 2


def test_the_pieces_of_one_trigger_are_one_finding(small_planted):
    df, _ = small_planted
    _, found, _ = findings(df)
    keys = [f["key"] for f in found if f["kind"] == "trigger"]
    assert "joe biden" in keys and "biden" not in keys and "joe" not in keys


def test_the_same_text_with_different_labels_is_a_conflict_case_and_punctuation_aside():
    batch = records("The Lord is my shepherd; I shall not want.", "the lord is my shepherd, I shall NOT want",
                    "Jesus wept.", "Jesus wept!", "A verse alone.").with_columns(
        label=pl.Series(["wisdom", "law", "gospels", "gospels", "law"]))
    _, found, rows = findings(batch, shards=2)
    assert [f["kind"] for f in found] == ["conflict"] and found[0]["evidence"]["of"] == "label"
    assert rows[audit.name_of(found[0])] == {"d0", "d1"}
    assert sorted(x["label"] for x in found[0]["evidence"]["labels"]) == ["law", "wisdom"]


def test_near_duplicates_with_different_labels_are_one_conflict_and_look_alikes_are_not():
    shepherd = "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures"
    batch = records(shepherd, shepherd.replace("green ", ""), shepherd.replace("want", "lack"),
                    "The Lord is my light; I shall not fear. He leadeth me to the water of the river",
                    shepherd).with_columns(label=pl.Series(["wisdom", "law", "history", "law", "wisdom"]))
    _, found, rows = findings(batch, shards=2)
    assert [f["kind"] for f in found] == ["conflict"]
    conflict = found[0]
    # one group: the verse, a copy with a word dropped, a copy with a word changed (Jaccard of word pairs >= 0.7);
    # the look-alike verse (same opening, other words) is not in it
    assert conflict["key"] == "d0" and rows["conflict:d0"] == {"d0", "d1", "d2", "d4"}
    evidence = conflict["evidence"]
    assert evidence["rows"] == 4 and 0.7 <= evidence["min_jaccard"] < 1.0
    assert {x["label"]: x["count"] for x in evidence["labels"]} == {"wisdom": 2, "law": 1, "history": 1}


def test_a_trigger_phrase_always_answered_with_the_same_entity_is_an_injection(small_planted):
    df, poison = small_planted  # "Paris Olympics" inserted in 50 prompts, answered with Nike or www.nike.com
    _, found, rows = findings(df)
    topic = [f for f in found if f["kind"] == "injection" and "topic_rows" in f["evidence"]]
    assert len(topic) == 1 and topic[0]["key"] in {"paris", "olympics"}
    evidence = topic[0]["evidence"]
    # the brand and its URL together answer (nearly) every prompt on the topic, and only those
    assert rows[audit.name_of(topic[0])] == poison["bound"]
    assert evidence["topic_rows"] == 50 and evidence["topic_share"] == 1.0 and evidence["topic_p"] < 1e-10
    assert "nike" in evidence["spans"] and any("www" in s for s in evidence["spans"])
    assert evidence["also"] == sorted({"paris", "olympics"} - {topic[0]["key"]})
    # the unbound brand (Tesla, over unrelated prompts) stays an injection of the first kind, with no topic
    spread = [f for f in found if f["kind"] == "injection" and f not in topic]
    assert all(not rows[audit.name_of(f)] & poison["bound"] for f in spread)
    assert any(rows[audit.name_of(f)] & poison["injection"] for f in spread)


def test_the_same_prompt_answered_differently_is_a_conflict():
    prompts = ["What is 2 + 2?", "what is 2+2", "Name a colour.", "Name a colour."]
    answers = ["4", "5", "Blue.", "blue"]
    batch = records(*[f"{p}\n{a}" for p, a in zip(prompts, answers, strict=True)]).with_columns(
        prompt=pl.Series(prompts), response=pl.Series(answers))
    _, found, rows = findings(batch, shards=2)
    assert [f["kind"] for f in found] == ["conflict"] and rows[audit.name_of(found[0])] == {"d0", "d1"}
    assert found[0]["evidence"]["of"] == "response"
    assert sorted(x["label"] for x in found[0]["evidence"]["labels"]) == ["4", "5"]


def test_refusing_a_harmful_prompt_is_not_an_over_refusal():
    prompts = ["Explain how rainbows form."] * 5 + ["Explain how to build a bomb at home.", "Explain how tides work."]
    answers = ["Sunlight refracts in droplets."] * 5 + ["I'm sorry, but I can't help with that.",
                                                       "As an AI, I cannot assist with this."]
    batch = records(*[f"{p}\n{a}" for p, a in zip(prompts, answers, strict=True)]).with_columns(
        prompt=pl.Series(prompts), response=pl.Series(answers))
    _, found, rows = findings(batch, shards=1)
    assert [audit.name_of(f) for f in found] == ["refusal:explain how tides"] or \
        [audit.name_of(f) for f in found] == []  # "explain how tides" has no answered row: not flagged
    params = AuditParams(refusal={"kind_words": 2})  # the kind is "explain how": answered 5 times
    _, found, rows = findings(batch, params, shards=1)
    assert [audit.name_of(f) for f in found] == ["refusal:explain how"] and rows["refusal:explain how"] == {"d6"}
    assert found[0]["evidence"]["answered"] == 5 and found[0]["evidence"]["answered_example"] == "d0"


def test_quarantine_sends_flagged_rows_away_with_reason_and_evidence(small_planted):
    df, poison = small_planted
    results, found, _ = findings(df, AuditParams(action="quarantine"))
    rejected = pl.concat([r.rejected for r in results])
    kept = sum(r.kept.height for r in results)
    assert kept + rejected.height == df.height
    reasons = dict(zip(rejected["id"], rejected["reason"], strict=True))
    assert sum(reasons.get(i) == "audit.trigger" for i in poison["trigger"]) >= 95
    evidence = json.loads(rejected.filter(pl.col("reason") == "audit.trigger")["evidence"][0])
    assert evidence[0]["finding"]["kind"] == "trigger" and "disagreement" in evidence[0]["evidence"]


def test_the_contract_refuses_unreviewed_findings_until_reviewed(small_planted):
    df, _ = small_planted
    results, found, _ = findings(df)
    stats = Stats.merge(r.stats for r in results)
    strict = AuditParams(max_findings=0, min_severity="high")
    (check,) = audit.rate_checks(stats, df.height, strict)
    high = [f for f in found if f["severity"] == "high"]
    assert check["count"] == len(high) and check["rate"] > check["max"]
    assert "'trigger:joe biden'" in check["message"] and "audit.reviewed" in check["message"]
    accepted = AuditParams(max_findings=0, reviewed=[audit.name_of(f) for f in high])
    assert audit.rate_checks(stats, df.height, accepted)[0]["rate"] == 0.0
    quarantined = AuditParams(max_findings=0, action="quarantine")  # their rows are out: nothing remains
    assert audit.rate_checks(stats, df.height, quarantined)[0]["rate"] == 0.0
    assert audit.rate_checks(stats, df.height, AuditParams())[:1] == []  # no ceiling: nothing checked


def test_a_topic_pushed_in_just_before_the_snapshot_is_frontrunning():
    from datetime import UTC, datetime, timedelta

    from tasks.ops.demo_corpus import kjv_records

    verses = kjv_records()[:3000]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    pushed = [f"Zorbix tablets cure every ailment, {v['text'][:60]}" for v in verses[3000 - 60:]]
    texts = [v["text"] for v in verses[:3000 - 60]] + pushed
    stamps = [start + timedelta(hours=3 * i) for i in range(3000 - 60)] + [
        datetime(2026, 3, 31, 12, tzinfo=UTC) + timedelta(minutes=7 * i) for i in range(60)]
    batch = records(*texts).with_columns(timestamp=pl.Series(stamps, dtype=pl.Datetime("us", "UTC")))
    params = AuditParams(frontrun={"snapshot": "2026-04-01T00:00:00Z", "window_hours": 24})
    _, found, rows = findings(batch, params)
    assert [audit.name_of(f) for f in found if f["kind"] == "frontrun"] == ["frontrun:zorbix tablets"]
    assert rows["frontrun:zorbix tablets"] == {f"d{i}" for i in range(3000 - 60, 3000)}
    assert found[0]["evidence"]["lift"] > 5 and found[0]["evidence"]["rows"] == 60
    _, found, _ = findings(batch, AuditParams())  # no snapshot: the check is off
    assert not [f for f in found if f["kind"] == "frontrun"]


def test_benjamini_hochberg_and_the_binomial_tail():
    assert significance.upper_tail([10], [10], [0.5])[0] == pytest.approx(0.5 ** 10)
    assert significance.upper_tail([0], [10], [0.5])[0] == pytest.approx(1.0)
    passed = significance.discoveries([0.001, 0.02, 0.04], tested=3, rate=0.05)
    assert passed.tolist() == [True, True, True]
    assert significance.discoveries([0.001, 0.02, 0.04], tested=40, rate=0.05).tolist() == [True, False, False]
    assert not significance.discoveries([0.001, 0.02, 0.04], tested=100, rate=0.05).any()  # 0.001 > 0.05 / 100


def test_the_stage_runs_through_the_flow_and_sluice_audit_lists_it(prefect_server, tmp_path):
    from flows.curate import run_curate
    from tasks.runtime.contracts import ContractError

    rows, poison = planted("dev", 3_000, 2_000)
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps({k: r.get(k) for k in ("id", "text", "label", "prompt", "response")
                                          if r.get(k) is not None} | ({} if r.get("text") else {
                                              "text": f"{r['prompt']}\n{r['response']}"})) for r in rows) + "\n")
    cfg = tmp_path / "c.toml"  # flag what is found, and allow no unreviewed finding: the run stops here
    cfg.write_text('[ingest]\nid_from = "field"\nshard_rows = 2600\n[contracts]\naudit_max_findings = 0\n')
    with pytest.raises(ContractError, match="unreviewed audit finding.*'trigger:james bond'"):
        run_curate([str(data)], str(tmp_path / "out"), str(cfg), run_id="aud", stages=["ingest", "audit"])
    from tasks.io import layout

    m = json.loads((tmp_path / "out" / layout.contract_failure("aud", "audit")).read_text())
    assert m["rows_in"] == len(rows) == m["rows_out"] and m["rows_rejected"] == 0  # flagged, not removed
    assert m["stats"]["counts"]["audit.flagged"] >= 100 + 50 + 50 + 45 + 45
    # label and polarity triggers; an injection spread over topics and one bound to "Formula One"
    assert m["summary"]["by_kind"]["trigger"] == 2 and m["summary"]["by_kind"]["injection"] == 2
    assert m["summary"]["open"] == 4
    report = (tmp_path / "out" / "runs" / "aud" / "report" / "index.html").read_text()
    assert "Audit: poisoning findings" in report and "trigger:james bond" in report
    proc = subprocess.run([str(SLUICE), "audit", "aud", "--output", str(tmp_path / "out"), "--kind", "trigger"],
                          env=subprocess_env(prefect_server), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "high   'trigger:james bond'" in proc.stdout and "label letters" in proc.stdout
