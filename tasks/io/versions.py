"""A dataset's published versions as files: which data files make up a version, its dedup index, what was forgotten.

A version is its `_manifest.json`: `outputs` lists every data file of the version with its sha256 and row count,
including files an `append` version shares with the versions before it (they are listed, never copied), and
`published.index` lists the matching dedup index parts (tasks/stages/dedup/published.py). Reading a version is
reading the files its manifest lists; `version_files` gives their URIs to any Parquet reader.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import polars as pl

from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.manifests import DataObject, StageManifest, render
from tasks.io.storage import Storage, StorageError, _io

log = logging.getLogger("sluice")


class VersionNotFound(BadInput):
    pass


class DamagedVersion(StorageError):
    """Files of a published version are missing or differ from what its manifest recorded (exit 5): nothing may be
    built on them, and `sluice verify` names each one."""

    def __init__(self, dataset: str, version: int, problems: list[str]):
        self.dataset, self.version, self.problems = dataset, version, problems
        more = f" (and {len(problems) - 1} more; `sluice verify {dataset} --version {version}` lists them)" if len(
            problems) > 1 else ""
        RuntimeError.__init__(self, f"dataset {dataset} v{version} is damaged: {problems[0]}{more}")


def _sha256(storage: Storage, rel: str) -> str:
    """Streamed: a data file is never held whole."""
    digest = hashlib.sha256()
    with _io("read", storage.uri(rel)), storage.fs.open(storage._path(rel), "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(storage: Storage, objects: list[DataObject], check: str = "auto") -> list[str]:
    """What is wrong with these recorded files: missing, another size, or (check `hash`) other bytes. `auto`
    hashes local files and compares sizes on S3 (hashing there means downloading every file)."""
    if check == "auto":
        check = "size" if storage.remote else "hash"
    folders = sorted({o.path.rsplit("/", 1)[0] for o in objects})
    sizes: dict[str, int] = {}
    for folder in folders:  # one listing a folder, not a request a file
        with _io("list", storage.uri(folder)):
            try:
                found = storage.fs.find(storage._path(folder), detail=True)
            except FileNotFoundError:
                found = {}
        base = storage._path("")
        for path, info in found.items():
            rel = path[len(base):].lstrip("/") if path.startswith(base) else path
            sizes[rel] = int(info.get("size") or 0)
    problems = []
    for obj in objects:
        where = storage.uri(obj.path)
        if obj.path not in sizes:
            problems.append(f"{where} is missing")
        elif obj.bytes and sizes[obj.path] != obj.bytes:
            problems.append(f"{where} has {sizes[obj.path]:,} bytes, its manifest recorded {obj.bytes:,}")
        elif check == "hash" and _sha256(storage, obj.path) != obj.sha256:
            problems.append(f"{where} does not match the sha256 its manifest recorded")
    return problems


def verify_version(storage: Storage, dataset: str, version: int, check: str = "auto", index: bool = True
                   ) -> list[str]:
    """Every data file (shared with earlier versions included) and index part of a version, checked."""
    manifest = version_manifest(storage, dataset, version)
    return check_files(storage, list(manifest.outputs) + (index_objects(manifest) if index else []), check)


def require_intact(storage: Storage, dataset: str, version: int, check: str = "auto", index: bool = True) -> None:
    problems = verify_version(storage, dataset, version, check, index)
    if problems:
        raise DamagedVersion(dataset, version, problems)


def published_versions(storage: Storage, dataset: str) -> list[int]:
    """Versions whose manifest exists (a claimed but uncommitted number is not a version)."""
    found = layout.version_numbers(storage.listdir(layout.dataset_dir(dataset)))
    return [v for v in found if storage.exists(layout.version_manifest(dataset, v))]


def newest_version(storage: Storage, dataset: str) -> int | None:
    found = published_versions(storage, dataset)
    return found[-1] if found else None


class VersionConflict(RuntimeError):
    """A version cannot be committed: a newer one was published meanwhile, the version it builds on is no longer
    the newest, or another writer committed its number."""


def claim_version(storage: Storage, dataset: str, run_id: str) -> int:
    """The next free version number, taken by exclusive create of `_claims/v<N>.json` (O_EXCL locally, a
    conditional PUT on S3), so two writers never take the same N. On resume, the number this run already took,
    unless another run has committed a newer version since: versions never go back in time, so the old claim is
    abandoned (its number is skipped, never reused) and a new one is taken."""
    claims = layout.claims_dir(dataset)
    for n in layout.version_numbers(storage.listdir(claims)):
        claim = storage.read_json_if_exists(layout.claim(dataset, n))
        if claim and claim.get("run_id") == run_id:
            newest = newest_version(storage, dataset) or 0
            if storage.exists(layout.version_manifest(dataset, n)) or newest < n:
                return n
            log.warning(f"dataset {dataset}: this run claimed v{n} before a crash, but v{newest} was published "
                        f"since; publishing as a newer version instead (v{n} stays unused)")
            break
    taken = (layout.version_numbers(storage.listdir(claims))
             + layout.version_numbers(storage.listdir(layout.dataset_dir(dataset))))
    n = (max(taken) if taken else 0) + 1
    body = orjson.dumps({"run_id": run_id, "claimed_at": datetime.now(UTC).isoformat()})
    while not storage.create_exclusive(layout.claim(dataset, n), body):
        n += 1
    return n


def commit_version(storage: Storage, record: StageManifest, base: int | None,
                   fence: Callable[[], None] | None = None) -> None:
    """Make a claimed version visible: the one place any version (a publish, a forget) is committed. Refused when
    a newer version exists (an older one is never published after it), when `base` (the version an append or a
    forget builds on) is no longer the newest, or when the lease `fence` checks was lost; then the exclusive create
    of `_manifest.json`, the commit marker. Its files, written before, are what the manifest lists; the card, the
    diff and the published event follow the commit (tasks/ops/announce.py)."""
    dataset, version = record.published["dataset"], record.published["version"]
    if fence is not None:
        fence()
    newest = newest_version(storage, dataset) or 0
    if newest > version:
        raise VersionConflict(f"dataset {dataset}: v{newest} was published while v{version} was being made; an "
                              f"older version is never published after a newer one. Rerun to publish as "
                              f"v{newest + 1}.")
    if base and newest != base:
        raise VersionConflict(f"dataset {dataset}: v{version} builds on v{base}, but the newest version is "
                              f"v{newest}; rerun to build on it")
    if not storage.create_exclusive(layout.version_manifest(dataset, version), render(record)):
        raise VersionConflict(f"dataset {dataset} v{version} was committed by someone else meanwhile")


def version_manifest(storage: Storage, dataset: str, version: int) -> StageManifest:
    manifest = storage.read_record_if_exists(StageManifest, layout.version_manifest(dataset, version))
    if manifest is None:
        known = ", ".join(f"v{v}" for v in published_versions(storage, dataset)) or "none"
        raise VersionNotFound(f"dataset {dataset} has no published v{version} under "
                              f"{storage.uri(layout.DATASETS)} (published: {known})")
    return manifest


def version_files(storage: Storage, dataset: str, version: int | None = None) -> list[str]:
    """URIs of the data files of a version (the newest by default), in order: what polars, duckdb, pyarrow or
    `datasets` read to get exactly that version."""
    version = version if version is not None else newest_version(storage, dataset)
    if version is None:
        raise VersionNotFound(f"dataset {dataset} has no published version under {storage.uri(layout.DATASETS)}")
    return [storage.uri(o.path) for o in version_manifest(storage, dataset, version).outputs]


def token_files(storage: Storage, dataset: str, version: int | None = None) -> list[str]:
    """URIs of a version's token shards (.bin; the .idx and .docs.parquet beside each), in order."""
    version = version if version is not None else newest_version(storage, dataset)
    if version is None:
        raise VersionNotFound(f"dataset {dataset} has no published version under {storage.uri(layout.DATASETS)}")
    tokens = (version_manifest(storage, dataset, version).published or {}).get("tokens")
    if not tokens:
        raise VersionNotFound(f"dataset {dataset} v{version} has no token shards (publish.tokens.enabled was off)")
    return [storage.uri(p["bin"]["path"]) for p in tokens["parts"]]


