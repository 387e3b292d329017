"""What makes work reusable: the code version, run ids, and fingerprints of (inputs, params, code).

A receipt or manifest is trusted only when its fingerprint matches the work about to be done, so rerunning a run id
after a crash redoes exactly the unfinished work and, being deterministic, writes byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import orjson

HERE = Path(__file__).resolve().parent.parent.parent
T = TypeVar("T")


def package_version() -> str:
    """The version in pyproject.toml (the one source), as installed; read from the file in a bare checkout."""
    try:
        return metadata.version("sluice")
    except metadata.PackageNotFoundError:
        import tomllib

        return tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["version"]


def _code_version() -> str:
    """Package version + a hash of the code that shapes outputs: a code change invalidates resumable work."""
    digest = hashlib.sha256()
    for folder in ("tasks", "schemas"):
        for path in sorted((HERE / folder).rglob("*")):
            if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(HERE)).encode())
                digest.update(path.read_bytes())
    return f"{package_version()}+{digest.hexdigest()[:12]}"


CODE_VERSION = _code_version()


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:6]}"


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def reuse_or_redo(read: Callable[[], T | None], fp: str, fingerprint_of: Callable[[T], str | None],
                  redo: Callable[[], T], discard: Callable[[], None] | None = None) -> tuple[T, bool]:
    """The one resume rule: reuse what is recorded if its fingerprint is `fp`, otherwise do the work again.

    A stale record (other inputs, params or code) is discarded before the work is redone when `discard` is given,
    so a crash while redoing can never leave an old commit marker pointing at half-rewritten outputs.
    Returns (result, reused)."""
    old = read()
    if old is not None and fingerprint_of(old) == fp:
        return old, True
    if old is not None and discard is not None:
        discard()
    return redo(), False
