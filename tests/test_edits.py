"""Edits are data (issue 26): every rewrite of a kept row is in the edit ledger, bounded by max_removed_fraction,
and hard-wrapped text is judged by paragraph, not by physical line."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import polars as pl
import pytest

from schemas.config import LanguageConfig, PIIConfig, QualityConfig
from tasks.runtime import edits
from tasks.stages.quality import quality
from tasks.text.wrapped import physical_lines, reflowed

GPL_PREAMBLE = (Path(__file__).parent / "fixtures" / "gpl3-preamble.txt").read_text()  # Debian's common-licenses
WEB = ("The history of the river valley is long and well recorded. Farmers settled on the banks of the river more "
       "than two thousand years ago, and they built small villages with walls of stone. Each spring the water rose "
       "and covered the fields with rich mud. The people learned to store grain for the dry months, and trade with "
       "the towns to the north grew slowly. Today the valley is known for its orchards and for the old bridge.")


def run(texts: list[str], **cfg) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    df = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    res = quality(df, QualityConfig.model_validate({"language": {"enabled": False}, **cfg}))
    return res.kept, res.rejected, res.edits


def test_c4_line_removal_and_redaction_are_recorded_per_row_and_rule():
    menu = "Home | About | Contact"
    text = f"{WEB}\n{menu}\nWrite to the keeper at keeper@valley.example for the records of the bridge."
    kept, _, ledger = run([text, WEB])
    assert kept["text"][0] == f"{WEB}\nWrite to the keeper at [EMAIL] for the records of the bridge."
    by_rule = {r["rule"]: r for r in ledger.to_dicts()}
    assert set(by_rule) == {"quality.c4.line_filter", "quality.pii.redact"} and set(ledger["id"]) == {"r0"}
    c4 = by_rule["quality.c4.line_filter"]
    assert (c4["chars_before"], c4["chars_removed"], c4["units_removed"], c4["unit"]) == (
        len(text), len(menu) + 1, 1, "line")
    pii = by_rule["quality.pii.redact"]
    assert (pii["chars_removed"], pii["chars_inserted"], pii["units_removed"]) == (len("keeper@valley.example"),
                                                                                    len("[EMAIL]"), 1)
    assert edits.unrecorded(pl.DataFrame({"id": ["r0", "r1"], "text": [text, WEB]}), kept, ledger) == []
    assert edits.unrecorded(pl.DataFrame({"id": ["r0", "r1"], "text": [text, WEB]}), kept, ledger.clear()) == ["r0"]


def test_a_rewrite_that_would_leave_a_fragment_rejects_the_row_with_evidence():
    words = GPL_PREAMBLE.replace(".", "").replace(",", "").replace(";", "").split()  # sidebar-like lines, no stops
    junk = "\n".join(" ".join(words[i:i + 7]) for i in range(0, 210, 7))
    text = f"{WEB}\n{junk}"
    kept, rejected, ledger = run([text], c4={"min_num_sentences": 1})
    assert kept.height == 0 and ledger.height == 0
    [row] = rejected.to_dicts()
    assert row["reason"] == "quality.c4.line_filter.removed_too_much" and row["text"] == text  # as it arrived
    ev = json.loads(row["evidence"])
    assert ev["lines_removed"] == 30 and ev["max_removed_fraction"] == 0.5
    assert ev["chars_removed"] == len(junk) + 1 and ev["removed_fraction"] == round((len(junk) + 1) / len(text), 4)
    kept, _, ledger = run([text], c4={"min_num_sentences": 1, "max_removed_fraction": 0.9})
    assert kept["text"].to_list() == [WEB] and ledger["units_removed"].to_list() == [30]


def test_a_redaction_of_most_of_a_row_rejects_it_redacted():
    contacts = "Contact list for the valley office and the bridge keepers:\n" + "\n".join(
        f"keeper{i}.of.the.old.bridge@valley-office.example, 555-201-{1000 + i}" for i in range(12))
    kept, rejected, _ = run([contacts], c4={"enabled": False}, fineweb={"enabled": False},
                            gopher_quality={"enabled": False}, gopher_repetition={"enabled": False})
    assert kept.height == 0
    [row] = rejected.to_dicts()
    assert row["reason"] == "quality.pii.redact.removed_too_much"
    assert "@" not in row["text"] and row["text"].count("[EMAIL]") == 12  # quarantine never holds the PII
    assert json.loads(row["evidence"])["spans_removed"] == 24


def test_wrapped_license_paragraphs_are_kept_whole_with_their_line_breaks():
    """Debian's GPL-3 preamble, wrapped at 72 columns: before, C4 cut every line that ends mid-sentence."""
    kept, rejected, ledger = run([GPL_PREAMBLE])
    assert rejected.height == 0, rejected["reason"].to_list()
    assert kept["text"][0] == "\n".join(line.strip() for line in GPL_PREAMBLE.strip().split("\n"))
    assert kept["q_c4_lines_removed"][0] == 0
    old_kept, old_rejected, _ = run([GPL_PREAMBLE], reflow_wrapped=False, c4={"max_removed_fraction": 1.0})
    assert old_rejected["reason"].to_list() == ["quality.c4.min_sentences"]  # what the landed main did
    _, bounded, _ = run([GPL_PREAMBLE], reflow_wrapped=False, c4={"min_num_sentences": 0})
    assert bounded["reason"].to_list() == ["quality.c4.line_filter.removed_too_much"]  # never a fragment now


