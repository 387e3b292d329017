"""Progress of a stage's shards, as a person watching a terminal wants it: one live line per stage (shards
done/total, rows/s, ETA) redrawn in place on a TTY, and plain log lines elsewhere (CI, files, Prefect workers):
at most one per tenth of the work and per 30 seconds, and one every 30 seconds while nothing finishes, so a long
stage is never silent and a short one says nothing until its commit line."""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("sluice")
QUIET_SECONDS = 30.0
_live: set[StageProgress] = set()  # live lines on a terminal: a log record clears them before it is written


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class QuietLibraries(logging.Filter):
    """On a console handler below debug: Prefect's "Finished in state Completed()" for every task run and Great
    Expectations' INFO lines say nothing the stage lines do not (failures are WARNING and above, and pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(("prefect.task_runs",
                                                                              "great_expectations"))


class ClearLiveLine(logging.Filter):
    """On a console handler: a log record first clears a progress line drawn in place on the same terminal, so the
    two are never glued together ("ETA 0:0404:38:29.129 | INFO"); the next update redraws it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for progress in list(_live):
            progress.clear()
        return True


class StageProgress:
    def __init__(self, stage: str, total: int, what: str = "shards", stream=None, rows: bool = True):
        self.stage, self.total, self.what, self.count_rows = stage, total, what, rows
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.rows = 0
        self.started = self.logged = time.perf_counter()
        self._lock = threading.Lock()
        self._next_log = max(1, total // 10)
        self._drawn = False
        self._closed = threading.Event()
        if not self.tty:
            threading.Thread(target=self._heartbeat, daemon=True, name=f"progress-{stage}").start()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.rows / elapsed
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        pct = 100 * self.done / self.total if self.total else 100.0
        rows = f"{self.rows:,} rows, {rate:,.0f} rows/s, " if self.count_rows else ""
        return (f"{self.stage}: {self.done}/{self.total} {self.what} ({pct:.0f}%), {rows}elapsed {_clock(elapsed)}"
                + (f", ETA {_clock(eta)}" if self.done else ""))

    def advance(self, rows: int, units: int = 1) -> None:
        """`units` shards (or files) done, with `rows` rows between them (a task may run several shards)."""
        with self._lock:
            self.done += units
            self.rows += rows
            if self.tty:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
                self._drawn = True
                _live.add(self)
            elif self.done >= self._next_log and time.perf_counter() - self.logged >= QUIET_SECONDS:
                self._log()
                self._next_log = self.done + max(1, self.total // 10)

    def _log(self) -> None:
        log.info(self.line())
        self.logged = time.perf_counter()

    def _heartbeat(self) -> None:
        while not self._closed.wait(QUIET_SECONDS / 3):
            with self._lock:
                if self.done < self.total and time.perf_counter() - self.logged >= QUIET_SECONDS:
                    self._log()

    def clear(self) -> None:
        """Erase the live line (a log record is about to be written on this terminal)."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        self._closed.set()
        _live.discard(self)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
