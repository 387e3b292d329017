"""One curate run per dataset at a time: a lock object on the output storage, created exclusively.

A storage lock rather than a Prefect concurrency limit, because the thing being protected is the dataset on storage:
runs started from two Prefect servers, or from the CLI without one, still exclude each other. Creation is O_EXCL
locally and a conditional PUT on S3 (tasks/io/storage.py). The holder refreshes `expires_at` from a daemon thread;
a lock whose holder died (kill -9) goes stale after `runner.lock_ttl_seconds` and is then taken over, and a run
resumed with the same run id takes its own lock back at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta

import orjson

from tasks.io import layout
from tasks.io.storage import Storage

log = logging.getLogger("sluice")


class DatasetLocked(RuntimeError):
    """Another run holds the dataset; the message names it."""


class DatasetLock:
    def __init__(self, storage: Storage, dataset: str, run_id: str, ttl_seconds: int = 600,
                 flow_run: str | None = None):
        self.storage, self.dataset, self.run_id = storage, dataset, run_id
        self.ttl, self.flow_run = ttl_seconds, flow_run
        self.rel = layout.dataset_lock(dataset)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> dict:
        now = datetime.now(UTC)
        return {"dataset": self.dataset, "run_id": self.run_id, "flow_run": self.flow_run,
                "host": socket.gethostname(), "pid": os.getpid(), "refreshed_at": now.isoformat(),
                "expires_at": (now + timedelta(seconds=self.ttl)).isoformat()}

    def acquire(self) -> None:
        for _ in range(3):
            if self.storage.create_exclusive(self.rel, orjson.dumps(self._body())):
                break
            holder = self.storage.read_json_if_exists(self.rel)
            if holder is None:  # released between our create and read: try again
                continue
            if holder.get("run_id") == self.run_id:
                log.info(f"dataset {self.dataset}: taking back the lock of this run ({self.run_id}), resumed")
                self.storage.write_json(self.rel, self._body())
                break
            if datetime.fromisoformat(holder["expires_at"]) < datetime.now(UTC):
                log.warning(f"dataset {self.dataset}: lock of run {holder['run_id']} expired at "
                            f"{holder['expires_at']} (its holder stopped refreshing it); taking it over")
                self.storage.delete(self.rel)
                continue
            flow_run = f", Prefect flow run {holder['flow_run']}" if holder.get("flow_run") else ""
            raise DatasetLocked(
                f"dataset {self.dataset} is being curated by run {holder['run_id']}{flow_run} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}, lock held until {holder['expires_at']} unless "
                f"refreshed); this run ({self.run_id}) stops before doing any work. Wait for it, or, if that run is "
                f"dead, remove {self.storage.uri(self.rel)}"
            )
        else:
            raise DatasetLocked(f"dataset {self.dataset}: could not take the lock at {self.storage.uri(self.rel)}")
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.dataset}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                holder = self.storage.read_json_if_exists(self.rel)
                if holder is None or holder.get("run_id") != self.run_id:
                    log.error(f"dataset {self.dataset}: lost the lock to run {holder and holder.get('run_id')}")
                    return
                self.storage.write_json(self.rel, self._body())
            except Exception as exc:  # a missed refresh is retried next beat; the TTL leaves room for two
                log.warning(f"dataset {self.dataset}: could not refresh the lock: {exc}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.storage.read_json_if_exists(self.rel)
        if holder is not None and holder.get("run_id") == self.run_id:
            self.storage.delete(self.rel)

    def __enter__(self) -> DatasetLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
