"""The `sluice` command: help on every command, exit codes, and the ops views (runs, show, quarantine)."""

from __future__ import annotations

import json
import subprocess

import orjson
import pytest
from conftest import SLUICE, subprocess_env

from flows.cli import build_parser, main


@pytest.mark.parametrize("command", ["run", "demo", "runs", "show", "quarantine", "edits"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--output" in text and len(text) > 300


def test_the_demo_finds_its_configs_from_the_cli_package():
    """`sluice demo` without --config reads infra/demo.toml (with --web, infra/demo-web.toml), as `make run` calls
    it; moving the CLI into a package once pointed it at flows/infra/, and `make run` failed on its first line."""
    from conftest import REPO

    from flows.cli.common import DEMO_CONFIG
    from schemas.config import load_config

    assert DEMO_CONFIG == REPO / "infra" / "demo.toml"
    assert load_config(DEMO_CONFIG).publish.dataset == "demo"
    assert load_config(DEMO_CONFIG.with_name("demo-web.toml")).publish.tokens.enabled


def test_top_level_help_lists_commands():
    import re

    text = build_parser().format_help()
    listed = set(re.findall(r"^    ([a-z][a-z-]*)\s", text, flags=re.M))  # argparse's subcommand lines
    assert {"run", "runs", "show", "quarantine", "demo"} <= listed


def test_runs_and_show(demo_run, capsys):
    out, _ = demo_run
    assert main(["runs", "--output", str(out)]) == 0
    assert "demo-run" in capsys.readouterr().out
    assert main(["show", "demo-run", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ingest: committed" in text and "ingest.utf8.invalid" in text and "contract: passed" in text
    assert "publish: committed" in text


def test_show_unknown_run_and_unsafe_run_id(demo_run, capsys):
    out, _ = demo_run
    assert main(["show", "no-such-run", "--output", str(out)]) == 2
    assert "no run no-such-run" in capsys.readouterr().err
    assert main(["show", "../../etc", "--output", str(out)]) == 2
    assert "run id '../../etc' is not allowed" in capsys.readouterr().err


def test_quarantine_browse_and_filter(demo_run, capsys):
    out, run = demo_run
    assert main(["quarantine", "demo-run", "--output", str(out), "--reason", "ingest.text.not_string",
                 "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "ingest.text.not_string" in text and "ingest.json.invalid" not in text
    assert "JSON number" in text and ".jsonl.gz:" in text
    assert main(["quarantine", "demo-run", "--output", str(out), "--format", "jsonl", "--stage", "ingest"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    manifest = json.loads((out / "runs" / "demo-run" / "ingest" / "_manifest.json").read_text())
    assert len(rows) == manifest["rows_rejected"]


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest]\ntext_feild = 'body'\nshard_rows = -1\n")
    assert main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ingest.text_feild: unknown key" in err and "ingest.shard_rows" in err


def test_bad_stage_list(tmp_path, capsys):
    assert main(["run", "--input", str(tmp_path), "--output", str(tmp_path), "--stages", "publish,ingest"]) == 2
    assert "pipeline order: ingest,publish" in capsys.readouterr().err
    assert main(["run", "--input", str(tmp_path), "--output", str(tmp_path), "--stages", "ingest,dedupe"]) == 2
    assert "unknown stage(s) dedupe" in capsys.readouterr().err


def test_contract_failure_exits_nonzero_naming_the_expectation(prefect_server, tmp_path):
    data = tmp_path / "dups.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps({"id": "same", "text": f"t{i}"}) for i in range(3)))
    config = tmp_path / "c.toml"
    config.write_text('[ingest]\nid_from = "field"\n')
    proc = subprocess.run([SLUICE, "run", "--input", str(data), "--output", str(tmp_path / "o"), "--config",
                           str(config)], env=subprocess_env(prefect_server), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 3
    assert "contract of stage 'ingest' failed" in proc.stderr
    assert "expect_column_values_to_be_unique(column='id')" in proc.stderr


def test_readme_config_reference_is_a_valid_config(tmp_path):
    """The documented config is loaded as users would copy it: every key must exist and every value validate."""
    from conftest import REPO

    from schemas.config import load_config

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Config reference"):]
    block = section[section.index("```toml") + len("```toml"):section.index("```", section.index("```toml") + 7)]
    path = tmp_path / "readme.toml"
    path.write_text(block)
    cfg = load_config(path)
    assert cfg.stages[1] == "decontaminate" and cfg.decontaminate.benchmarks[1].name == "internal-eval"
    assert cfg.storage.secret == "prefect-secret:curated-s3-secret" and cfg.retrain.min_changed_fraction == 0.01


def test_version_and_a_closed_pipe_end_quietly(tmp_path):
    """`sluice --version`; and `sluice ... | head` when the reader has gone: no BrokenPipeError traceback, the exit
    code a SIGPIPE would give (141)."""
    import os
    import subprocess

    from conftest import SLUICE

    version = subprocess.run([str(SLUICE), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("sluice 0.")
    read, write = os.pipe()
    os.close(read)  # the reader (head) already left
    proc = subprocess.run([str(SLUICE), "runs", "--output", str(tmp_path)], stdout=write, stderr=subprocess.PIPE,
                          text=True)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_an_unexpected_error_in_a_stage_is_exit_1_naming_the_stage(prefect_server, tmp_path, monkeypatch, capsys):
    """A plain ValueError from inside a stage (numpy's, polars') is a bug, not bad input: exit 1 naming the stage,
    never 2; a stage's own message about the input stays exit 2 (issue 26 item 5)."""
    from tasks.runtime import runner

    def broken(stage, batch, result):
        if stage.name == "quality":
            raise ValueError("all the input array dimensions except for the concatenation axis must match exactly")

    monkeypatch.setattr(runner, "check_declaration", broken)
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"text": "A sentence that is long enough to be kept by every rule here."}) + "\n")
    code = main(["run", "--input", str(data), "--output", str(tmp_path / "o"), "--stages", "ingest,quality"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "stage quality failed: ValueError: all the input array dimensions" in err
    select = tmp_path / "select.toml"
    select.write_text('[select]\nlabel = "genre"\n[[select.policies]]\nkind = "random"\nk = 1\n')
    monkeypatch.undo()
    code = main(["run", "--input", str(data), "--output", str(tmp_path / "o2"), "--config", str(select), "--stages",
                 "ingest,select"])
    assert code == 2 and "select.label = 'genre' names no column" in capsys.readouterr().err


def test_a_run_on_a_non_terminal_prints_stage_lines_not_rows(prefect_server, tmp_path):
    """What `sluice run` prints when its output is a file or a pipe (issue 27 item 2): a line per stage commit and
    the summary; no per-shard lines, no sample of rejected rows (they are in the quarantine and the report), no
    "Finished in state Completed()" per Prefect task run, no model-loading bars."""
    data = tmp_path / "in.jsonl"
    from tasks.ops.demo_corpus import kjv_records

    verses = [r["text"] for r in kjv_records()]
    lines = [orjson.dumps({"text": " ".join(verses[4 * i:4 * i + 4])}) for i in range(200)]
    lines[5], lines[50] = b"{not json", b'{"text": 3}'
    data.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "c.toml"
    config.write_text("[ingest]\nshard_rows = 20\n[runner]\ntask_rows = 0\n")
    proc = subprocess.run([SLUICE, "run", "--input", str(data), "--output", str(tmp_path / "o"), "--config",
                           str(config), "--stages", "ingest,decontaminate,quality,dedup,publish"],
                          env=subprocess_env(prefect_server, PREFECT_LOGGING_LEVEL="INFO"),  # a user's default
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = (proc.stdout + proc.stderr).splitlines()
    assert len(printed) <= 25, "\n".join(printed)
    text = "\n".join(printed)
    assert text.count(" committed: ") == 5 and "ingest.json.invalid" not in text and " shard 0" not in text
    assert text.count("Finished in state Completed()") == 1  # the flow's own, not one per task run
    assert "Loading weights" not in text and "ingest         in       200" in text


def test_only_errors_about_input_exit_2_and_a_bug_exits_1(tmp_path, monkeypatch, capsys):
    """Exit 2 means "fix what you gave": a `BadInput` (a bad flag value here). A plain ValueError from inside a
    command is a bug, not bad input: exit 1, with the pointer to the traceback (issue 29 item 5)."""
    from tasks.io import versions

    assert main(["verify", "ds", "--version", "three", "--output", str(tmp_path)]) == 2
    assert "version 'three' is not a version number" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(versions, "verify_version", bug)
    assert main(["verify", "ds", "--version", "1", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ValueError: operands could not be broadcast together" in err and "--log-level debug" in err
