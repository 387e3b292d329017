"""What every config model shares: strict models (unknown keys are errors), safe names and paths, secret references."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

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
