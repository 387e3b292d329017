"""`[extract]`: web pages to main text, and the URL filter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.base import Strict


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
