"""Progress of a stage's shards, as a person watching a terminal wants it: one live line per stage (shards
done/total, rows/s, ETA) redrawn in place on a TTY, and plain log lines elsewhere (CI, files, Prefect workers), at
most one per tenth of the shards so a 10,000-shard stage does not flood a log."""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("sluice")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class StageProgress:
    def __init__(self, stage: str, total: int, what: str = "shards", stream=None):
        self.stage, self.total, self.what = stage, total, what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.rows = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._next_log = 1

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.rows / elapsed
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        pct = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.stage}: {self.done}/{self.total} {self.what} ({pct:.0f}%), {self.rows:,} rows, "
                f"{rate:,.0f} rows/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}")

    def advance(self, rows: int, units: int = 1) -> None:
        """`units` shards (or files) done, with `rows` rows between them (a task may run several shards)."""
        with self._lock:
            self.done += units
            self.rows += rows
            if self.tty:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
            elif self.done >= self._next_log or self.done == self.total:
                log.info(self.line())
                self._next_log = self.done + max(1, self.total // 10)

    def close(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()
