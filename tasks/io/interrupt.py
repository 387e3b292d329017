"""The process-wide stop flag. The CLI sets it on SIGTERM/SIGINT; long loops (readers, shard tasks) check it between
blocks and raise `Interrupted`, so a run stops within one block, marks itself interrupted and releases its lock."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_stop = threading.Event()


class Interrupted(RuntimeError):
    """The run was asked to stop (SIGTERM or SIGINT)."""


def request_stop() -> None:
    _stop.set()


def clear() -> None:
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()


def check() -> None:
    if _stop.is_set():
        raise Interrupted("stopped by a signal (SIGTERM or SIGINT)")


@contextmanager
def shielded() -> Iterator[None]:
    """Cleanup (run.json, the report, releasing leases) runs to its end: a signal arriving meanwhile only sets the
    stop flag. Signal handlers exist only in the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: request_stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
