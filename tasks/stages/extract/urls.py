"""The URL filter: pages refused by domain (the domain and its subdomains, from the config and blocklist files) or
by URL substring, each with the rule that matched. Vectorized: every host's suffixes are joined against the
blocked domains, so a blocklist of millions of domains costs a hash join, not a regex."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from schemas.config import UrlFilterConfig
from tasks.runtime.externals import ExternalInputs, Externals, gather

HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)"


def blocked_domains(cfg: UrlFilterConfig, inputs: ExternalInputs | None = None) -> pl.DataFrame:
    """(domain, list) of every blocked domain: `list` names where it came from (a file, or the config). The files'
    bytes are what the runtime read (`inputs`; read here when called directly)."""
    rows = [(d, "extract.url_filter.domains") for d in cfg.domains]
    inputs = inputs if inputs is not None else gather(Externals(files=tuple(cfg.blocklist_files)))
    for name in cfg.blocklist_files:
        for line in inputs.read(name).decode(errors="replace").splitlines():
            entry = line.split("#", 1)[0].split()
            if entry:  # "domain", or a hosts file's "0.0.0.0 domain"
                rows.append((entry[-1].lower().removeprefix("*.").strip("."), Path(name).name))
    frame = pl.DataFrame(rows, schema={"domain": pl.String, "list": pl.String}, orient="row")
    return frame.unique("domain", keep="first", maintain_order=True)


def check_files(cfg: UrlFilterConfig) -> list[str]:
    return [f"extract.url_filter.blocklist_files: {name} is not a readable file" for name in cfg.blocklist_files
            if not Path(name).is_file()]


def refused(batch: pl.DataFrame, row: str, blocked: pl.DataFrame, substrings: list[str]) -> pl.DataFrame:
    """(row, reason, rule, list) of the rows whose URL is refused; a row matching both rules is named once."""
    out = []
    if blocked.height:
        hosts = batch.select(row, parts=pl.col("url").str.extract(HOST, 1).str.to_lowercase().str.split("."))
        hosts = hosts.filter(pl.col("parts").list.len() > 0).with_columns(i=pl.int_ranges(pl.col("parts").list.len()))
        suffixes = hosts.explode("i").select(row, domain=pl.col("parts").list.slice(pl.col("i")).list.join("."))
        out.append(suffixes.join(blocked, on="domain").unique(row, keep="first").select(
            row, reason=pl.lit("extract.url.blocked_domain"), rule=pl.col("domain"), list=pl.col("list")))
    if substrings:
        found = batch.filter(pl.col("url").str.contains_any(substrings, ascii_case_insensitive=True))
        out.append(found.select(row, reason=pl.lit("extract.url.blocked_substring"),
                                rule=pl.col("url").str.extract_many(substrings, ascii_case_insensitive=True)
                                .list.first(), list=pl.lit("extract.url_filter.substrings")))
    schema = {row: pl.UInt32, "reason": pl.String, "rule": pl.String, "list": pl.String}
    if not out:
        return pl.DataFrame(schema=schema)
    return pl.concat([o.cast(schema) for o in out]).unique(row, keep="first", maintain_order=True)
