"""Model lifecycle and device slots, per worker process.

A stage's `setup(params)` runs once per process and params (the first shard that needs it waits while the others
reuse it) and `teardown` frees it when the stage is done; in a Dask worker process whatever is still loaded is freed
when the process exits. A `gpu` stage runs one shard at a time in a process (a semaphore), so threads never
oversubscribe its card; on Dask each such task also asks the scheduler for a `GPU` resource.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.runtime import externals
from tasks.runtime.fingerprints import fingerprint
from tasks.runtime.once import OncePerKey
from tasks.runtime.stage import Stage

log = logging.getLogger("sluice")
_loaded = OncePerKey()  # (stage name, params fingerprint) -> (what its setup loaded, the stage)
_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None


def _key(stage: Stage, params: Any) -> tuple[str, str]:
    dumped = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    return stage.name, fingerprint(dumped)


def loaded_for(stage: Stage, params: Any, s3_options: dict | None = None) -> Any:
    """What the stage's setup loaded for these params in this process (loading it on first use, with the external
    files it declared read by the runtime under the run's storage options)."""
    if stage.setup is None:
        return None

    def load() -> tuple[Any, Stage]:
        if stage.externals is not None:
            return stage.setup(params, externals.gather(stage.externals(params), s3_options)), stage
        return stage.setup(params), stage

    return _loaded.get(_key(stage, params), load)[0]


def preload(stage: Stage, params: Any, s3_options: dict | None = None) -> threading.Thread:
    """Load the stage's models in a background thread, so a local run's first stages overlap the loading and
    the first-run conversions behind it (the LM's GGUF, the benchmark embeddings: ~40 s on 2 cores). The stage's
    shards then find them loaded, or wait on the same key's lock. A failure here is left for the stage itself to
    raise, where it is reported."""

    def load() -> None:
        try:
            loaded_for(stage, params, s3_options)
        except Exception as exc:  # noqa: BLE001 - the stage loads again and raises it in its own task
            log.debug(f"preloading {stage.name}'s models failed ({exc}); the stage will load them itself")

    thread = threading.Thread(target=load, name=f"preload-{stage.name}", daemon=True)
    thread.start()
    return thread


def is_loaded(stage: Stage, params: Any) -> bool:
    return _key(stage, params) in _loaded


def release(stage_name: str | None = None) -> int:
    """Tear down what is loaded for one stage (or all, and then the models the stages shared: tasks/models/shared.py
    keeps the embedder and the LM between score and augment); returns how many stage setups were freed."""
    gone = _loaded.pop_where(lambda key: stage_name is not None and key[0] != stage_name)
    for _, (obj, stage) in gone:
        if stage.teardown is not None:
            stage.teardown(obj)
    if stage_name is None:
        from tasks.models import shared

        shared.release_all()
    return len(gone)


atexit.register(release)


@contextmanager
def device_slot(stage: Stage) -> Iterator[None]:
    """Hold the process's device for the duration of a gpu stage's shard; cpu stages pass straight through. One
    slot a process, whatever the GPU count: the models sit on one device (torch's current `cuda`), so a second GPU
    is used by a second worker process (README, Dask: one worker per GPU), not by a second thread here."""
    global _slots
    if stage.resources != "gpu":
        yield
        return
    with _lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(1)
    with _slots:
        yield
