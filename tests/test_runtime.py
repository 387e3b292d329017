"""The stage abstraction and the runner: synthetic rows, model lifecycle, device slots, dependency checks, the sink's
commit, and relocatable roots. Tiny stages defined here exercise what the real stages will need."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import polars as pl
import pytest
from conftest import REPO
from handmade import committed, publish_by_hand

from flows.cli import main
from schemas.config import SluiceConfig
from schemas.record import CANONICAL
from tasks.io import layout
from tasks.io.manifests import Receipt, StageManifest
from tasks.io.storage import Storage
from tasks.runtime import lifecycle, registry, runner
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import ContractError, close_contracts, contracts_for
from tasks.runtime.stage import PROVENANCE, Stage, StageContractError, StageResult, check_declaration


def _records(n: int, prefix: str = "r") -> pl.DataFrame:
    rows = [{"id": f"{prefix}{i}", "text": f"document number {i}", "source": "test", "content_sha256": f"h{i}"}
            for i in range(n)]
    return pl.DataFrame(rows).with_columns([pl.lit(None, t).alias(c) for c, t in PROVENANCE.items()])


def _augment(batch: pl.DataFrame, params) -> StageResult:
    """A test stage that adds one paraphrase per row whose id ends in 0 (as an augment stage will)."""
    parents = batch.filter(pl.col("id").str.ends_with("0"))
    synthetic = parents.with_columns(
        id=pl.col("id") + "-syn", text=pl.lit("a paraphrase of ") + pl.col("text"),
        syn_origin=pl.lit("paraphrase"), syn_generator=pl.lit("test"), syn_parent_id=pl.col("id"),
        syn_prompt_sha256=pl.lit("0" * 64), syn_seed=pl.lit(7, pl.Int64))
    dropped = batch.filter(pl.col("id") == "r1").with_columns(reason=pl.lit("test.drop"), evidence=pl.lit("{}"))
    return StageResult(kept=batch.filter(pl.col("id") != "r1"), rejected=dropped, synthetic=synthetic)


AUGMENT = Stage(name="augment-test", fn=_augment, params=lambda cfg: cfg.publish, requires={}, adds=PROVENANCE,
                suite="publish")


def _ctx(tmp_path, run_id: str = "rt") -> RunContext:
    return RunContext(Storage(str(tmp_path / "out")), run_id, SluiceConfig())


def test_synthetic_rows_are_counted_written_and_validated(tmp_path):
    ctx = _ctx(tmp_path)
    batch = _records(25)
    receipt = runner.process_shard(ctx, AUGMENT, "00000", lambda: batch, [{"test": 1}])
    assert (receipt.rows_in, receipt.rows_out, receipt.rows_rejected, receipt.rows_synthetic) == (25, 27, 1, 3)
    written = ctx.storage.read_parquet(receipt.outputs[0].path)
    assert written.height == 27 and written.filter(pl.col("syn_origin").is_not_null())["syn_parent_id"].to_list() \
        == ["r0", "r10", "r20"]
    manifest = runner.commit_stage(ctx, AUGMENT, [receipt], [{"test": 1}], contracts_for(ctx.run_id), time.time())
    assert manifest.rows_in + manifest.rows_synthetic == manifest.rows_out + manifest.rows_rejected
    assert (manifest.rows_synthetic, manifest.invariant_holds, manifest.format) == (3, True, 2)
    on_disk = orjson.loads(ctx.storage.read_bytes(layout.stage_manifest("rt", "augment-test")))
    assert on_disk["rows_synthetic"] == 3 and on_disk["invariant"] == "rows_in + rows_synthetic == rows_out + " \
        "rows_rejected"
    close_contracts("rt")


def test_the_suite_sees_synthetic_rows(tmp_path):
    """A synthetic row that breaks the output contract (no text) fails the shard like a real row would."""
    def bad(batch, params):
        result = _augment(batch, params)
        return StageResult(result.kept, result.rejected, synthetic=result.synthetic.with_columns(
            text=pl.lit(None, pl.String)))

    ctx = _ctx(tmp_path, "rt-bad")
    receipt = runner.process_shard(ctx, Stage(**{**AUGMENT.__dict__, "fn": bad}), "00000", lambda: _records(11), [])
    assert not receipt.contract["success"]
    assert any("text" in f and "2 unexpected" in f for f in receipt.contract["failures"])
    close_contracts("rt-bad")


def test_synthetic_rows_need_provenance_and_the_kept_schema():
    batch = _records(11)
    result = _augment(batch, None)
    check_declaration(AUGMENT, batch, result)
    no_parent = StageResult(result.kept, result.rejected,
                            synthetic=result.synthetic.with_columns(syn_parent_id=pl.lit(None, pl.String)))
    with pytest.raises(StageContractError, match="2 synthetic row\\(s\\) with a null 'syn_parent_id'"):
        check_declaration(AUGMENT, batch, no_parent)
    extra = StageResult(result.kept, result.rejected, synthetic=result.synthetic.with_columns(x=pl.lit(1)))
    with pytest.raises(StageContractError, match="kept rows' schema \\(differs in x\\)"):
        check_declaration(AUGMENT, batch, extra)
    lost = StageResult(result.kept.head(3), result.rejected, synthetic=result.synthetic)
    with pytest.raises(StageContractError, match="lost rows"):
        check_declaration(AUGMENT, batch, lost)


def test_generated_rows_that_fail_a_gate_are_counted_as_synthetic_and_rejected(tmp_path):
    """in + generated = out + rejected: a synthetic row the gate refuses is quarantined, never dropped silently."""
    def gated(batch, params):
        result = _augment(batch, params)
        failed = result.synthetic.filter(pl.col("id") == "r10-syn").with_columns(
            reason=pl.lit("augment.gate.novelty"), evidence=pl.lit('{"edit_similarity": 0.9}'))
        return StageResult(result.kept, pl.concat([result.rejected, failed]),
                           synthetic=result.synthetic.filter(pl.col("id") != "r10-syn"), synthetic_rejected=1)

    ctx = _ctx(tmp_path, "rt-gate")
    stage = Stage(**{**AUGMENT.__dict__, "fn": gated})
    receipt = runner.process_shard(ctx, stage, "00000", lambda: _records(25), [])
    assert (receipt.rows_in, receipt.rows_synthetic, receipt.rows_out, receipt.rows_rejected) == (25, 3, 26, 2)
    assert receipt.rejected_by_reason == {"augment.gate.novelty": 1, "test.drop": 1}
    quarantined = ctx.storage.read_parquet(receipt.rejected[0].path)
    assert quarantined.filter(pl.col("reason") == "augment.gate.novelty")["syn_parent_id"].to_list() == ["r10"]
    result = gated(_records(25), None)
    miscounted = StageResult(result.kept, result.rejected, synthetic=result.synthetic, synthetic_rejected=2)
    with pytest.raises(StageContractError, match="2 synthetic rows counted as rejected, 1 rejected rows carry"):
        check_declaration(stage, _records(25), miscounted)
    close_contracts("rt-gate")


def test_setup_runs_once_per_process_and_teardown_frees_it(tmp_path):
    calls = {"setup": 0, "teardown": 0}

    def setup(params):
        calls["setup"] += 1
        time.sleep(0.05)  # threads arriving meanwhile must wait, not load a second copy
        return {"model": "loaded"}

    def fn(batch, params, loaded):
        assert loaded == {"model": "loaded"}
        return StageResult(kept=batch, rejected=batch.clear())

    stage = Stage(name="model-test", fn=fn, params=lambda cfg: cfg.publish, requires={}, adds={}, suite="publish",
                  setup=setup, teardown=lambda obj: calls.__setitem__("teardown", calls["teardown"] + 1))
    ctx = _ctx(tmp_path, "rt-model")
    with ThreadPoolExecutor(4) as pool:
        receipts = list(pool.map(lambda i: runner.process_shard(ctx, stage, f"{i:05d}", lambda: _records(5, f"s{i}-"),
                                                                [{"i": i}]), range(8)))
    assert len(receipts) == 8 and calls == {"setup": 1, "teardown": 0}
    assert lifecycle.is_loaded(stage, ctx.config.publish)
    assert lifecycle.release("model-test") == 1 and calls == {"setup": 1, "teardown": 1}
    assert not lifecycle.is_loaded(stage, ctx.config.publish)
    close_contracts("rt-model")


def test_the_runtime_reads_what_a_setup_declares_and_checks_its_cache_folders(tmp_path):
    """A stage's setup opens nothing itself: the runtime reads the files it declares (tasks/runtime/externals.py),
    hands it their bytes, and creates its cache folders, failing before any model loads, naming the folder, when
    one cannot be written."""
    from tasks.runtime.externals import CacheNotWritable, Externals

    listed, gone, cache = tmp_path / "list.txt", tmp_path / "gone.txt", tmp_path / "cache" / "models"
    listed.write_bytes(b"bad.example\n")
    seen = {}

    def setup(params, inputs):
        seen["bytes"], seen["caches"] = inputs.read(str(listed)), inputs.caches
        with pytest.raises(FileNotFoundError):
            inputs.read(str(gone))  # absent: the stage says so in its own words
        with pytest.raises(KeyError, match="was not declared"):
            inputs.read(str(tmp_path / "other.txt"))
        return {"sha256": inputs.sha256}

    def stage(name, declared):
        return Stage(name=name, fn=lambda b, p, m: StageResult(kept=b, rejected=b.clear()), params=lambda c: c,
                     requires={}, adds={}, suite="publish", setup=setup, externals=lambda p: declared)

    loaded = lifecycle.loaded_for(stage("ext-ok", Externals(files=(str(listed), str(gone)), caches=(cache,))),
                                  {"k": 1})
    assert seen == {"bytes": b"bad.example\n", "caches": (cache,)} and cache.is_dir()
    assert loaded["sha256"] == {str(listed): hashlib.sha256(b"bad.example\n").hexdigest(), str(gone): None}
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheNotWritable, match=f"cannot write the cache folder {blocker / 'models'}.*SLUICE_CACHE"):
        lifecycle.loaded_for(stage("ext-blocked", Externals(caches=(blocker / "models",))), {"k": 1})
    assert "bytes" in seen and not lifecycle.is_loaded(stage("ext-blocked", Externals()), {"k": 1})


def test_preloaded_models_are_the_ones_the_stage_uses_and_block_no_other_stage():
    """`preload` loads in the background; the stage's own call waits for that load (one setup, one object), and
    another stage's setup runs meanwhile instead of queueing behind it."""
    import threading

    started, release_slow = threading.Event(), threading.Event()
    calls = {"slow": 0, "fast": 0}

    def slow_setup(params):
        calls["slow"] += 1
        started.set()
        release_slow.wait(10)
        return {"model": "slow"}

    def fast_setup(params):
        calls["fast"] += 1
        return {"model": "fast"}

    def stage(name, setup):
        return Stage(name=name, fn=lambda b, p, m: StageResult(kept=b, rejected=b.clear()), params=lambda c: c,
                     requires={}, adds={}, suite="publish", setup=setup)

    slow, fast = stage("preload-slow", slow_setup), stage("preload-fast", fast_setup)
    thread = lifecycle.preload(slow, {"k": 1})
    assert started.wait(5)
    assert lifecycle.loaded_for(fast, {"k": 1}) == {"model": "fast"}  # not behind the slow load
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(lifecycle.loaded_for, slow, {"k": 1})
        time.sleep(0.1)
        assert not waiting.done()
        release_slow.set()
        assert waiting.result(5) == {"model": "slow"}
    thread.join(5)
    assert calls == {"slow": 1, "fast": 1}
    assert lifecycle.release("preload-slow") == 1 and lifecycle.release("preload-fast") == 1