def index_objects(manifest: StageManifest) -> list[DataObject]:
    return [DataObject.model_validate(o) for o in ((manifest.published or {}).get("index") or {}).get("parts", [])]


def tombstones(storage: Storage, dataset: str) -> list[dict]:
    """Every takedown `sluice forget` recorded, oldest first, with `lifted` set on those that were lifted."""
    folder = layout.tombstones_dir(dataset)
    names = sorted(storage.listdir(folder))
    out = []
    for name in names:
        if name.endswith(".json") and not name.endswith(".lifted.json"):
            record = storage.read_json(f"{folder}/{name}")
            lifted = name.removesuffix(".json") + ".lifted.json"
            if lifted in names:
                record["lifted"] = storage.read_json(f"{folder}/{lifted}")
            out.append(record)
    return out


def tombstone_objects(storage: Storage, dataset: str) -> list[DataObject]:
    """The index parts of every row `sluice forget` removed from the dataset and did not lift (blocked content)."""
    return [DataObject.model_validate(t["index"]) for t in tombstones(storage, dataset)
            if t.get("index") and "lifted" not in t]


@dataclass
class PublishedIndex:
    """What a run's dedup compares new rows against: the index parts of the newest version (append runs only)
    and the blocked (forgotten) rows (every run). Parts are read one at a time."""

    storage: Storage
    dataset: str
    version: int | None = None
    format: dict | None = None
    parts: list[DataObject] = field(default_factory=list)
    blocked: list[DataObject] = field(default_factory=list)

    def fingerprint(self) -> list:
        return [self.dataset, self.version, [o.sha256 for o in self.parts], [o.sha256 for o in self.blocked]]

    def read_parts(self) -> Iterator[pl.DataFrame]:
        for obj in self.parts:
            yield self.storage.read_parquet(obj.path)

    def read_blocked(self) -> pl.DataFrame | None:
        frames = [self.storage.read_parquet(o.path) for o in self.blocked]
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    @property
    def empty(self) -> bool:
        return not self.parts and not self.blocked


def published_index(storage: Storage, dataset: str, append: bool, check: str = "auto") -> PublishedIndex:
    """The index a run of `dataset` deduplicates against: the newest version's when appending, plus what was
    forgotten (always). Its parts are checked against their manifests first (DamagedVersion)."""
    index = PublishedIndex(storage, dataset, blocked=tombstone_objects(storage, dataset))
    newest = newest_version(storage, dataset) if append else None
    if index.blocked:
        problems = check_files(storage, index.blocked, check)
        if problems:
            raise DamagedVersion(dataset, newest or 0, [f"takedown index: {p}" for p in problems])
    if newest is not None:
        manifest = version_manifest(storage, dataset, newest)
        problems = check_files(storage, index_objects(manifest), check)
        if problems:
            raise DamagedVersion(dataset, newest, problems)
        index.version = newest
        index.format = ((manifest.published or {}).get("index") or {}).get("format")
        index.parts = index_objects(manifest)
    return index
