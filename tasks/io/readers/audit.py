"""Where every byte of an input file went: the lines (or Parquet rows) a file holds, counted from its bytes, against
the lines its rows and quarantine rows cover, counted from the rows as they leave the reader.

The two counts come from different code: `read` from the decoded stream (tasks/io/readers/decode.py counts
newlines) or the Parquet footer, `covered` from the `src_lines` of every yielded row (tasks/io/readers/__init__.py).
A reader that drops a record — a quote that never closes, a block that fails to parse — leaves `unaccounted` above
zero, and the ingest stage's contract fails on it (tasks/stages/ingest.py `rate_checks`), naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Audit:
    unit: str = "lines"  # "lines" for JSONL and CSV, "rows" for Parquet
    read: int = 0  # lines in the decoded bytes (a last line without a newline counts), or rows in the footer
    covered: int = 0  # the sum of `src_lines` of the rows and quarantine rows the reader yielded
    skipped: int = 0  # lines that are no record: blank lines and a CSV header

    @property
    def unaccounted(self) -> int:
        return self.read - self.covered - self.skipped

    def counts(self) -> dict[str, int]:
        """The audit as stage stats counters (summed over files by the manifest)."""
        return {f"input.{self.unit}_read": self.read, f"input.{self.unit}_in_rows": self.covered,
                f"input.{self.unit}_skipped": self.skipped, "input.unaccounted": self.unaccounted}
