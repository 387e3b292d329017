"""`[contracts]`: the data contract's rates and ceilings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.base import Strict


class ContractConfig(Strict):
    max_reject_rate: dict[str, float] = Field(
        default_factory=dict,
        description="per stage: the largest fraction of rows_in it may reject before the contract fails",
    )
    warn_reject_rate: float = Field(0.5, ge=0, le=1, description="a stage rejecting more than this share of "
                                    "rows_in warns (manifest, report, log)")
    allow_reject_all: list[str] = Field(default_factory=list, description="stages allowed to reject every row; "
                                        "any other stage that does fails its contract (a config that keeps nothing "
                                        "is almost always a mistake, e.g. a language name instead of a code)")
    warn_removed_chars_rate: float = Field(0.2, ge=0, le=1, description="a stage whose edits (line filters, "
                                           "redaction, boilerplate cuts) remove more than this share of all the "
                                           "characters it reads warns (log, manifest, report)")
    max_removed_chars_rate: dict[str, float] = Field(default_factory=dict, description="per stage: the largest "
                                                     "share of characters its edits may remove before the "
                                                     "contract fails")

    audit_max_findings: int | None = Field(None, ge=0, description="the audit stage fails its contract (and the "
                                           "run stops before publish) while more unreviewed findings of at least "
                                           "`audit_min_severity` remain; unset: findings never block")
    audit_min_severity: Literal["low", "medium", "high"] = "high"

    @field_validator("max_reject_rate", "max_removed_chars_rate")
    @classmethod
    def _rates(cls, v: dict[str, float], info) -> dict[str, float]:
        for stage, rate in v.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{info.field_name}.{stage} = {rate} must be within [0, 1]")
        return v
