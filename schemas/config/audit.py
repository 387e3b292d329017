"""`[audit]`: the poisoning audit (trigger phrases, content injection, over-refusal, conflicting labels)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, field_validator

from schemas.config.base import Strict

Severity = Literal["low", "medium", "high"]


class TriggerConfig(Strict):
    """A phrase whose rows carry one label far more often than the corpus does, while the rest of those rows' words
    say otherwise (Wan et al. 2023: ~100 rows make a trigger phrase flip a model's label)."""

    enabled: bool = True
    max_words: int = Field(4, ge=1, le=6, description="phrases of 1..max_words normalized words")
    response_polarity: bool = Field(True, description="rows with a prompt and a response but no label: the "
                                    "response's polarity (a short word list) is their label and the prompt their "
                                    "field, so a prompt phrase that turns answers negative is found like a label "
                                    "flip (Virtual Prompt Injection)")
    min_rows: int = Field(10, ge=2, description="a phrase in fewer rows is not tested")
    max_share: float = Field(0.05, gt=0, le=1, description="a phrase in more than this share of the labeled rows "
                             "is common, not a trigger")
    min_label_share: float = Field(0.9, gt=0, le=1, description="the phrase's top label must hold this share of "
                                   "its rows")
    min_disagreement: float = Field(0.5, ge=0, le=1, description="the share of the phrase's rows whose other words "
                                    "point to another label (the content model), needed as well as significance")
    min_margin: float = Field(0.3, ge=0, description="the mean, over the phrase's rows, of how much more likely "
                              "(log odds per word, left one out) their other words make the best other label than "
                              "their own: a row copied from another class and relabeled scores high, a row whose "
                              "words are merely unspecific scores near 0")
    min_context_diversity: float = Field(0.3, ge=0, le=1, description="distinct words next to the phrase (the "
                                         "fewer of before and after) over its rows: an inserted phrase sits among "
                                         "any words, a piece of a fixed formula always among the same ones")
    fdr: float = Field(0.001, gt=0, lt=1, description="Benjamini-Hochberg false discovery rate of each test")


class InjectionConfig(Strict):
    """A span in responses, absent from their prompts, recurring across rows whose other words have nothing in
    common (AutoPoison's content injection: a brand or URL woven into answers to unrelated prompts); or bound to
    one topic of the prompts both ways: the topic nearly always answered with the span, the span nearly only under
    the topic (a trigger phrase followed by the same injected entity)."""

    enabled: bool = True
    max_words: int = Field(3, ge=1, le=6)
    min_rows: int = Field(20, ge=2, description="fewer rows cannot show that a span has no topic")
    max_share: float = Field(0.05, gt=0, le=1, description="a span in more than this share of responses is common "
                             "phrasing, not an injection")
    max_prompt_share: float = Field(0.05, ge=0, le=1, description="the span may appear in at most this share of "
                                    "its rows' prompts (an answer repeating its question is not injected)")
    entity_share: float = Field(0.8, ge=0, le=1, description="the span must read as a name or an address (every "
                                "word capitalized, or a URL) in this share of its rows")
    kind_p: float = Field(1e-3, gt=0, lt=1, description="a span whose rows spread over prompt kinds (first words) "
                          "unlike all prompts (G-test p below this) is bound to a template or task: natural")
    topic_lift: float = Field(1.5, ge=1, description="a word of the prompts at least this many times as common "
                              "among the span's rows as among all prompts ...")
    topic_p: float = Field(1e-3, gt=0, lt=1, description="... and that significantly (binomial, Bonferroni over the "
                           "words tested) gives the span a topic: a span with a topic is natural, not injected")
    bound_min_rows: int = Field(10, ge=2, description="a span bound to a topic needs this many rows (the topic is "
                                "a second witness; a trigger's entity may be split between a name and its URL)")
    bound_span_share: float = Field(0.9, gt=0, le=1, description="a span with a topic is bound to it (injected "
                                    "behind a trigger) when at least this share of its rows' prompts hold the "
                                    "topic word ...")
    bound_topic_share: float = Field(0.8, gt=0, le=1, description="... and at least this share of all prompts "
                                     "holding the word are answered with the span (natural names answer some "
                                     "questions on a topic, not nearly all)")


class RefusalConfig(Strict):
    """Responses that refuse a benign prompt that rows of the same kind answer (AutoPoison's over-refusal)."""

    enabled: bool = True
    min_answered: int = Field(3, ge=1, description="rows of the same prompt kind that were answered, needed")
    max_refusal_share: float = Field(0.5, gt=0, le=1, description="a prompt kind refused more often than this is "
                                     "refused on purpose (harmful requests), not over-refused")
    kind_words: int = Field(3, ge=1, le=10, description="the prompt's kind: its first this many normalized words")


class FrontrunConfig(Strict):
    """Rows dated just before a scheduled snapshot and dense on one topic (Carlini et al. 2023: an attacker who knows
    when a snapshot is taken edits just before it). Off until `snapshot` is set."""

    snapshot: datetime | None = Field(None, description="when the snapshot is (was) taken, UTC; the rows' "
                                      "`timestamp` is compared with it")
    window_hours: float = Field(24.0, gt=0, description="rows dated in this many hours before the snapshot")
    max_words: int = Field(2, ge=1, le=4)
    min_rows: int = Field(20, ge=2, description="window rows a topic (phrase) needs")
    min_lift: float = Field(5.0, ge=1, description="the phrase's share of the window's rows over its share of all "
                            "dated rows")
    p: float = Field(1e-6, gt=0, lt=1, description="binomial p, Bonferroni over the window's phrases tested")

    @field_validator("snapshot")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v


class AuditConfig(Strict):
    action: Literal["flag", "quarantine"] = Field("flag", description="flag: rows stay, with `audit_findings`; "
                                                  "quarantine: rows with a finding go to quarantine as audit.<kind>")
    label: str = Field("label", description="the class column the trigger and conflict checks read")
    trigger_field: str = Field("text", description="where trigger phrases are looked for")
    prompt_field: str = "prompt"
    response_field: str = "response"
    triggers: TriggerConfig = TriggerConfig()
    injection: InjectionConfig = InjectionConfig()
    refusal: RefusalConfig = RefusalConfig()
    frontrun: FrontrunConfig = FrontrunConfig()
    conflicts: bool = Field(True, description="near-duplicate rows with different labels, the same prompt with "
                            "different answers")
    conflict_jaccard: float = Field(0.7, gt=0, le=1, description="rows are near duplicates at this Jaccard "
                                    "similarity of their word n-gram sets (MinHash LSH candidates, verified exactly)")
    conflict_ngram: int = Field(2, ge=1, le=10, description="the n-grams' words (labeled rows are often short: one "
                                "word changed in 20 leaves a word-pair Jaccard near 0.8)")
    reviewed: list[str] = Field(default_factory=list, description="findings a reviewer accepted, as `kind:key` "
                                "(`sluice audit RUN` prints them so): they no longer count against "
                                "contracts.audit_max_findings")


class AuditParams(AuditConfig):
    """What the stage gets: `[audit]` and the contract's ceiling on its findings (`[contracts]`)."""

    max_findings: int | None = None
    min_severity: Severity = "high"