def test_gpu_stage_runs_one_shard_at_a_time_per_process(tmp_path):
    running, peak, lock = [0], [0], threading.Lock()

    def fn(batch, params):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return StageResult(kept=batch, rejected=batch.clear())

    ctx = _ctx(tmp_path, "rt-gpu")
    for resources, expected in (("cpu", 4), ("gpu", 1)):  # one device a process: its models sit on one
        stage = Stage(name=f"slot-{resources}", fn=fn, params=lambda cfg: cfg.publish, requires={}, adds={},
                      suite="publish", resources=resources)
        peak[0] = 0
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i, s=stage: runner.process_shard(ctx, s, f"{i:05d}", lambda: _records(3), [{"i": i}]),
                          range(8)))
        assert peak[0] == expected, resources
    close_contracts("rt-gpu")


def test_a_missing_package_is_named_when_the_stage_is_selected(monkeypatch):
    stage = Stage(name="needs-test", fn=lambda b, p: None, params=lambda cfg: cfg.publish, requires={}, adds={},
                  suite="publish", needs=("numpy", "sluice_no_such_package"))
    monkeypatch.setitem(registry.STAGES, "needs-test", stage)
    monkeypatch.setattr(registry, "ORDER", [*registry.ORDER, "needs-test"])
    with pytest.raises(registry.StageSelectionError,
                       match="stage needs-test needs the package\\(s\\) sluice_no_such_package, which are not"):
        registry.select(["ingest", "needs-test"])


