"""Stages committed by hand and a publish driven step by step through the runner, for tests that need a run in a
particular state (a crash between two steps, a lost lease) without a whole flow."""

from __future__ import annotations

import time

import polars as pl

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.ops.announce import announce_version
from tasks.runtime import runner
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import contracts_for
from tasks.stages import publish


def committed(ctx: RunContext, stage: str, frame: pl.DataFrame) -> StageManifest:
    """A stage of `ctx`'s run committed by hand with these rows (what publish reads)."""
    obj = ctx.storage.write_parquet(layout.kept_part(ctx.run_id, stage, "00000-00000"), frame)
    manifest = StageManifest(format=2, stage=stage, run_id=ctx.run_id, fingerprint="x", rows_in=frame.height,
                             rows_out=frame.height, rows_rejected=0, outputs=[obj], contract={"success": True})
    ctx.storage.write_record(layout.stage_manifest(ctx.run_id, stage), manifest)
    ctx.storage.write_json(layout.run_json(ctx.run_id), {"run_id": ctx.run_id, "stages": [stage, "publish"],
                                                         "status": "failed"})
    return manifest


def publish_by_hand(ctx: RunContext, source: StageManifest) -> StageManifest:
    stage = publish.STAGE
    target = stage.sink.open(ctx, [o.as_json() for o in source.outputs])
    receipts = [runner.sink_shard(ctx, stage, i, obj.as_json(), target) for i, obj in enumerate(source.outputs)]
    committed = runner.commit_stage(ctx, stage, receipts, [o.as_json() for o in source.outputs],
                                    contracts_for(ctx.run_id), time.time(), sink_target=target)
    announce_version(ctx.storage, ctx.config, target["dataset"], target["version"], ctx.run_id,
                     fence=ctx.check_fence)  # as the curate flow does after the commit
    return committed


def canonical(n: int, prefix: str = "r", source: str = "test") -> pl.DataFrame:
    """`n` canonical records (ids and content hashes unique per prefix)."""
    from schemas.record import CANONICAL

    return pl.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "text": [f"document {prefix} {i}" for i in range(n)],
                         "source": [source] * n, "content_sha256": [f"{prefix}-{i}" for i in range(n)]}).with_columns(
        [pl.lit(None, t).alias(c) for c, t in CANONICAL.items() if c not in ("id", "text", "source",
                                                                               "content_sha256")]
    ).select(list(CANONICAL)).cast(CANONICAL)
