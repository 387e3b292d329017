"""`[storage]`: S3 connection settings."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from schemas.config.base import Strict, check_no_userinfo, check_secret_ref, resolve_secret


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
