"""The smaller holes of issue 24, item 7: each broke on the landed main as its docstring says."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SLUICE, _free_port

from flows.cli import main
from schemas.config import ConfigError, IngestConfig, SelectConfig, load_config
from tasks.io.readers import detect_format, read_batches, resolve_inputs
from tasks.stages.ingest import ingest


def _ingest(path: Path):
    cfg = IngestConfig()
    (file,) = resolve_inputs([str(path)])
    fmt, comp = detect_format(file.uri)
    results = [ingest(b, cfg) for b in read_batches(file, fmt, comp, cfg)]
    return pl.concat([r.kept for r in results]), pl.concat([r.rejected for r in results])


def test_credentials_in_an_input_uri_are_refused_and_never_printed(tmp_path, capsys):
    """Before: the password was printed in the error line and stored in prefect.db with the flow parameters."""
    code = main(["run", "--input", "s3://AKIAEXAMPLE:hunter2-secret@bucket/x.jsonl", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "hunter2-secret" not in err and "s3://***@bucket/x.jsonl carries credentials" in err
    assert main(["runs", "--output", "s3://k:hunter2-secret@bucket/root"]) == 2
    assert "hunter2-secret" not in capsys.readouterr().err
    from flows.curate import run_curate
    from tasks.io.storage import CredentialsInUri

    with pytest.raises(CredentialsInUri):  # the API refuses before a flow run (and its parameters) exists
        run_curate(["s3://k:hunter2-secret@b/x.jsonl"], str(tmp_path))


@pytest.mark.parametrize(("text", "what"), [
    ("config = 1", "a directory"), ("\ufeff[ingest]\nshard_rows = 10\n", "a BOM"),
    ("[ingest]\nshard_rows = 18446744073709551617\n", "2^64"), ("[publish]\ndescription = '" + "x" * 60_000 + "'\n",
                                                                 "a 60 kB description")])
def test_config_files_that_used_to_confuse(tmp_path, text, what):
    path = tmp_path / "c.toml"
    if what == "a directory":
        path.mkdir()
        with pytest.raises(ConfigError, match="is a folder"):
            load_config(path)
        assert main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(path)]) == 2
        return
    path.write_text(text, encoding="utf-8")
    if what == "a BOM":
        assert load_config(path).ingest.shard_rows == 10
    elif what == "2^64":
        with pytest.raises(ConfigError, match=r"ingest.shard_rows: 1.84e\+19 is out of range"):
            load_config(path)
    else:
        with pytest.raises(ConfigError, match="publish.description: String should have at most 20000 characters"):
            load_config(path)


def test_text_of_only_nul_or_zero_width_characters_is_empty(tmp_path):
    path = tmp_path / "inv.jsonl"
    rows = ["\u0000\u0000", "\u200b\u200c\u200d", "\ufeff \u2060", "\u00ad", "real text \u200b here"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    kept, rejected = _ingest(path)
    assert kept["text"].to_list() == ["real text \u200b here"]
    assert rejected["reason"].to_list() == ["ingest.text.empty"] * 4
    assert "zero-width" in json.loads(rejected["evidence"][0])["detail"]


def test_a_nan_float_label_is_no_class(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"text": ["a b c", "d e f", "g h i"], "label": [1.0, float("nan"), None]}), path)
    kept, _ = _ingest(path)
    assert kept["label"].to_list() == ["1.0", None, None]


def test_select_label_naming_no_column_is_an_error():
    from tasks.stages import select

    batch = pl.DataFrame({"id": ["a"], "text": ["x"], "label": ["pos"]})
    with pytest.raises(ValueError, match="select.label = 'lable' names no column"):
        select.select_one_shard(batch, SelectConfig(label="lable"))


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<html>not json{"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_endpoint_answering_garbage_costs_rows_not_the_run_and_warns():
    """Before: garbage JSON raised out of the stage (exit 2, endpoint not named); failures left warnings empty."""
    from schemas.config import EndpointConfig
    from tasks.runtime.runner import _warnings
    from tasks.stages import augment
    from tasks.stages.augment import generators

    port = _free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{_free_port()}/v1"):  # garbage, closed port
            cfg = EndpointConfig(base_url=url, model="m", max_retries=0, timeout_seconds=5)
            out = generators.Endpoint(cfg, None, 8, 0.8, 0.95, 1000)(["a", "b"], [1, 2])
            assert out.texts == [None, None] and len(out.errors) == 2 and out.errors[0].startswith(url)
    finally:
        server.shutdown()
    from tasks.runtime.stats import Stats

    stats = Stats(counts={"augment.requests": 12, "augment.requests_failed": 12},
                  records={"generation_errors": [{"error": out.errors[0]}]})
    checks = augment.rate_checks(stats, 100, augment.STAGE.params(load_config(None)))
    warned = _warnings("augment", checks, 100)
    assert warned == [f"augment: 12 of 12 generation requests failed after retries (first: {out.errors[0]})"]


def test_the_cli_exits_2_for_a_huge_shard_rows(tmp_path):
    import subprocess

    cfg = tmp_path / "c.toml"
    cfg.write_text("[ingest]\nshard_rows = 18446744073709551617\n")
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "x"}\n')
    done = subprocess.run([SLUICE, "run", "--input", str(data), "--output", str(tmp_path / "o"), "--config",
                           str(cfg)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "SLUICE_WARM_WORKER": "off"})
    assert done.returncode == 2 and "out of range" in done.stderr
