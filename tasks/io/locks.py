"""Fenced leases on storage: one curate run per dataset, and one process per run id.

A storage lock rather than a Prefect concurrency limit, because the thing being protected is the dataset on storage:
runs started from two Prefect servers, or from the CLI without one, still exclude each other.

Each acquisition is a new *generation*: `<folder>/gen-<N>.json`, created exclusively (O_EXCL locally, a conditional
PUT on S3), so of two runs taking over the same stale lease only one can create N+1. The generation is the fencing
token: the holder refreshes its own file from a daemon thread, and before anything becomes visible (a published
version) the holder checks that its generation is still the newest and unreleased (`assert_current`, a read of
storage that works in any worker process). A holder that was paused past its TTL and lost the lease to N+1 therefore
stops with `LockLost` instead of publishing.

A lease whose holder died is taken over: at once when the holder was a process on this host that no longer exists
(a resumed run after kill -9), otherwise when its `expires_at` has passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from tasks.io import layout
from tasks.io.pids import alive
from tasks.io.storage import Storage

log = logging.getLogger("sluice")
KEEP_GENERATIONS = 5  # older generation files are removed when a new one is taken


class DatasetLocked(RuntimeError):
    """Another live run holds the lease; the message names it."""


class LockLost(DatasetLocked):
    """This run's lease was taken over (it was paused or cut off past its TTL); it must not publish."""


def generations(storage: Storage, folder: str) -> list[int]:
    return sorted(int(n[4:-5]) for n in storage.listdir(folder) if n.startswith("gen-") and n.endswith(".json")
                  and n[4:-5].isdigit())


def current(storage: Storage, folder: str) -> dict | None:
    """The newest generation's record (with its number), or None."""
    gens = generations(storage, folder)
    if not gens:
        return None
    body = storage.read_json_if_exists(layout.lock_generation(folder, gens[-1]))
    return {**body, "generation": gens[-1]} if body else None


def is_live(holder: dict | None) -> bool:
    """Whether a lease record still binds: not released, not expired, and not a dead process on this host."""
    if holder is None or holder.get("released"):
        return False
    if datetime.fromisoformat(holder["expires_at"]) < datetime.now(UTC):
        return False
    return not (holder.get("host") == socket.gethostname() and not alive(int(holder.get("pid", 0))))


def assert_current(storage: Storage, folder: str, generation: int | None, what: str) -> None:
    """The fence: raise LockLost unless `generation` is still the newest, unreleased lease of `folder`."""
    if generation is None:
        return
    holder = current(storage, folder)
    if holder is None or holder["generation"] != generation or holder.get("released"):
        taker = f"run {holder['run_id']} (generation {holder['generation']})" if holder else "nobody"
        raise LockLost(f"{what}: this run's lease (generation {generation}) was taken over by {taker}; it stops "
                       "without publishing. Rerun it to publish what it computed as a new version.")