def test_a_stdlib_docstring_is_seen_as_wrapped_and_reflowed():
    doc = inspect.getdoc(json.dumps)
    df = pl.DataFrame({"_row": [0], "text": [doc]})
    lines = physical_lines(df, "text")
    assert lines["wrapped"].all()
    flat = reflowed(df, "text")[0]
    first = doc.split("\n\n")[1]  # the skipkeys paragraph, three physical lines
    assert " ".join(line.strip() for line in first.split("\n")) in flat.split("\n")


@pytest.mark.parametrize("text", [
    WEB,
    f"{WEB}\nHome\nAbout us\nContact",
    "\n".join(f"Menu entry number {i} of the site" for i in range(12)) + f"\n{WEB}",
    "\n".join([WEB] * 3),
    "Short line.\n" * 5 + WEB,
])
def test_text_that_is_not_wrapped_is_judged_exactly_as_before(text):
    new = run([text])
    old = run([text], reflow_wrapped=False)
    assert new[0].equals(old[0]) and new[1].equals(old[1])
    assert not physical_lines(pl.DataFrame({"_row": [0], "text": [text]}), "text")["wrapped"].any()


def test_ledger_counts_for_the_manifest():
    ledger = pl.DataFrame({"id": ["a", "a", "b"], "rule": ["x.one", "x.two", "x.one"], "chars_before": [10, 8, 20],
                           "chars_removed": [2, 3, 5], "chars_inserted": [0, 0, 0], "units_removed": [1, 1, 2],
                           "unit": ["line"] * 3}, schema=edits.LEDGER)
    before = pl.DataFrame({"id": ["a", "b", "c"], "text": ["x" * 10, "y" * 20, "z" * 30]})
    assert edits.counts(ledger, before) == {"edits.chars_in": 60, "edits.rows": 2, "edits.chars_removed": 10,
                                            "edits.x.one.rows": 2, "edits.x.one.chars_removed": 7,
                                            "edits.x.two.rows": 1, "edits.x.two.chars_removed": 3}
    from schemas.config import ContractConfig

    [check] = edits.removed_share_check(ContractConfig(max_removed_chars_rate={"s": 0.1}), "s",
                                        edits.counts(ledger, before))
    assert check["rate"] == pytest.approx(10 / 60) and check["max"] == 0.1 and "16.67%" in check["message"]
    assert edits.removed_share_check(ContractConfig(), "s", {"edits.chars_in": 60}) == []


