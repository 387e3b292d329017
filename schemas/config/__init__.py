"""Pipeline configuration: a TOML file validated by these models, one module per section.

Every model forbids unknown keys, so a typo in the config is an error that names the key instead of a silently
ignored setting. Values that become storage paths (run ids, dataset names) are validated here, once. The sections
live here rather than beside their stages so that loading and checking a config imports no stage (and no torch):
a config error is reported in a second.
"""

from schemas.config.audit import AuditConfig, AuditParams, FrontrunConfig, InjectionConfig, RefusalConfig, TriggerConfig  # noqa: F401
from schemas.config.augment import AugmentConfig, AugmentGateConfig, AugmentParams, AugmentSlice, EndpointConfig  # noqa: F401
from schemas.config.base import (  # noqa: F401
    SAFE_NAME,
    SECRET_REF,
    SecretNotFound,
    Strict,
    check_no_userinfo,
    check_path_value,
    check_safe_name,
    check_secret_ref,
    redact_url,
    resolve_secret,
)
from schemas.config.contracts import ContractConfig  # noqa: F401
from schemas.config.decontaminate import BUILTIN_BENCHMARKS, BenchmarkConfig, DecontaminateConfig, Policy  # noqa: F401
from schemas.config.dedup import DedupConfig, NearDupConfig, SpanDedupConfig  # noqa: F401
from schemas.config.extract import ExtractConfig, UrlFilterConfig  # noqa: F401
from schemas.config.ingest import IngestConfig  # noqa: F401
from schemas.config.orchestration import DeployConfig, RetrainConfig, RunnerConfig  # noqa: F401
from schemas.config.publish import PublishColumns, PublishConfig, PublishTokens  # noqa: F401
from schemas.config.quality import (  # noqa: F401
    LID176_LANGUAGES,
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    PIIConfig,
    QualityConfig,
)
from schemas.config.root import ConfigError, SluiceConfig, _huge_integers, load_config  # noqa: F401
from schemas.config.score import (  # noqa: F401
    EMBEDDER_SHA256,
    LM_SHA256,
    DynamicsConfig,
    EmbedderConfig,
    LanguageModelConfig,
    ScoreConfig,
    ScoreParams,
    SemanticContaminationConfig,
    SemDedupConfig,
)
from schemas.config.selection import SelectConfig, SelectPolicy  # noqa: F401
from schemas.config.storage import StorageConfig  # noqa: F401

__all__ = [
    "AugmentConfig", "AugmentGateConfig", "AugmentParams", "AugmentSlice", "BUILTIN_BENCHMARKS",
    "BenchmarkConfig", "C4Config", "ConfigError", "ContractConfig", "DecontaminateConfig", "DedupConfig",
    "DeployConfig", "DynamicsConfig", "EMBEDDER_SHA256", "EmbedderConfig", "EndpointConfig", "ExtractConfig",
    "FineWebConfig", "GopherQualityConfig", "GopherRepetitionConfig", "IngestConfig", "LID176_LANGUAGES",
    "LM_SHA256", "LanguageConfig", "LanguageModelConfig", "NearDupConfig", "PIIConfig", "Policy",
    "PublishColumns", "PublishConfig", "PublishTokens", "QualityConfig", "RetrainConfig", "RunnerConfig",
    "SAFE_NAME", "SECRET_REF", "ScoreConfig", "ScoreParams", "SecretNotFound", "SelectConfig", "SelectPolicy",
    "SemDedupConfig", "SemanticContaminationConfig", "SluiceConfig", "SpanDedupConfig", "StorageConfig",
    "Strict", "UrlFilterConfig", "check_no_userinfo", "check_path_value", "check_safe_name", "check_secret_ref",
    "load_config", "redact_url", "resolve_secret",
]
