"""`sluice forget` cannot erase a dataset in one keystroke (issue 24, item 5). Before the fix, `--where "label = 'x'
OR 1=1 --"` forgot every row with exit 0 and blocked all of that content from every later run; a --where naming a
missing column said "no row matches"; there was no dry run and no way to lift a takedown."""

from __future__ import annotations

import json

from test_incremental import DOCS, manifest, published_v1, write_jsonl  # noqa: F401

from flows.cli import main


def test_a_selector_that_takes_everything_is_refused(published_v1, capsys):  # noqa: F811
    out, _ = published_v1
    assert main(["forget", "inc", "--where", "source_id = 'doc-1' OR 1=1", "--reason", "oops", "--yes",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "selects 300 of 300 rows of inc v1 (100.0%), above --max-fraction 0.1: nothing was forgotten" in err
    assert main(["forget", "inc", "--where", "source_id = 'doc-1' OR 1=1 --", "--reason", "oops", "--yes",
                 "--output", str(out)]) == 2
    assert "comments and ';' are not allowed" in capsys.readouterr().err
    assert main(["forget", "inc", "--where", "label = 'x'", "--reason", "x", "--yes", "--output", str(out)]) == 2
    assert "names label, which the published version does not have" in capsys.readouterr().err
    assert not (out / "datasets" / "inc" / "v2").exists() and not (out / "datasets" / "inc" / "_tombstones").exists()


def test_dry_run_by_default_off_a_terminal_then_yes_then_undo(published_v1, tmp_path, capsys):  # noqa: F811
    out, config = published_v1
    # pytest's stdin is not a terminal: without --yes, a dry run
    assert main(["forget", "inc", "--where", "source_id = 'doc-3' OR source_id = 'doc-7'", "--reason", "request",
                 "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "selects 2 of 300 rows of inc v1 (0.7%)" in said and "dry run: nothing was forgotten" in said
    assert not (out / "datasets" / "inc" / "v2").exists()
    assert main(["forget", "inc", "--where", "source_id = 'doc-3' OR source_id = 'doc-7'", "--reason", "request",
                 "--by", "bob", "--yes", "--output", str(out)]) == 0
    tomb = json.loads(next((out / "datasets/inc/_tombstones").glob("*.json")).read_text())["tombstone"]
    assert manifest(out, "datasets", "inc", "v2")["rows_out"] == 298

    back = [DOCS[3], DOCS[7]]
    write_jsonl(tmp_path / "again" / "a.jsonl", back)
    assert main(["run", "--input", str(tmp_path / "again"), "--output", str(out), "--config", str(config),
                 "--run-id", "blocked", "--publish-mode", "append"]) == 3  # all rejected: the contract fails
    failure = json.loads((out / "runs" / "blocked" / "dedup" / "_contract_failure.json").read_text())
    assert failure["rejected_by_reason"] == {"dedup.forgotten": 2}
    assert main(["forget", "inc", "--undo", tomb, "--reason", "request withdrawn", "--output", str(out)]) == 0
    assert "lifted takedown" in capsys.readouterr().out
    lifted = list((out / "datasets/inc/_tombstones").glob("*.lifted.json"))
    assert len(lifted) == 1 and json.loads(lifted[0].read_text())["reason"] == "request withdrawn"
    assert len(list((out / "datasets/inc/_tombstones").glob("*.json"))) == 2  # the tombstone stays
    assert main(["run", "--input", str(tmp_path / "again"), "--output", str(out), "--config", str(config),
                 "--run-id", "lifted", "--publish-mode", "append"]) == 0
    assert manifest(out, "datasets", "inc", "v3")["rows_out"] == 300
    assert main(["forget", "inc", "--undo", tomb, "--reason", "again", "--output", str(out)]) == 2
    assert "already lifted" in capsys.readouterr().err
    assert main(["forget", "inc", "--undo", "../../etc/passwd", "--reason", "x", "--output", str(out)]) == 2
