"""`[publish]`: the dataset, its columns and token shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.config.base import Strict, check_safe_name


class PublishColumns(Strict):
    """Column names or glob patterns (`q_*`). A column goes out when it matches `include` and not `exclude`; `id`
    and `text` always go. The default leaves out the pipeline's bookkeeping (where a row was read from, dedup's
    hash and cluster) and keeps the signals: `sluice diff` compares them between versions, and a trainer filters
    on them (`q_lang`, `score_perplexity`)."""

    include: list[str] = ["*"]
    exclude: list[str] = ["src_file", "src_line", "dup_norm_hash", "dup_cluster", "dup_paragraphs_removed"]


class PublishTokens(Strict):
    """Token shards beside the Parquet version (tasks/text/token_shards.py): what a trainer reads."""

    enabled: bool = Field(False, description="write token shards (tokens/part-*.bin, .idx, .docs.parquet) beside "
                          "each published part")
    tokenizer: str = Field("smollm2", description="'smollm2' (the packaged SmolLM2 tokenizer, 49,152 ids: uint16) "
                           "or the path of a local tokenizer.json (then `sha256` pins it)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the tokenizer.json file")
    eos_token: str | None = Field(None, description="the token put after every document (default: the "
                                  "tokenizer's <|endoftext|>, </s> or <eos>)")
    seq_len: int = Field(0, ge=0, le=1 << 20, description="pack into rows of this many tokens (the last row of a "
                         "part padded with EOS); 0 = documents back to back")
    shuffle_seed: int | None = Field(None, ge=0, description="shuffle the documents of each part with this seed "
                                     "(none: the published order)")

    @model_validator(mode="after")
    def _pinned_file(self) -> PublishTokens:
        if self.tokenizer != "smollm2":
            if "\x00" in self.tokenizer or not self.tokenizer.endswith(".json"):
                raise ValueError(f"publish.tokens.tokenizer: {self.tokenizer!r} is neither 'smollm2' nor the path "
                                 "of a tokenizer.json")
            if not self.sha256:
                raise ValueError("publish.tokens.tokenizer names a file: pin it with publish.tokens.sha256")
        return self


class PublishConfig(Strict):
    dataset: str = "curated"
    description: str = Field("", max_length=20_000, description="the card's description (copied into run.json and "
                             "the card: at most 20,000 characters)")
    license: str = Field("unknown", pattern=r"^[a-z0-9][a-z0-9.+-]*$", description="the card's license, as a Hugging "
                         "Face license id (cc-by-4.0, mit, apache-2.0, other, unknown)")
    mode: Literal["auto", "replace", "append"] = Field(
        "auto", description="'replace': a version holds this run's rows only (a full recompute); 'append': the "
        "previous version's rows + this run's, new rows deduplicated against what is published; 'auto': append "
        "for watch/new-data runs, replace otherwise")
    verify_base: Literal["auto", "hash", "size"] = Field(
        "auto", description="before an append builds on the newest version, its files are checked against its "
        "manifest: 'size' (always; one listing per folder), 'hash' (sha256 of every file), 'auto' = hash for a "
        "local root, size on S3 (hashing there downloads every file). A damaged base is exit 5 naming the file")
    columns: PublishColumns = Field(default_factory=lambda: PublishColumns(), description="which columns a "
                                    "version carries (the run keeps them all)")
    tokens: PublishTokens = Field(default_factory=lambda: PublishTokens(), description="token shards for "
                                  "training, beside the Parquet version")
    keep_original_text: bool = Field(False, description="publish a `text_original` column: a row's text as it "
                                     "arrived, for the rows a stage edited (null for the others). Off by default: "
                                     "the edit ledger (`sluice edits`) already says what was removed")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_safe_name(v, "dataset name")