def test_pii_flag_mode_edits_nothing():
    kept, _, ledger = run([f"{WEB} Mail keeper@valley.example today."], pii={"mode": "flag"})
    assert "keeper@valley.example" in kept["text"][0] and ledger.height == 0


def test_placeholder_text_already_present_is_not_counted_as_inserted():
    text = f"{WEB} The form shows [EMAIL] where the address goes; mail keeper@valley.example instead."
    _, _, ledger = run([text], pii=PIIConfig(), language=LanguageConfig(enabled=False))
    [pii] = ledger.filter(pl.col("rule") == "quality.pii.redact").to_dicts()
    assert pii["chars_inserted"] == len("[EMAIL]") and pii["chars_removed"] == len("keeper@valley.example")


_ = QualityConfig  # the config class these tests build through model_validate


def test_a_run_records_edits_warns_shows_them_and_can_publish_the_original(prefect_server, tmp_path, capsys):
    """End to end: the ledger in the manifest and the report, the loud stage-wide warning, `sluice edits` in both
    formats, and publish.keep_original_text."""
    import glob

    from flows.cli import main

    menu = "Home | About | Contact"
    web = f"{WEB}\n{menu}\nWrite to the keeper at keeper@valley.example for the records of the bridge."
    rows = [{"id": "license", "text": GPL_PREAMBLE}, {"id": "web", "text": web}, {"id": "plain", "text": WEB}]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "c.toml"
    config.write_text('[ingest]\nid_from = "field"\n[quality.language]\nenabled = false\n'
                      '[publish]\ndataset = "edited"\nkeep_original_text = true\n'
                      '[contracts]\nwarn_removed_chars_rate = 0.005\n')
    out = tmp_path / "o"
    code = main(["run", "--input", str(data), "--output", str(out), "--config", str(config), "--run-id", "e1",
                 "--stages", "ingest,quality,publish"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    manifest = json.loads((out / "runs" / "e1" / "quality" / "_manifest.json").read_text())
    counts = manifest["stats"]["counts"]
    assert counts["edits.rows"] == 1 and counts["edits.quality.c4.line_filter.rows"] == 1
    assert counts["edits.quality.pii.redact.chars_removed"] == len("keeper@valley.example")
    assert counts["edits.chars_in"] == sum(len(r["text"]) for r in rows) and manifest["edits"]
    assert any(w.startswith("edits removed ") and "sluice edits RUN --stage quality" in w
               for w in manifest["warnings"])

    assert main(["edits", "e1", "--output", str(out), "--stage", "quality"]) == 0
    text = capsys.readouterr().out
    removed = len(menu) + 1 + len("keeper@valley.example")
    assert text.startswith(f"1 row edited by quality, {removed} of ") and "quality.c4.line_filter" in text
    assert f"[-{menu}\n-]" in text.replace("\n    ", "\n") and "[-keeper@valley.example-]{+[EMAIL]+}" in text
    assert main(["edits", "e1", "--output", str(out), "--stage", "quality", "--format", "jsonl"]) == 0
    [shown] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown["id"] == "web" and shown["before"] == web and {r["rule"] for r in shown["rules"]} == {
        "quality.c4.line_filter", "quality.pii.redact"}
    assert [web[s["start"]:s["end"]] == s["text"] for s in shown["removed"]] == [True] * len(shown["removed"])
    assert main(["edits", "e1", "--output", str(out), "--stage", "quality", "--rule", "dedup"]) == 0
    assert "edited no kept row by dedup" in capsys.readouterr().out

    published = pl.read_parquet(glob.glob(str(out / "datasets" / "edited" / "v1" / "data" / "*.parquet")))
    original = dict(zip(published["id"], published["text_original"], strict=True))
    assert original == {"license": None, "web": web, "plain": None}
    report = (out / "runs" / "e1" / "report" / "index.html").read_text()
    assert "Edits: what rewrites removed" in report and "quality.pii.redact" in report
