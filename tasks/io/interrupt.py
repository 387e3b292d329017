"""The process-wide stop flag. The CLI sets it on SIGTERM/SIGINT; long loops (readers, shard tasks) check it between
blocks and raise `Interrupted`, so a run stops within one block, marks itself interrupted and releases its lock."""

from __future__ import annotations

import threading

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
