"""The whole config: every section composed, and loading a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field, ValidationError

from schemas.config.audit import AuditConfig
from schemas.config.augment import AugmentConfig
from schemas.config.base import Strict
from schemas.config.contracts import ContractConfig
from schemas.config.decontaminate import DecontaminateConfig
from schemas.config.dedup import DedupConfig
from schemas.config.extract import ExtractConfig
from schemas.config.ingest import IngestConfig
from schemas.config.orchestration import DeployConfig, RetrainConfig, RunnerConfig
from schemas.config.publish import PublishConfig
from schemas.config.quality import QualityConfig
from schemas.config.score import ScoreConfig
from schemas.config.selection import SelectConfig
from schemas.config.storage import StorageConfig
from schemas.errors import BadInput


class SluiceConfig(Strict):
    stages: list[str] | None = Field(
        None, description="the pipeline to run; none = the default pipeline (tasks/runtime/registry.py)")
    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig = IngestConfig()
    extract: ExtractConfig = ExtractConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    quality: QualityConfig = QualityConfig()
    audit: AuditConfig = AuditConfig()
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
