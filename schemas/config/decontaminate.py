"""`[decontaminate]`: the benchmarks and what to do with a match."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, field_validator

from schemas.benchmarks import BUILTINS
from schemas.config.base import Strict, check_safe_name

BUILTIN_BENCHMARKS = tuple(BUILTINS)


Policy = Literal["drop", "redact", "flag"]


class BenchmarkConfig(Strict):
    """One benchmark to decontaminate against. Without `path` it configures the built-in of that name."""

    name: str
    path: str | None = Field(None, description="JSONL (.gz) or Parquet, local or s3://; none = the built-in")
    fields: list[str] | None = Field(None, description="fields to index, e.g. ['question', 'answer']")
    id_field: str | None = Field(None, description="item id field; default: the line number")
    released_at: date | None = Field(None, description="public release date, for temporal evidence")
    policy: Policy = "drop"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_safe_name(v, "benchmark name")


class DecontaminateConfig(Strict):
    """Benchmark decontamination by normalized word n-grams (GPT-3 appendix C; Lee et al. 2022)."""

    builtins: list[str] = Field(default_factory=lambda: list(BUILTIN_BENCHMARKS),
                                description="built-in benchmarks to check (schemas/benchmarks.py)")
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    ngram: int = Field(13, ge=8, le=13, description="words per n-gram (GPT-3 used 13)")
    coverage: float = Field(0.5, gt=0, le=1, description="fraction of an item's (or field's) n-grams in a doc")
    span_words: int = Field(50, ge=1, description="a contiguous match this long (or the whole item) is a hit")
    max_items_per_ngram: int = Field(
        10, ge=1, description="an n-gram shared by more items than this is template text and is ignored"
    )
    min_item_words: int = Field(3, ge=1, description="shorter items are an error: they would match everywhere")
    redact_window_chars: int = Field(200, ge=0, description="cut this much around a matched span (GPT-3)")
    redact_min_chars: int = Field(200, ge=0, description="pieces shorter than this are dropped after a cut")
    redact_max_cuts: int = Field(10, ge=1, description="a doc cut more often than this is dropped")
    redact_max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a redaction that would remove more "
                                               "than this share of a doc rejects it (decontaminate.redact."
                                               "removed_too_much)")
    warn_rate: float = Field(0.001, ge=0, le=1, description="per benchmark: hit rate that is logged as a warning")
    max_rate: float = Field(0.05, ge=0, le=1, description="per benchmark: hit rate that fails the contract")

    @field_validator("builtins")
    @classmethod
    def _builtins(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in BUILTINS]
        if unknown:
            raise ValueError(f"unknown built-in benchmark(s) {', '.join(unknown)}; built-ins: "
                             f"{', '.join(BUILTIN_BENCHMARKS)}")
        return v

    @field_validator("benchmarks")
    @classmethod
    def _benchmarks(cls, v: list[BenchmarkConfig]) -> list[BenchmarkConfig]:
        names = [b.name for b in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"benchmark(s) listed twice: {', '.join(sorted(dup))}")
        for b in v:
            if b.path is None and b.name not in BUILTIN_BENCHMARKS:
                raise ValueError(f"benchmark {b.name!r} has no path and is not a built-in "
                                 f"({', '.join(BUILTIN_BENCHMARKS)})")
        return v
