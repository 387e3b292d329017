"""What a person watching a run sees: a live progress line per stage on a terminal, log lines elsewhere, and in
Prefect task runs named after stage and shard, tags, and table / link / progress artifacts (issue 14, item 2)."""

from __future__ import annotations

import io
import logging

import polars as pl

from tasks.runtime.progress import StageProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_in_place():
    screen = Terminal()
    progress = StageProgress("quality", 4, stream=screen)
    for _ in range(4):
        progress.advance(2500)
    progress.close()
    frames = screen.getvalue().split("\r\033[K")[1:]
    assert len(frames) == 4 and screen.getvalue().endswith("\n")
    assert frames[0].startswith("quality: 1/4 shards (25%), 2,500 rows, ") and "rows/s" in frames[0]
    assert frames[-1].startswith("quality: 4/4 shards (100%), 10,000 rows, ") and "ETA 0:00" in frames[-1]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logged(caplog, stage: str, step_seconds: float, monkeypatch, shards: int = 100) -> list[str]:
    from tasks.runtime import progress as module

    clock = Clock()
    monkeypatch.setattr(module.time, "perf_counter", clock)
    progress = StageProgress(stage, shards, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="sluice"):
        for _ in range(shards):
            clock.now += step_seconds
            progress.advance(10)
    progress.close()
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{stage}: ")]


def test_a_log_gets_at_most_a_line_per_tenth_of_the_shards_and_per_30_seconds(caplog, monkeypatch):
    slow = _logged(caplog, "dedup", 10.0, monkeypatch)  # 1,000 s: a line per tenth
    assert len(slow) == 10 and slow[-1].startswith("dedup: 100/100 shards (100%), 1,000 rows")
    fast = _logged(caplog, "quality", 1.0, monkeypatch)  # 100 s: a line per 30 s at most
    assert [line.split(" (")[0] for line in fast] == ["quality: 30/100 shards", "quality: 60/100 shards",
                                                      "quality: 90/100 shards"]
    assert _logged(caplog, "ingest", 0.1, monkeypatch) == []  # 10 s: the stage's commit line says enough


def test_a_long_silent_stage_logs_while_nothing_finishes(caplog, monkeypatch):
    import time

    from tasks.runtime import progress as module

    monkeypatch.setattr(module, "QUIET_SECONDS", 0.3)
    with caplog.at_level(logging.INFO, logger="sluice"):
        progress = StageProgress("score embed", 1, stream=io.StringIO())
        time.sleep(0.8)
        progress.close()
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("score embed: ")]
    assert beats and beats[0].startswith("score embed: 0/1 shards (0%), 0 rows") and "ETA" not in beats[0]


def test_a_log_line_on_a_terminal_is_never_glued_to_the_live_line():
    from tasks.runtime.progress import ClearLiveLine

    screen = Terminal()
    handler = logging.StreamHandler(screen)
    handler.setFormatter(logging.Formatter("%(levelname)s | %(message)s"))
    handler.addFilter(ClearLiveLine())
    logger = logging.getLogger("sluice.test-glue")
    logger.addHandler(handler)
    try:
        progress = StageProgress("quality", 4, stream=screen)
        progress.advance(100)
        logger.warning("something to say")
        progress.advance(100)
        progress.close()
    finally:
        logger.removeHandler(handler)
    text = screen.getvalue()
    assert "ETA 0:00\r\033[KWARNING | something to say\n" in text  # erased, then the record on its own line
    assert text.endswith("\n") and "0:00WARNING" not in text


def test_prefect_sees_named_task_runs_tags_and_artifacts(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

    from flows.curate import run_curate

    data = tmp_path / "in.jsonl"
    pl.DataFrame({"text": [f"Row number {i} of a small input file, long enough to count." for i in range(30)]}
                 ).write_ndjson(data)
    config = tmp_path / "c.toml"
    config.write_text('[ingest]\nshard_rows = 10\n[runner]\ntask_rows = 0\n[publish]\ndataset = "named"\n')
    run_curate([str(data)], str(tmp_path / "out"), str(config), "prefect-names", ["ingest", "dedup", "publish"])
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["curate-prefect-names"])))
        assert {"sluice", "dataset:named"} <= set(flow_run.tags)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
        names = {t.name for t in tasks}
        assert {"ingest-files-0", "dedup-exact-keys-00000-00000", "dedup-candidates-p00000", "dedup-components-combine",
                "dedup-commit", "publish-0"} <= names, sorted(names)
        assert {"dedup-00000-00000", "dedup-00000-00002"} <= names, sorted(names)
        dedup = [t for t in tasks if t.name.startswith("dedup-")]
        assert all("stage:dedup" in t.tags and "dataset:named" in t.tags for t in dedup)
        key = "sluice-named"  # the dataset's key: every run of `named` is a version of these artifacts
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key, f"{key}-counts", f"{key}-report"])))}
        assert set(artifacts) == {key, f"{key}-counts", f"{key}-report"}
        assert artifacts[f"{key}-counts"].type == "table" and "dedup" in str(artifacts[f"{key}-counts"].data)
        link = str(artifacts[f"{key}-report"].data)  # Prefect 3 stores a link artifact as its markdown
        assert link.startswith("[report of prefect-names](file://") and link.endswith("report/index.html)")
        progress = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(type={"any_": ["progress"]}))
                    if a.flow_run_id == flow_run.id]
        assert len(progress) == 1 and float(progress[0].data) == 100.0


