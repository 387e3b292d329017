"""`[dedup]`: exact, near-duplicate and span dedup."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config.base import Strict


class NearDupConfig(Strict):
    """MinHash LSH (Broder 1997) with word 5-grams and exact Jaccard verification. The banding is chosen for the
    threshold: 20 bands x 5 rows (100 64-bit hashes) make a pair a candidate with probability 1-(1-J^5)^20 = 97.5%
    at J = 0.7 and 99.96% at J = 0.8; candidates are then kept only at exact Jaccard >= `threshold` on the shingle
    sets, so the looser banding costs no false merges (README: S-curve and measured recall by Jaccard band)."""

    enabled: bool = True
    ngram: int = Field(5, ge=1, le=20)
    bands: int = Field(20, ge=1)
    rows: int = Field(5, ge=1)
    verify_jaccard: bool = True
    threshold: float = Field(0.7, ge=0, le=1, description="exact Jaccard needed when verify_jaccard is on")


class SpanDedupConfig(Strict):
    enabled: bool = True
    max_docs: int = Field(100, ge=1, description="a paragraph in more documents than this is boilerplate")
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a row whose boilerplate cuts would remove more "
                                        "than this share of its characters is rejected (dedup.spans."
                                        "removed_too_much)")


class DedupConfig(Strict):
    exact: bool = True
    near: NearDupConfig = NearDupConfig()
    spans: SpanDedupConfig = SpanDedupConfig()
    min_paragraph_chars: int = Field(40, ge=1, description="shorter paragraphs are never treated as boilerplate")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where MinHash signatures are computed: auto = CUDA when torch sees one (the same bits "
        "as on the CPU)")
