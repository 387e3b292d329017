"""Where a benchmark's results go: a Markdown table in bench/results/ (git-ignored), printed as well."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(table + "\n")
    print(table)
