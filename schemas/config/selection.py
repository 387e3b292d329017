"""`[select]`: the selection policies."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from schemas.config.base import Strict


class SelectPolicy(Strict):
    """One selection rule of the select stage. Rules apply in the order listed, each to the rows the rules before
    it kept; a row a rule removes is rejected as `select.<name>` (name defaults to the kind) with evidence.

    kinds: threshold (keep `min` <= column <= `max`), top (keep the k or fraction of rows highest in `column`, or
    lowest with descending = false), keep_hard / keep_easy (top by `column`, default score_prototypicality, highest
    or lowest), longest (top by the character length of `column`, default text; k default 1000: "Long Is More for
    Alignment"), random (a seeded subset of k or fraction, by a hash of the id: the baseline every other rule must
    beat), quota (at most `max_per_group` rows per value of `by`, or `balance` every group down to the smallest;
    within a group, highest `column` first, else a seeded random order), label_noise (drop the rows the score
    stage flagged as `label_issue`; flagging alone needs no rule), k_center (Core-Set: k-center greedy on the score
    stage's embeddings keeps the k or fraction of scored rows that cover the embedding space best)."""

    kind: Literal["threshold", "top", "keep_hard", "keep_easy", "longest", "random", "quota", "label_noise",
                  "k_center"]
    name: str | None = Field(None, description="reason suffix: select.<name>; default the kind")
    column: str | None = None
    min: float | None = None
    max: float | None = None
    k: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    descending: bool = True
    by: list[str] = Field(default_factory=list)
    max_per_group: int | None = Field(None, ge=1)
    balance: bool = False
    seed: int = 0
    nulls: Literal["keep", "reject"] = Field("keep", description="rows whose `column` is null (e.g. not scored): "
                                             "kept as they are, or rejected by this rule")

    @model_validator(mode="after")
    def _complete(self) -> SelectPolicy:
        kind = self.kind
        if kind == "threshold" and (self.column is None or (self.min is None and self.max is None)):
            raise ValueError("select policy threshold needs `column` and `min` and/or `max`")
        if kind == "top" and self.column is None:
            raise ValueError("select policy top needs `column`")
        budgeted = ("top", "keep_hard", "keep_easy", "random", "k_center")
        if kind in budgeted and (self.k is None) == (self.fraction is None):
            raise ValueError(f"select policy {kind} needs exactly one of `k` and `fraction`")
        if kind == "quota" and (not self.by or (self.max_per_group is None) == (not self.balance)):
            raise ValueError("select policy quota needs `by` and exactly one of `max_per_group` and `balance`")
        if self.name is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"select policy name {self.name!r}: use lowercase letters, digits and _")
        return self


class SelectConfig(Strict):
    """The select stage (tasks/stages/select/): which rows stay, by rules composed in order."""

    policies: list[SelectPolicy] = Field(default_factory=list)
    label: str = Field("label", description="the class column: no rule may empty a class of it")