def test_log_warnings_about_rejected_rows_always_say_what_failed():
    """40 of 65 demo warnings once ended in an empty detail; each kind of evidence now gives a reason."""
    from tasks.runtime.runner import _reason_examples

    rejected = pl.DataFrame({
        "id": ["a", "b", "c"], "src_file": ["f.jsonl", "f.jsonl", None], "src_line": [3, 9, None],
        "reason": ["ingest.json.invalid", "quality.gopher.word_count", "dedup.near"],
        "evidence": ['{"file": "f.jsonl", "line": 3, "detail": "unexpected end of data"}',
                     '{"rule": "quality.gopher.word_count", "test": "q_gopher_words < 8", "q_gopher_words": 5}',
                     '{"cluster": "k", "survivor_id": "s", "similarity": 0.93}']})
    lines = _reason_examples(rejected)
    assert lines == ["ingest.json.invalid at f.jsonl:3: unexpected end of data",
                     "quality.gopher.word_count at f.jsonl:9: failed q_gopher_words < 8 (q_gopher_words = 5)",
                     'dedup.near (id c): {"cluster":"k","survivor_id":"s","similarity":0.93}']


def test_task_batches_pack_small_shards_and_leave_big_ones_alone():
    from tasks.runtime.prefect_tasks import task_batches

    small = [{"rows": 1_000}] * 100
    batches = task_batches(small, 20_000, 2)
    assert [len(b) for b in batches] == [17, 17, 16, 17, 17, 16]  # 5 tasks' worth, rounded up to 2 workers' 6
    assert sum(batches, []) == list(range(100))  # every shard once, in order
    assert [len(b) for b in task_batches(small, 0, 2)] == [1] * 100  # task_rows = 0: a task per shard
    assert {len(b) for b in task_batches(small, 20_000, 16)} == {6, 7}  # 16 workers, 16 tasks: none idle
    assert task_batches([{"rows": 50_000}] * 3, 20_000, 2) == [[0], [1], [2]]
    assert task_batches([{"rows": 0}] * 2, 20_000, 2) == [[0], [1]]


def test_small_shards_share_prefect_tasks_with_the_same_outputs(tmp_path, prefect_server):
    """2,000 rows in 100-row shards, task_rows 1,000: 20 shards per stage in 2 tasks, one per worker, with the
    same parts as one task per shard."""
    import hashlib

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.curate import run_curate
    from tasks.ops.demo_corpus import kjv_records

    data = tmp_path / "in.jsonl"
    verses = [r["text"] for r in kjv_records()]
    pl.DataFrame({"text": [" ".join(verses[3 * i:3 * i + 3]) for i in range(2000)]}).write_ndjson(data)
    parts = {}
    for task_rows in (0, 1000):
        config = tmp_path / f"c{task_rows}.toml"
        config.write_text(f'[ingest]\nshard_rows = 100\n[runner]\ntask_rows = {task_rows}\n'
                          '[publish]\ndataset = "packed"\n')
        out = tmp_path / f"out{task_rows}"
        run = run_curate([str(data)], str(out), str(config), f"packed-{task_rows}", ["ingest", "quality", "publish"])
        assert run["status"] == "succeeded"
        parts[task_rows] = {str(p.relative_to(out / "runs" / f"packed-{task_rows}")):
                            hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in sorted((out / "runs").rglob("part-*.parquet"))}
        with get_client(sync_client=True) as client:
            [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"curate-packed-{task_rows}"])))
            names = {t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))}
        quality = sorted(n for n in names if n.startswith("quality-0"))
        if task_rows == 0:
            assert len(quality) == 20 and "quality-00000-00019" in quality
        else:
            assert quality == ["quality-00000-00000..00000-00009", "quality-00000-00010..00000-00019"]
            publish = sorted((n for n in names if n.startswith("publish-") and n != "publish-commit"),
                             key=lambda n: int(n.split("-")[1].split(".")[0]))
            assert len(publish) == 2 and publish[0].startswith("publish-0..") and publish[1].endswith("..19"), publish
    assert parts[0] == parts[1000] and len(parts[0]) == 60  # ingest, quality kept and quarantined: 20 each
