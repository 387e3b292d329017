"""Loads the Great Expectations suites kept as JSON in schemas/suites/ (one per stage output).

The files are GE 1.x ExpectationSuites as GE itself serializes them (`name`, `notes`, `expectations` of `type`,
`kwargs`, `meta`): `gx.ExpectationSuite(**json.load(f))` loads any of them. Each expectation has a scope in its
`meta`. 'shard' (the default) expectations are about single rows (nullability, ranges, lengths) and are checked on
every shard as it is written, so memory stays bounded by the shard. 'global' expectations (uniqueness across the
stage) run once at commit on only the columns they name.
"""

from __future__ import annotations

import json
import re
from importlib import resources

COLUMN_KWARGS = ("column", "column_A", "column_B")
SCOPES = ("shard", "global")


def load_suite(name: str) -> dict:
    path = resources.files("schemas") / "suites" / f"{name}.json"
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no expectation suite schemas/suites/{name}.json") from None
    for exp in suite["expectations"]:
        if scope_of(exp) not in SCOPES:
            raise ValueError(f"suite {name}: expectation {exp['type']} has scope {scope_of(exp)!r}; use {SCOPES}")
    return suite


def scope_of(expectation: dict) -> str:
    return (expectation.get("meta") or {}).get("scope", "shard")


def scoped(suite: dict, scope: str) -> dict:
    """The part of a suite with this scope (same name and notes)."""
    return {**suite, "expectations": [e for e in suite["expectations"] if scope_of(e) == scope]}


def columns_of(suite: dict) -> list[str]:
    """The columns a suite reads, so the runner loads only those for validation."""
    cols: list[str] = []
    for exp in suite["expectations"]:
        kw = exp.get("kwargs", {})
        cols += [kw[k] for k in COLUMN_KWARGS if k in kw]
        cols += list(kw.get("column_list", []))
        if isinstance(kw.get("row_condition"), str):  # a pandas query reads the columns it names too
            cols += re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?=\s*(?:==|!=|>=|<=|>|<|\.))", kw["row_condition"])
    return list(dict.fromkeys(cols))
