"""Values made once per key in a process: the first caller for a key makes it, callers for the same key wait for
that, and callers for other keys never wait (loading one stage's models blocks no other stage's). Used for stage
setups (lifecycle.py) and the models the stages share (tasks/models/shared.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class OncePerKey:
    def __init__(self) -> None:
        self.values: dict[Hashable, Any] = {}
        self._making: dict[Hashable, threading.Lock] = {}
        self.lock = threading.Lock()  # guards `values`; held only for lookups and stores, never while making

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.values:
                return self.values[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self.lock:
                if key in self.values:
                    return self.values[key]
            value = make()
            with self.lock:
                self.values[key] = value
            return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self.values

    def pop_where(self, keep: Callable[[Hashable], bool]) -> list[tuple[Hashable, Any]]:
        """Remove and return the (key, value) pairs for which `keep(key)` is false."""
        with self.lock:
            gone = [(k, v) for k, v in self.values.items() if not keep(k)]
            for k, _ in gone:
                del self.values[k]
                self._making.pop(k, None)
        return gone
