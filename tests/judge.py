"""`judge(stage, *texts)`: what one stage's function alone decides about a few documents, without storage or Prefect.

Every stage has a unit test built on it (tests/test_conformance.py checks). Texts are raw JSONL lines for the source
stage (ingest) and document texts for the others; the answer is, per text in order, the reason it was quarantined,
or None when it was kept.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from schemas.config import SluiceConfig
from schemas.record import CANONICAL
from tasks.runtime import lifecycle
from tasks.runtime.registry import STAGES
from tasks.runtime.stage import StageResult


def records(*texts: str) -> pl.DataFrame:
    """Canonical records for `texts`, ids d0, d1, ... in order."""
    n = len(texts)
    data = {"id": [f"d{i}" for i in range(n)], "text": list(texts), "source": ["test"] * n,
            "content_sha256": [f"{i:064d}" for i in range(n)], "src_file": ["test.jsonl"] * n,
            "src_line": list(range(1, n + 1)), "meta": ["{}"] * n}
    return pl.DataFrame({c: data.get(c, [None] * n) for c in CANONICAL}, schema=CANONICAL)


def raw_lines(*lines: str) -> pl.DataFrame:
    n = len(lines)
    return pl.DataFrame({"src_file": ["test.jsonl"] * n, "src_line": list(range(1, n + 1)),
                         "raw": [line.encode() for line in lines], "read_error_code": [None] * n,
                         "read_error": [None] * n},
                        schema={"src_file": pl.String, "src_line": pl.Int64, "raw": pl.Binary,
                                "read_error_code": pl.String, "read_error": pl.String})


def run(stage_name: str, batch: pl.DataFrame, params: Any = None) -> StageResult:
    stage = STAGES[stage_name]
    params = params if params is not None else stage.params(SluiceConfig())
    return stage.call(batch, params, lifecycle.loaded_for(stage, params))


def judge(stage_name: str, *texts: str, params: Any = None) -> list[str | None]:
    source = STAGES[stage_name].kind == "source"
    batch = raw_lines(*texts) if source else records(*texts)
    result = run(stage_name, batch, params)
    key = "src_line" if source else "id"
    reasons = dict(zip(result.rejected[key].to_list(), result.rejected["reason"].to_list(), strict=True)) \
        if result.rejected.height else {}
    return [reasons.get(k) for k in batch[key].to_list()]
