"""Loads the Great Expectations suites kept as JSON beside this file (one per stage output)."""

from __future__ import annotations

import json
from importlib import resources

COLUMN_KWARGS = ("column", "column_A", "column_B")


def load_suite(name: str) -> dict:
    path = resources.files("schemas") / "suites" / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no expectation suite schemas/suites/{name}.json") from None


def columns_of(suite: dict) -> list[str]:
    """The columns a suite reads, so the runner loads only those for validation."""
    cols: list[str] = []
    for exp in suite["expectations"]:
        kw = exp.get("kwargs", {})
        cols += [kw[k] for k in COLUMN_KWARGS if k in kw]
        cols += list(kw.get("column_list", []))
    return list(dict.fromkeys(cols))
