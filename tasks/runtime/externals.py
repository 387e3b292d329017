"""What a stage's setup reads besides the run's data, handed in by the runtime.

A stage declares it (`Stage.externals(params)`): the files its setup reads (benchmark files, a reference set, URL
blocklists; local paths or `s3://` URIs) and the machine-level cache folders it writes (the LM's converted
weights, embedding vectors, generations). The runtime reads each file once per worker process with the run's
storage options, so S3 credentials from config reach a benchmark file as they reach the data (before, a setup read
it with the bare environment), creates each cache folder and checks that it can write there before any model
loads, and hands the setup an `ExternalInputs`: the bytes by URI, their sha256 (logged, so a run says which
benchmark files it used), and the cache folders. A stage's code then opens nothing itself.

A setup called directly (a test, a benchmark script) gets the same reading from `gather` with no storage options.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import BadInput

log = logging.getLogger("sluice")


@dataclass(frozen=True)
class Externals:
    """A stage's declaration for one set of params: files its setup reads, cache folders it writes."""

    files: tuple[str, ...] = ()
    caches: tuple[Path, ...] = ()


class CacheNotWritable(BadInput):
    """A cache folder a stage declared cannot be created or written: say where, and how to point it elsewhere."""


@dataclass(frozen=True)
class ExternalInputs:
    """What the runtime hands a setup: each declared file's bytes (None: it does not exist, for the stage to say
    so in its own words), their sha256, and the cache folders, created and writable."""

    files: Mapping[str, bytes | None] = field(default_factory=dict)
    caches: tuple[Path, ...] = ()

    def read(self, uri: str) -> bytes:
        """The bytes of a declared file; FileNotFoundError when it does not exist."""
        if uri not in self.files:
            raise KeyError(f"{uri} was not declared in the stage's externals: the runtime did not read it")
        data = self.files[uri]
        if data is None:
            raise FileNotFoundError(uri)
        return data

    @property
    def sha256(self) -> dict[str, str | None]:
        return {uri: hashlib.sha256(data).hexdigest() if data is not None else None
                for uri, data in self.files.items()}


def _read(uri: str, s3_options: dict | None) -> bytes | None:
    from tasks.io.storage import filesystem, is_s3

    fs = filesystem(uri, s3_options)
    path = uri.split("://", 1)[1] if is_s3(uri) else os.path.expanduser(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".sluice-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CacheNotWritable(
            f"cannot write the cache folder {folder} ({type(exc).__name__}: {exc.strerror or exc}); set "
            "SLUICE_CACHE (or score.lm.cache_dir) to a folder this user can write") from None


def gather(declared: Externals, s3_options: dict | None = None) -> ExternalInputs:
    """Read every declared file and prepare every declared cache folder."""
    files = {uri: _read(uri, s3_options) for uri in dict.fromkeys(declared.files)}
    for folder in declared.caches:
        _writable(folder)
    inputs = ExternalInputs(files=files, caches=declared.caches)
    for uri, digest in inputs.sha256.items():
        log.debug(f"external input {uri}: sha256 {digest}")
    return inputs
