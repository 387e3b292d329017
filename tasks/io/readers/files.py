"""Which files an --input names (local paths, folders, globs, s3:// prefixes), what format each is, and how to open
one. Every file a folder holds is read except hidden and marker files, which are listed with why."""

from __future__ import annotations

import glob as globlib
import io
import os
from dataclasses import dataclass, field

import fsspec

from schemas.errors import BadInput
from tasks.io.storage import _io, check_uri, filesystem, is_s3

JSONL_EXT = (".jsonl", ".json", ".ndjson")
CSV_EXT = (".csv",)
PARQUET_EXT = (".parquet", ".pq")
WARC_EXT = (".warc", ".arc", ".wet", ".warc.wet")  # gzip per record (.warc.gz) is undone by the WARC reader itself
HTML_EXT = (".html", ".htm", ".xhtml")
COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}


class InputError(BadInput):
    """An --input that cannot be used at all (matched nothing, unknown scheme)."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    version: str  # etag or mtime: changes when the object changes, so resume never reuses stale shards
    name: str = ""  # what records call their file (`src_file`): relative to the input root for local files

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.uri)

    def as_dict(self) -> dict:
        return {"uri": self.uri, "size": self.size, "version": self.version, "name": self.name}


@dataclass
class Skipped:
    """Files a folder or glob held that are not read, each with why (logged by the source stage)."""

    files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, why: str) -> None:
        self.files.append((path, why))


def _s3_uri(path: str) -> str:
    return path if path.startswith("s3://") else f"s3://{path}"


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _local_base(uri: str) -> str:
    """The folder an --input names: itself, a glob's folder before the first wildcard, or a file's folder."""
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if not os.path.exists(local) and _has_glob(local):
        return os.path.dirname(local[: min(local.index(ch) for ch in "*?[" if ch in local)])
    return local if os.path.isdir(local) else os.path.dirname(local)


def input_root(uris: list[str]) -> str | None:
    """The local folder all --inputs sit under: records name their file relative to it, so published data never
    holds an absolute local path and a corpus moved elsewhere keeps its record ids."""
    bases = [_local_base(u) for u in uris if not is_s3(u)]
    return os.path.commonpath(bases) if bases else None


def _hidden(name: str) -> bool:
    """Dot files and markers such as Spark's `_SUCCESS` are not data."""
    return name.startswith((".", "_"))


def _walk(folder: str, skipped: Skipped) -> list[str]:
    out = []
    for d, dirs, files in os.walk(folder):
        dirs[:] = sorted(x for x in dirs if not _hidden(x))
        for f in sorted(files):
            (skipped.add(os.path.join(d, f), "hidden or marker file") if _hidden(f) else
             out.append(os.path.join(d, f)))
    return out


def _resolve_s3(uri: str, s3_options: dict | None, skipped: Skipped) -> list[InputFile]:
    fs = filesystem(uri, s3_options)
    path = uri.split("://", 1)[1]
    fs.invalidate_cache()  # fsspec reuses instances and their listings; a poll must see new objects
    if fs.exists(path) and not fs.isdir(path):  # an existing key is literal, even with [ or * in it
        return [_s3_file(path, fs.info(path))]
    if fs.isdir(path):
        # one listing request per 1,000 keys, sizes and ETags included: no request per object
        found = []
        for p, info in sorted(fs.find(path, detail=True).items()):
            if _hidden(p.rsplit("/", 1)[-1]):
                skipped.add(_s3_uri(p), "hidden or marker file")
            elif info.get("type") != "directory":
                found.append(_s3_file(p, info))
        return found
    if _has_glob(path):
        return [_s3_file(p, info) for p, info in sorted(fs.glob(path, detail=True).items())
                if info.get("type") != "directory"]
    return []


def _s3_file(path: str, info: dict) -> InputFile:
    version = str(info.get("ETag") or info.get("LastModified") or "")
    return InputFile(_s3_uri(path), int(info.get("size") or 0), version)


def _resolve_local(uri: str, root: str | None, skipped: Skipped) -> list[InputFile]:
    local = os.path.expanduser(uri.removeprefix("file://"))
    if os.path.isdir(local):
        paths = _walk(local, skipped)
    elif os.path.exists(local):  # an existing path is literal, even with [ or * in its name
        paths = [local]
    elif _has_glob(local):
        paths = globlib.glob(local, recursive=True)
    else:
        paths = []
    found = []
    for p in paths:
        if not os.path.isfile(p):
            continue
        st = os.stat(p)
        ap = os.path.abspath(p)
        found.append(InputFile(ap, st.st_size, f"{st.st_mtime_ns}", os.path.relpath(ap, root)))
    return found


def resolve_inputs(uris: list[str], s3_options: dict | None = None, skipped: Skipped | None = None
                   ) -> list[InputFile]:
    """Expand globs and folders into a sorted, de-duplicated file list (sorted = deterministic shard ids). Every file
    a folder holds is returned (an unsupported one is quarantined by its reader) except hidden and marker files,
    which go to `skipped` with the reason."""
    for uri in uris:
        check_uri(uri, "input")
    root = input_root(uris)
    skipped = skipped if skipped is not None else Skipped()
    found: dict[str, InputFile] = {}
    for uri in uris:
        with _io("list", uri):
            files = _resolve_s3(uri, s3_options, skipped) if is_s3(uri) else _resolve_local(uri, root, skipped)
        if not files:
            raise InputError(f"input {uri!r} matched no files")
        found.update((f.uri, f) for f in files)
    return [found[k] for k in sorted(found)]


def detect_format(uri: str, configured: str = "auto") -> tuple[str, str | None]:
    """(format, compression) from the configured format or the file name, case-insensitively; a name Sluice has no
    reader for is format `unsupported` (its reader quarantines it, naming the extension)."""
    name = uri.lower()
    compression = None
    for ext, comp in COMPRESSION.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    if configured != "auto":
        return configured, compression
    if name.endswith(JSONL_EXT):
        return "jsonl", compression
    if name.endswith(CSV_EXT):
        return "csv", compression
    if name.endswith(PARQUET_EXT):
        return ("parquet", None) if compression is None else ("unsupported", compression)
    if name.endswith(WARC_EXT):
        return ("warc", None) if compression in (None, "gzip") else ("unsupported", compression)
    if name.endswith(HTML_EXT):
        return "html", compression
    return "unsupported", compression


def open_input(file: InputFile, compression: str | None, s3_options: dict | None, content: bytes | None = None):
    """A binary file object; `content`, the file's bytes when they were already fetched, is read from memory."""
    if content is not None:
        return io.BytesIO(content)
    fs = filesystem(file.uri, s3_options)
    path = file.uri.split("://", 1)[1] if is_s3(file.uri) else file.uri
    return fsspec.core.OpenFile(fs, path, mode="rb", compression=compression).open()