def _canonical_frame(n: int, empty: tuple[str, ...]) -> pl.DataFrame:
    """`n` canonical rows; the columns in `empty` are all null, every other one filled."""
    from datetime import UTC, datetime

    filler = {"url": pl.lit("https://example.org/x"), "timestamp": pl.lit(datetime(2026, 1, 1, tzinfo=UTC)),
              "meta": pl.lit("{}"), "label": pl.lit("a"), "prompt": pl.lit("p"), "response": pl.lit("r"),
              "source_id": pl.lit("s"), "src_file": pl.lit("f.jsonl"), "src_line": pl.lit(1)}
    base = _records(n).select("id", "text", "source", "content_sha256")
    return base.with_columns([(pl.lit(None) if c in empty else filler[c]).cast(t).alias(c)
                              for c, t in CANONICAL.items() if c not in base.columns]).select(list(CANONICAL)).cast(
        CANONICAL)


def test_publish_is_a_sink_committed_by_the_runner(tmp_path):
    # every column goes out (publish.columns excludes none): the part is copied byte for byte
    ctx = RunContext(Storage(str(tmp_path / "out")), "pub-ok",
                     SluiceConfig.model_validate({"publish": {"columns": {"exclude": []}}}))
    source = committed(ctx, "dedup", _canonical_frame(7, empty=()))
    manifest = publish_by_hand(ctx, source)
    assert manifest.published["dataset"] == "curated" and manifest.published["version"] == 1
    assert manifest.published["rows_by_source"] == {"test": 7} and manifest.published["columns_left_out"] == []
    part = ctx.storage.read_bytes(layout.version_part("curated", 1, 0))
    assert part == ctx.storage.read_bytes(source.outputs[0].path)  # copied byte for byte
    version = ctx.storage.read_record(StageManifest, layout.version_manifest("curated", 1))
    assert version.rows_out == 7 and version.outputs[0].path == "datasets/curated/v1/data/part-00000.parquet"
    receipt = ctx.storage.read_record(Receipt, layout.shard_receipt("pub-ok", "publish", "00000"))
    assert receipt.outputs[0].sha256 == source.outputs[0].sha256
    close_contracts("pub-ok")


