"""Ops commands (replay, diff), secret references, and the retrain hook's webhook."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import orjson
import polars as pl
import pytest
import s3fs
from conftest import REPO, SLUICE, subprocess_env

from flows.cli import build_parser, main
from schemas.config import ConfigError, RetrainConfig, load_config
from tasks.ops.demo_corpus import kjv_records

VERSES = kjv_records()
DEMO = (REPO / "infra" / "demo.toml").read_text()
DEMO_STAGES = '["ingest", "decontaminate", "quality", "dedup", "score", "select", "augment", "publish"]'
assert DEMO_STAGES in DEMO  # the tests below replace the demo's stages with their own



def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    return path


def manifest(out: Path, run_id: str, stage: str) -> dict:
    return json.loads((out / "runs" / run_id / stage / "_manifest.json").read_text())


@pytest.mark.parametrize("command", ["replay", "diff", "deploy", "serve", "status"])
def test_ops_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 300
    assert command in build_parser().format_help()


def test_replay_oversize_lines_after_raising_the_limit(prefect_server, tmp_path, capsys):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    long_docs = [{"id": f"long-{i}", "text": " ".join(v["text"] for v in VERSES[i * 40:(i + 1) * 40])}
                 for i in range(3)]
    write_jsonl(data / "a.jsonl", VERSES[:200] + long_docs)
    strict = tmp_path / "strict.toml"
    strict.write_text('stages = ["ingest", "publish"]\n[ingest]\nmax_record_bytes = 2000\n'
                      '[publish]\ndataset = "replayed"\n')
    raised = tmp_path / "raised.toml"
    raised.write_text('stages = ["ingest", "publish"]\n[ingest]\nmax_record_bytes = 100000\n'
                      '[publish]\ndataset = "replayed"\n')
    assert main(["run", "--input", str(data), "--output", str(out), "--config", str(strict),
                 "--run-id", "first"]) == 0
    assert manifest(out, "first", "ingest")["rejected_by_reason"] == {"ingest.record.oversize": 3}
    assert main(["replay", "first", "--output", str(out), "--config", str(raised), "--stage", "ingest",
                 "--reason", "ingest.record.nope", "--new-run-id", "bad"]) == 2
    assert "reasons there: ingest.record.oversize" in capsys.readouterr().err
    assert main(["replay", "first", "--output", str(out), "--config", str(raised), "--stage", "ingest",
                 "--reason", "ingest.record", "--new-run-id", "second"]) == 0
    m = manifest(out, "second", "ingest")
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (203, 203, 0)
    assert m["replay_of"] == {"run_id": "first", "stage": "ingest", "reason": "ingest.record"}
    parts = sorted((out / "datasets" / "replayed" / "v2" / "data").glob("part-*.parquet"))
    v2 = pl.concat([pl.read_parquet(p) for p in parts])
    assert v2.height == 203
    replayed = v2.filter(pl.col("source_id").str.starts_with("long-")).sort("source_id")
    assert replayed["text"].to_list() == [d["text"] for d in long_docs]  # whole lines, not the quarantine excerpt
    assert json.loads((out / "runs" / "first" / "run.json").read_text())["status"] == "succeeded"  # untouched


def test_replay_quality_rejections_matches_a_fresh_run_with_the_fix(prefect_server, tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", VERSES[1000:1600])
    strict = tmp_path / "strict.toml"
    strict.write_text(DEMO.replace("min_doc_words = 8", "min_doc_words = 30").replace(
        DEMO_STAGES, '["ingest", "quality", "dedup"]'))
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(DEMO.replace(DEMO_STAGES, '["ingest", "quality", "dedup"]'))
    assert main(["run", "--input", str(data), "--output", str(out), "--config", str(strict), "--run-id", "strict"]) == 0
    before = manifest(out, "strict", "quality")
    assert before["rejected_by_reason"].get("quality.gopher.word_count", 0) > 50
    assert main(["replay", "strict", "--output", str(out), "--config", str(fixed), "--stage", "quality",
                 "--reason", "quality.gopher", "--new-run-id", "replayed"]) == 0
    assert main(["run", "--input", str(data), "--output", str(out), "--config", str(fixed), "--run-id", "fresh"]) == 0

    def kept_ids(run_id: str, stage: str) -> set[str]:
        return set(pl.concat([pl.read_parquet(out / o["path"]) for o in manifest(out, run_id, stage)["outputs"]])["id"])

    assert kept_ids("replayed", "quality") == kept_ids("fresh", "quality")
    assert kept_ids("replayed", "dedup") == kept_ids("fresh", "dedup")
    assert len(kept_ids("replayed", "quality")) > before["rows_out"]


def test_diff_between_versions(prefect_server, tmp_path, capsys):
    out = tmp_path / "out"
    parts = {}
    for name, chunk in {"a": VERSES[2000:2400], "b": VERSES[2400:2600], "c": VERSES[2600:2900]}.items():
        parts[name] = write_jsonl(tmp_path / f"{name}.jsonl", [{**r, "source": f"src-{name}"} for r in chunk])
    cfg = tmp_path / "c.toml"
    cfg.write_text(DEMO.replace(DEMO_STAGES, '["ingest", "quality", "publish"]'))
    for run_id, files in (("v1run", ["a", "b"]), ("v2run", ["a", "c"])):
        args = ["run", "--output", str(out), "--config", str(cfg), "--run-id", run_id]
        assert main(args + [a for f in files for a in ("--input", str(parts[f]))]) == 0
    capsys.readouterr()
    assert main(["diff", "demo", "v1", "v2", "--output", str(out), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    v1 = pl.read_parquet(out / "datasets" / "demo" / "v1" / "data" / "*.parquet")
    v2 = pl.read_parquet(out / "datasets" / "demo" / "v2" / "data" / "*.parquet")
    n_b, n_c = (v1["source"] == "src-b").sum(), (v2["source"] == "src-c").sum()
    assert (d["rows_a"], d["rows_b"]) == (v1.height, v2.height)
    assert (d["rows_added"], d["rows_removed"]) == (n_c, n_b)
    assert d["by_source"] == {"src-b": {"a": n_b, "b": 0, "change": -n_b}, "src-c": {"a": 0, "b": n_c, "change": n_c}}
    assert "src-a" not in d["by_source"]
    assert d["scores"]["q_gopher_words"]["mean_shift"] == pytest.approx(
        v2["q_gopher_words"].mean() - v1["q_gopher_words"].mean(), abs=1e-4)
    assert any(k.startswith("quality.") for k in d["by_reason"])
    published = json.loads((out / "datasets" / "demo" / "v2" / "_diff.json").read_text())
    assert (published["rows_added"], published["rows_removed"]) == (n_c, n_b)
    assert main(["diff", "demo", "1", "2", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "src-c" in text and f"added     {n_c:>10,}" in text and "q_gopher_words" in text
    assert main(["diff", "demo", "1", "7", "--output", str(out)]) == 2
    assert "no published v7" in capsys.readouterr().err


def test_plain_text_secrets_are_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\nkey = "AKIAIOSFODNN7EXAMPLE"\nsecret = "env:MY_SECRET"\n[retrain]\ntoken = "abc"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "storage.key" in text and "retrain.token" in text and "storage.secret" not in text
    assert "AKIAIOSFODNN7EXAMPLE" not in text


def test_missing_env_secret_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\nkey = "env:NOT_SET_ANYWHERE"\nsecret = "env:NOT_SET_ANYWHERE"\n')
    with pytest.raises(ValueError, match="storage.key: environment variable NOT_SET_ANYWHERE is not set"):
        load_config(cfg).storage.s3_options()


def test_secret_block_credentials_never_reach_outputs_logs_or_artifacts(prefect_server, s3_env, tmp_path,
                                                                        monkeypatch):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    secret_value = "block-secret-Zq81xLw"
    Secret(value=secret_value).save("sluice-s3-secret", overwrite=True)
    monkeypatch.setenv("MY_KEY_ID", "key-from-env-7Hq")
    cfg = tmp_path / "c.toml"
    cfg.write_text('stages = ["ingest", "publish"]\n[storage]\nkey = "env:MY_KEY_ID"\n'
                   'secret = "prefect-secret:sluice-s3-secret"\n[publish]\ndataset = "secretive"\n')
    assert load_config(cfg).storage.s3_options()["secret"] == secret_value
    data = write_jsonl(tmp_path / "a.jsonl", VERSES[:100])
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    fs.mkdir("secretive")
    env = subprocess_env(prefect_server, PREFECT_LOGGING_LEVEL="DEBUG")
    done = subprocess.run([SLUICE, "run", "--input", str(data), "--output", "s3://secretive/out", "--config",
                           str(cfg), "--run-id", "secret-run"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "secret-run" in done.stdout + done.stderr
    assert secret_value not in done.stdout + done.stderr and "key-from-env-7Hq" not in done.stdout + done.stderr
    objects = fs.find("secretive/out")
    assert any(o.endswith("v1/_manifest.json") for o in objects)
    for obj in objects:
        body = fs.cat(obj)
        assert secret_value.encode() not in body and b"key-from-env-7Hq" not in body, obj
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        mine = [r for r in runs if r.name == "curate-secret-run"]
        assert mine and secret_value not in json.dumps(mine[0].parameters)
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[mine[0].id])))
        assert logs and not any(secret_value in log.message for log in logs)
        artifacts = client.read_artifacts()
        assert not any(secret_value in str(a.data) for a in artifacts)


class _Hook(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)})
        status = 500 if "fail" in self.path else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"accepted" if status == 200 else b"boom")

    def log_message(self, *args) -> None:
        pass


def test_retrain_webhook_sends_token_and_records_no_secret(tmp_path, monkeypatch):
    from tasks.io.storage import Storage
    from tasks.ops.retrain_hook import outcomes, record_outcome, run_hook

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HOOK_TOKEN", "tok-SECRET-55")
    try:
        url = f"http://127.0.0.1:{server.server_port}/retrain?sig=query-secret"
        cfg = RetrainConfig(url=url, token="env:HOOK_TOKEN")
        diff = {"changed_fraction": 0.5}
        outcome = run_hook(cfg, "ds", 4, "s3://b/datasets/ds/v4", diff)
        assert outcome["ok"] and outcome["hooks"][0]["http_status"] == 200
        assert _Hook.seen[-1]["auth"] == "Bearer tok-SECRET-55"
        assert _Hook.seen[-1]["body"] == {"dataset": "ds", "version": 4, "uri": "s3://b/datasets/ds/v4", "diff": diff}
        root = Storage(str(tmp_path / "v4"))
        record_outcome(root, outcome, "flow-run-1")
        failed = run_hook(RetrainConfig(url=url.replace("/retrain", "/fail"), command=["false"]), "ds", 4, "u", None)
        assert not failed["ok"] and [h["ok"] for h in failed["hooks"]] == [False, False]
        assert failed["hooks"][0]["exit_code"] == 1 and failed["hooks"][1]["http_status"] == 500
        record_outcome(root, failed, "flow-run-2")
    finally:
        server.shutdown()
    recorded = outcomes(root)
    assert [r["status"] for r in recorded] == ["succeeded", "failed"]
    text = "".join(p.read_text() for p in (tmp_path / "v4" / "_retrain").iterdir())
    assert "tok-SECRET-55" not in text and "query-secret" not in text
    assert recorded[0]["hooks"][0]["target"] == f"http://127.0.0.1:{server.server_port}/retrain"