class FencedLock:
    def __init__(self, storage: Storage, folder: str, what: str, run_id: str, ttl_seconds: int = 600,
                 flow_run: str | None = None):
        self.storage, self.folder, self.what, self.run_id = storage, folder, what, run_id
        self.ttl, self.flow_run = ttl_seconds, flow_run
        self.owner = uuid.uuid4().hex  # this process's acquisition, distinct from any other with the same run id
        self.generation: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, released: bool = False) -> bytes:
        now = datetime.now(UTC)
        return orjson.dumps({"what": self.what, "run_id": self.run_id, "flow_run": self.flow_run, "owner": self.owner,
                             "host": socket.gethostname(), "pid": os.getpid(), "refreshed_at": now.isoformat(),
                             "expires_at": (now + timedelta(seconds=self.ttl)).isoformat(), "released": released})

    def _refuse(self, holder: dict) -> None:
        flow_run = f", Prefect flow run {holder['flow_run']}" if holder.get("flow_run") else ""
        if holder["run_id"] == self.run_id:
            raise DatasetLocked(
                f"{self.what}: run {self.run_id} is already running (host {holder.get('host')}, pid "
                f"{holder.get('pid')}{flow_run}); the same run id cannot run twice at once. If that process is dead "
                f"on another host, its lease expires at {holder['expires_at']}.")
        raise DatasetLocked(
            f"{self.what} is being curated by run {holder['run_id']}{flow_run} (host {holder.get('host')}, pid "
            f"{holder.get('pid')}, lease held until {holder['expires_at']} unless refreshed); this run "
            f"({self.run_id}) stops before doing any work. Wait for it, or, if that run is dead, wait for the lease "
            "to expire.")

    def acquire(self, heartbeat: bool = True, wait_seconds: float = 0) -> int:
        """Take the lease. Held by a live run of another id: wait up to `wait_seconds` for it (polling), so runs
        of one dataset queue up in the order they arrive instead of failing, then refuse."""
        deadline = time.monotonic() + wait_seconds
        attempts, waited_on = 0, None
        while attempts < 8:
            holder = current(self.storage, self.folder)
            if is_live(holder):
                if holder["run_id"] == self.run_id or time.monotonic() >= deadline:
                    self._refuse(holder)
                if waited_on != holder["run_id"]:
                    waited_on = holder["run_id"]
                    log.warning(f"{self.what} is held by run {holder['run_id']}; waiting up to "
                             f"{max(0, deadline - time.monotonic()):.0f} s for it to finish")
                time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))
                continue
            attempts += 1
            if holder is not None and not holder.get("released"):
                dead = "its process is gone" if datetime.fromisoformat(holder["expires_at"]) >= datetime.now(UTC) \
                    else f"it expired at {holder['expires_at']}"
                log.warning(f"{self.what}: taking over the lease of run {holder['run_id']} (generation "
                            f"{holder['generation']}): {dead}")
            n = (holder["generation"] if holder else 0) + 1
            if self.storage.create_exclusive(layout.lock_generation(self.folder, n), self._body()):
                self.generation = n
                self._prune(n)
                if heartbeat:
                    self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.what}", daemon=True)
                    self._thread.start()
                return n
        raise DatasetLocked(f"{self.what}: could not take the lease at {self.storage.uri(self.folder)}")

    def _prune(self, n: int) -> None:
        for old in generations(self.storage, self.folder):
            if old <= n - KEEP_GENERATIONS:
                with contextlib.suppress(Exception):  # housekeeping only
                    self.storage.delete(layout.lock_generation(self.folder, old))

    def check(self) -> None:
        """Raise LockLost if the lease was lost (seen by the heartbeat, or now on storage)."""
        if self.lost:
            raise LockLost(self.lost)
        assert_current(self.storage, self.folder, self.generation, self.what)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                assert_current(self.storage, self.folder, self.generation, self.what)
                self.storage.write_bytes(layout.lock_generation(self.folder, self.generation), self._body())
            except LockLost as exc:
                self.lost = str(exc)
                log.error(str(exc))
                return
            except Exception as exc:  # a missed refresh is retried next beat; the TTL leaves room for two
                log.warning(f"{self.what}: could not refresh the lease: {exc}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is None:
            return
        holder = current(self.storage, self.folder)
        if holder is not None and holder["generation"] == self.generation and holder.get("owner") == self.owner:
            self.storage.write_bytes(layout.lock_generation(self.folder, self.generation), self._body(released=True))

    def __enter__(self) -> FencedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def dataset_lock(storage: Storage, dataset: str, run_id: str, ttl_seconds: int, flow_run: str | None = None
                 ) -> FencedLock:
    return FencedLock(storage, layout.dataset_lock_dir(dataset), f"dataset {dataset}", run_id, ttl_seconds, flow_run)


def run_lock(storage: Storage, run_id: str, ttl_seconds: int, flow_run: str | None = None) -> FencedLock:
    return FencedLock(storage, layout.run_lock_dir(run_id), f"run {run_id}", run_id, ttl_seconds, flow_run)