def test_publish_leaves_out_the_columns_no_row_fills_and_says_so_in_the_card(tmp_path):
    ctx = _ctx(tmp_path, "pub-nulls")
    source = committed(ctx, "dedup", _canonical_frame(5, empty=("url", "prompt", "response")))
    manifest = publish_by_hand(ctx, source)
    assert manifest.published["columns_left_out"] == ["url", "prompt", "response"]
    assert manifest.published["columns_excluded"] == ["src_file", "src_line"]  # publish.columns' default
    part = ctx.storage.read_parquet(layout.version_part("curated", 1, 0))
    assert part.columns == [c for c in CANONICAL if c not in ("url", "prompt", "response", "src_file", "src_line")]
    assert part.height == 5
    assert manifest.outputs[0].sha256 == hashlib.sha256(ctx.storage.read_bytes(manifest.outputs[0].path)).hexdigest()
    card = ctx.storage.read_bytes(layout.version_card("curated", 1)).decode()
    assert card.startswith("---\nlicense: unknown\n") and "`url`, `prompt`, `response`" in card
    assert "- name: timestamp\n    dtype: timestamp[us, tz=UTC]" in card and "- name: url" not in card
    close_contracts("pub-nulls")


def test_a_failed_publish_contract_is_recorded_and_commits_no_version(tmp_path, capsys):
    ctx = _ctx(tmp_path, "pub-bad")
    twice = pl.concat([_records(3), _records(3)]).select("id", "text", "source", "content_sha256")
    source = committed(ctx, "dedup", twice)
    with pytest.raises(ContractError, match="contract of stage 'publish' failed: expect_column_values_to_be_unique"):
        publish_by_hand(ctx, source)
    assert ctx.storage.exists(layout.contract_failure("pub-bad", "publish"))
    assert not ctx.storage.exists(layout.stage_manifest("pub-bad", "publish"))
    assert not ctx.storage.exists(layout.version_manifest("curated", 1))
    close_contracts("pub-bad")
    assert main(["show", "pub-bad", "--output", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "publish: CONTRACT FAILED (not committed)" in shown and "rows in 6  out 6" in shown


def test_ops_commands_read_a_root_written_before_the_layout_change(tmp_path, capsys, prefect_server):
    """tests/fixtures/format1-root was written by the code before this layout (absolute URIs in its manifests,
    flat counter stats), under another path: show, quarantine, diff, status and replay still read it."""
    root = tmp_path / "moved"
    shutil.copytree(REPO / "tests" / "fixtures" / "format1-root", root)
    out = str(root)
    assert main(["show", "fmt1-a", "--output", out]) == 0
    shown = capsys.readouterr().out
    assert "quality: committed" in shown and "rows in 102  out 61  quarantined 41" in shown
    assert main(["quarantine", "fmt1-a", "--output", out, "--stage", "dedup"]) == 0
    assert "dedup        dedup.exact" in capsys.readouterr().out
    assert main(["diff", "fmt1", "1", "2", "--output", out, "--format", "json"]) == 0
    diff = orjson.loads(capsys.readouterr().out)
    assert (diff["rows_a"], diff["rows_b"]) == (60, 38)
    assert main(["status", "--output", out]) == 0
    assert "fmt1                 v2" in capsys.readouterr().out
    config = tmp_path / "fmt1.toml"  # the fixture's own config
    config.write_text('[publish]\ndataset = "fmt1"\n[quality.gopher_quality]\nmin_doc_words = 20\n'
                      '[quality.c4]\nmin_num_sentences = 1\n')
    assert main(["replay", "fmt1-a", "--output", out, "--config", str(config), "--stage", "quality",
                 "--reason", "quality.gopher", "--new-run-id", "fmt2-replay"]) == 0
    replayed = orjson.loads((root / "runs" / "fmt2-replay" / "quality" / "_manifest.json").read_bytes())
    assert replayed["format"] == 2 and replayed["replay_of"]["run_id"] == "fmt1-a"
    # the 61 rows fmt1-a kept, plus its 27 rows quarantined as quality.gopher* (20 alpha_words, 7 repetition)
    assert replayed["rows_in"] == 61 + 27 == replayed["rows_out"] + replayed["rows_rejected"]
    assert (root / "datasets" / "fmt1" / "v3" / "_manifest.json").exists()


def test_a_copied_root_still_resolves(demo_run, tmp_path, capsys):
    out, _ = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs" / "demo-run", copy / "runs" / "demo-run")
    assert main(["quarantine", "demo-run", "--output", str(copy), "--stage", "ingest", "--limit", "1"]) == 0
    assert "quarantined rows" in capsys.readouterr().out
    manifest = orjson.loads((copy / "runs" / "demo-run" / "quality" / "_manifest.json").read_bytes())
    assert all(not o["path"].startswith("/") for o in manifest["outputs"] + manifest["rejected"])


def test_stage_wide_uniqueness_is_checked_in_groups_through_storage(tmp_path):
    """Over the task memory budget, the ids are split into hash groups on storage and checked one group at a time:
    a duplicate in two different shards is still found, named once, and the group files are gone afterwards."""
    from tasks.io.manifests import DataObject
    from tasks.runtime.contracts import _groups, validate_stage

    ctx = RunContext(Storage(str(tmp_path / "out")), "grouped", SluiceConfig(runner={"task_memory": 1 << 20}))
    shards = [_records(1_000, prefix=f"s{i}-") for i in range(3)]
    shards[2] = shards[2].with_columns(id=pl.when(pl.col("id") == "s2-7").then(pl.lit("s0-5")).otherwise("id"))
    outputs = []
    for i, frame in enumerate(shards):
        outputs.append(DataObject(**{**ctx.storage.write_parquet(f"runs/grouped/ingest/part-{i}.parquet",
                                                                 frame).as_json(), "rows": frame.height}))
    assert _groups(ctx, 3_000) == 2
    contracts = contracts_for("grouped")
    failed = validate_stage(ctx, contracts, "ingest", "ingest", outputs, [], 3_000, 0)
    assert not failed.success
    assert [f for f in failed.failures if "expect_column_values_to_be_unique" in f] != []
    unique = [r for r in failed.results if r["expectation"] == "expect_column_values_to_be_unique"]
    assert len(unique) == 1 and not unique[0]["success"]
    assert (unique[0]["result"]["element_count"], unique[0]["result"]["unexpected_count"]) == (3_000, 2)
    assert ctx.storage.listdir("runs/grouped/ingest/_work") in ([], ["contracts"]) and \
        ctx.storage.listdir("runs/grouped/ingest/_work/contracts") == []
    clean = outputs[:2]
    passed = validate_stage(ctx, contracts, "ingest", "ingest", clean, [], 2_000, 0)
    unique = [r for r in passed.results if r["expectation"] == "expect_column_values_to_be_unique"]
    assert passed.success and unique[0]["result"] == {"unexpected_count": 0, "element_count": 2_000}
    close_contracts("grouped")
