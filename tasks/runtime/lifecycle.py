"""Model lifecycle and device slots, per worker process.

A stage's `setup(params)` runs once per process and params (the first shard that needs it waits while the others
reuse it) and `teardown` frees it when the stage is done; in a Dask worker process whatever is still loaded is freed
when the process exits. A `gpu` stage runs one shard at a time per CUDA device in a process (a semaphore), so
threads never oversubscribe a card; on Dask each such task also asks the scheduler for a `GPU` resource.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.runtime.fingerprints import fingerprint
from tasks.runtime.stage import Stage

_loaded: dict[tuple[str, str], Any] = {}
_teardowns: dict[tuple[str, str], Stage] = {}
_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None


def _key(stage: Stage, params: Any) -> tuple[str, str]:
    dumped = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    return stage.name, fingerprint(dumped)


def loaded_for(stage: Stage, params: Any) -> Any:
    """What the stage's setup loaded for these params in this process (loading it on first use)."""
    if stage.setup is None:
        return None
    key = _key(stage, params)
    with _lock:
        if key not in _loaded:
            _loaded[key] = stage.setup(params)
            _teardowns[key] = stage
        return _loaded[key]


def is_loaded(stage: Stage, params: Any) -> bool:
    return _key(stage, params) in _loaded


def release(stage_name: str | None = None) -> int:
    """Tear down what is loaded for one stage (or all); returns how many were freed."""
    with _lock:
        keys = [k for k in _loaded if stage_name is None or k[0] == stage_name]
        for key in keys:
            obj, stage = _loaded.pop(key), _teardowns.pop(key)
            if stage.teardown is not None:
                stage.teardown(obj)
    return len(keys)


atexit.register(release)


def device_count() -> int:
    """CUDA devices visible to this process; 1 when there are none (the CPU is one device)."""
    try:
        import torch
    except ImportError:
        return 1
    return max(1, torch.cuda.device_count())


@contextmanager
def device_slot(stage: Stage) -> Iterator[None]:
    """Hold one device for the duration of a gpu stage's shard; cpu stages pass straight through."""
    global _slots
    if stage.resources != "gpu":
        yield
        return
    with _lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(device_count())
    with _slots:
        yield
