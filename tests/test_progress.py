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


def test_a_log_gets_at_most_a_line_per_tenth_of_the_shards(caplog):
    progress = StageProgress("dedup", 100, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="sluice"):
        for _ in range(100):
            progress.advance(10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dedup: ")]
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("dedup: 100/100 shards (100%), 1,000 rows")


def test_prefect_sees_named_task_runs_tags_and_artifacts(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

    from flows.curate import run_curate

    data = tmp_path / "in.jsonl"
    pl.DataFrame({"text": [f"Row number {i} of a small input file, long enough to count." for i in range(30)]}
                 ).write_ndjson(data)
    config = tmp_path / "c.toml"
    config.write_text('[ingest]\nshard_rows = 10\n[publish]\ndataset = "named"\n')
    run_curate([str(data)], str(tmp_path / "out"), str(config), "prefect-names", ["ingest", "dedup", "publish"])
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["curate-prefect-names"])))
        assert {"sluice", "dataset:named"} <= set(flow_run.tags)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
        names = {t.name for t in tasks}
        assert {"ingest-file-0", "dedup-features-00000-00000", "dedup-decide", "dedup-commit", "publish-0"} <= names
        assert {"dedup-00000-00000", "dedup-00000-00002"} <= names, sorted(names)
        dedup = [t for t in tasks if t.name.startswith("dedup-")]
        assert all("stage:dedup" in t.tags and "dataset:named" in t.tags for t in dedup)
        key = "sluice-run-prefect-names"
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
