"""`[augment]`: slices, generators and the gate; and the params the augment stage gets."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from schemas.config.base import Strict, check_path_value, check_secret_ref
from schemas.config.decontaminate import DecontaminateConfig
from schemas.config.quality import QualityConfig
from schemas.config.score import ScoreConfig


class AugmentSlice(Strict):
    """A slice of the data to grow: rows whose `column` equals `value`, or where `where` holds (an SQL expression in
    polars' dialect, e.g. "length(text) < 200"; parsed, never evaluated as Python). It grows to `target` rows, or to
    `share` of all rows; only the shortfall is generated."""

    name: str = Field(description="the slice's name in counts, provenance and reasons")
    column: str | None = None
    value: str | int | float | bool | None = None
    where: str | None = None
    target: int | None = Field(None, ge=1)
    share: float | None = Field(None, gt=0, lt=1)
    label: str | None = Field(None, description="the label its synthetic rows are meant to have; default `value` "
                              "when `column` is the label column")

    @model_validator(mode="after")
    def _complete(self) -> AugmentSlice:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"augment slice name {self.name!r}: use lowercase letters, digits and _")
        if (self.column is None) == (self.where is None):
            raise ValueError(f"augment slice {self.name}: give exactly one of `column` (with `value`) and `where`")
        if self.column is not None and self.value is None:
            raise ValueError(f"augment slice {self.name}: `column` needs a `value`")
        if (self.target is None) == (self.share is None):
            raise ValueError(f"augment slice {self.name}: give exactly one of `target` and `share`")
        if self.where is not None:
            import polars as pl

            try:
                pl.sql_expr(self.where)
            except Exception as exc:  # polars raises several error types for bad SQL
                raise ValueError(f"augment slice {self.name}: `where` is not a valid SQL expression: {exc}") from None
        return self


class EndpointConfig(Strict):
    """An OpenAI-compatible HTTP endpoint (vLLM, TGI, `transformers serve`, a hosted API), through the `openai`
    client, whose retries (with exponential backoff on 408/409/429/5xx and connection errors) and timeout are used."""

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key: str | None = Field(None, description="a secret reference: env:VAR or prefect-secret:BLOCK; none = "
                                "a server without authentication")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_seconds: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    price_per_million_tokens: float = Field(0.0, ge=0, description="prompt + completion, for the cost cap")
    max_cost: float | None = Field(None, gt=0, description="stop sending requests once this is spent")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"endpoint base_url {v!r} must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("endpoint base_url must not carry credentials: use api_key = 'env:VAR'")
        return v

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return check_secret_ref(v, "augment.endpoint.api_key")


class AugmentGateConfig(Strict):
    """What every synthetic row passes before it joins the data; a failure is quarantined as augment.gate.<check>."""

    max_edit_similarity: float = Field(0.5, gt=0, le=1, description="normalized edit (Indel) similarity to the "
                                       "parent and to the nearest real rows of the slice, at most")
    neighbours: int = Field(5, ge=1, le=100, description="nearest real rows (by embedding) compared by edit")
    max_perplexity: float | None = Field(1000.0, gt=1, description="under the score stage's LM; none = no bound")
    min_label_probability: float = Field(0.5, ge=0, le=1, description="the proxy classifier's probability of the "
                                         "intended label, at least (labeled slices)")
    proxy_sample: float = Field(0.1, gt=0, le=1, description="fraction of labeled rows (by a hash of the id) the "
                                "proxy classifier is trained on")
    max_synthetic_share: float = Field(0.3, gt=0, lt=1, description="synthetic rows per slice, at most this share")
    decontaminate: bool = True
    quality: bool = True


class AugmentConfig(Strict):
    """The augment stage (tasks/stages/augment/): synthetic rows for scarce slices, each through the gate."""

    slices: list[AugmentSlice] = Field(default_factory=list)
    generator: Literal["local", "endpoint", "eda"] = Field(
        "local", description="local: the score stage's LM (SmolLM2-135M-Instruct) through transformers; endpoint: "
        "an OpenAI-compatible server; eda: word-level swap/delete/insert (the baseline)")
    task: Literal["paraphrase", "backtranslate", "few_shot"] = "paraphrase"
    prompt_file: str | None = Field(None, description="a prompt template; none = schemas/prompts/<task>.txt")
    shots: int = Field(3, ge=1, le=16, description="real examples in a few-shot prompt")
    max_rows: int = Field(1000, ge=0, description="synthetic rows asked for per run, at most")
    candidates_per_row: int = Field(
        1, ge=1, le=16, description="candidates generated per row asked for; the gate keeps at most the asked rows "
        "of a slice (passing candidates beyond them are refused as augment.gate.share_cap), so a small model whose "
        "rows mostly fail the gate can still fill a slice, at this many times the tokens")
    max_tokens: int = Field(200_000, ge=0, description="generated tokens per run, at most")
    max_new_tokens: int = Field(96, ge=8, le=2048)
    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1, le=256, description="requests per generation batch at most; the local LM "
                            "batches prompts of about one length, within its token budget")
    seed: int = 0
    label: str = Field("label", description="the class column")
    min_human_label_share: float | None = Field(None, ge=0, le=1, description="contract: at least this share of "
                                                "labeled rows keep a human label")
    endpoint: EndpointConfig | None = None
    gate: AugmentGateConfig = AugmentGateConfig()

    @model_validator(mode="after")
    def _complete(self) -> AugmentConfig:
        if self.generator == "endpoint" and self.endpoint is None:
            raise ValueError("augment.generator = 'endpoint' needs an [augment.endpoint] section (base_url, model)")
        names = [s.name for s in self.slices]
        if len(set(names)) != len(names):
            raise ValueError("augment slice names must be unique")
        if self.prompt_file is not None:
            check_path_value(self.prompt_file, "augment.prompt_file")
        return self


class AugmentParams(Strict):
    """What the augment stage reads: its own section, and the sections whose functions its gate reuses."""

    augment: AugmentConfig
    score: ScoreConfig
    quality: QualityConfig
    decontaminate: DecontaminateConfig
