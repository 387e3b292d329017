"""One storage abstraction over fsspec URIs (a local path or s3://bucket/prefix).

The commit protocol needs three primitives that behave the same on a laptop and on S3:
atomic whole-object writes (local: temp file + rename; S3: a PUT is atomic), exclusive create
(local: O_EXCL; S3: conditional PUT with If-None-Match), and listing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import orjson
import polars as pl

from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.manifests import DataObject, Record, parse, render


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


CREDENTIALS_IN_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]*)@")


def redact_uri(uri: str) -> str:
    """The URI with any `user:password@` replaced, for messages and logs."""
    return CREDENTIALS_IN_URI.sub(r"\1***@", uri)


class CredentialsInUri(BadInput):
    """A URI carrying credentials (`s3://key:secret@bucket/...`): refused before anything logs it or sends it to
    Prefect (flow parameters, logs and events are stored in the server's database)."""


def check_uri(uri: str, what: str = "URI") -> str:
    if CREDENTIALS_IN_URI.match(uri):
        raise CredentialsInUri(f"{what} {redact_uri(uri)} carries credentials: they would be logged and stored with "
                               "the run; give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or as references in "
                               "[storage] (env:VAR, prefect-secret:BLOCK)")
    return uri


def filesystem(uri: str, s3_options: dict | None = None) -> fsspec.AbstractFileSystem:
    if is_s3(uri):
        options = dict(s3_options or {})
        retries = options.pop("retries", None)
        if retries is not None:  # botocore's own attempts, and s3fs's retry loop around each call
            options["config_kwargs"] = {**options.get("config_kwargs", {}),
                                        "retries": {"max_attempts": retries + 1, "mode": "standard"}}
        fs = fsspec.filesystem("s3", **options)
        if retries is not None:
            fs.retries = max(1, retries)
        return fs
    return fsspec.filesystem("file")



def _synced_temp(path: str, data: bytes) -> str:
    """`data` in a new temporary file beside `path`, on disk (fsync) before it is renamed or linked into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp

class StorageError(RuntimeError):
    """Storage failed (unwritable output, an unreachable endpoint, a missing bucket); the message names the
    operation, the URI and the cause in one line. The CLI exits with code 5."""

    def __init__(self, verb: str, uri: str, cause: BaseException):
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        self.uri, self.cause = uri, cause
        super().__init__(f"cannot {verb} {uri}: {type(cause).__name__}{': ' + detail if detail else ''}")


@contextmanager
def _io(verb: str, uri: str, missing_ok: bool = False) -> Iterator[None]:
    """Turn any failure of a storage call into a StorageError naming what and where (a missing object stays
    FileNotFoundError where the caller asks about existence)."""
    try:
        yield
    except FileNotFoundError:
        if missing_ok:
            raise
        raise StorageError(verb, uri, FileNotFoundError("no such file, folder or bucket")) from None
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(verb, uri, exc) from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Storage:
    """A root URI plus the operations the commit protocol needs; paths passed in are relative to the root."""

    def __init__(self, root: str, s3_options: dict | None = None):
        check_uri(root, "output")
        self.remote = is_s3(root)
        if self.remote:
            self.root = root.rstrip("/")
        else:
            self.root = str(Path(root).expanduser().resolve())
        self.fs = filesystem(root, s3_options)
        self._s3_options = s3_options

    def child(self, rel: str) -> Storage:
        """A storage rooted at `rel` under this one, with the same connection settings."""
        return Storage(self.uri(rel), self._s3_options)

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, rel: str) -> str:
        uri = self.uri(rel)
        return uri.split("://", 1)[1] if self.remote else uri

    def exists(self, rel: str) -> bool:
        with _io("check", self.uri(rel)):
            return self.fs.exists(self._path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with _io("read", self.uri(rel), missing_ok=True):
            return self.fs.cat_file(self._path(rel))

    def read_json(self, rel: str) -> dict:
        return orjson.loads(self.read_bytes(rel))

    def read_json_if_exists(self, rel: str) -> dict | None:
        try:
            return self.read_json(rel)
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic replace: readers see the old object or the new one, never a prefix."""
        with _io("write", self.uri(rel)):
            self._write_bytes(rel, data)

    def _write_bytes(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        os.replace(_synced_temp(path, data), path)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes(rel, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` only if it does not exist yet; returns False when someone else already has."""
        with _io("create", self.uri(rel)):
            return self._create_exclusive(rel, data)

    def _create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self._path(rel)
        if self.remote:
            bucket, key = path.split("/", 1)
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except FileExistsError:
                return False
            except OSError as exc:  # s3fs maps 412/409 to OSError subclasses depending on version
                if "pre-condition" in str(exc).lower() or "conflict" in str(exc).lower():
                    return False
                raise
            self.fs.invalidate_cache(path)
            # read back: an S3-compatible store that ignores If-None-Match lets a racer overwrite us; losing
            # here is better than two writers both believing they own the object
            return self.fs.cat_file(path) == data
        tmp = _synced_temp(path, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: readers never see a half-written claim
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def read_record(self, model: type[Record], rel: str) -> Record:
        """A manifest or receipt (tasks/io/manifests.py), in either format."""
        return parse(model, self.read_bytes(rel), self.root)

    def read_record_if_exists(self, model: type[Record], rel: str) -> Record | None:
        try:
            return self.read_record(model, rel)
        except FileNotFoundError:
            return None

    def write_record(self, rel: str, record: Record) -> None:
        self.write_bytes(rel, render(record))

    def write_parquet(self, rel: str, df: pl.DataFrame) -> DataObject:
        """Serialize in memory so the sha256 is of exactly the bytes stored (and the write stays atomic)."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return DataObject(path=rel, rows=df.height, sha256=sha256_bytes(data), bytes=len(data))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def parquet_schema(self, rel: str) -> dict[str, str]:
        """column -> Arrow type name of a Parquet file, from its footer."""
        import pyarrow.parquet as pq

        with _io("read", self.uri(rel)), self.fs.open(self._path(rel), "rb") as fh:
            return {field.name: str(field.type) for field in pq.ParquetFile(fh).schema_arrow}

    def parquet_empty(self, rel: str) -> pl.DataFrame:
        """A zero-row frame with a Parquet file's schema, from its footer (what an append must match)."""
        import pyarrow.parquet as pq

        with _io("read", self.uri(rel)), self.fs.open(self._path(rel), "rb") as fh:
            return pl.from_arrow(pq.ParquetFile(fh).schema_arrow.empty_table())

    def null_only_columns(self, rels: list[str]) -> list[str]:
        """Columns that hold no value in any of these Parquet files, read from their footers' statistics (no data
        is read). A column without statistics counts as filled."""
        import pyarrow.parquet as pq

        filled: set[str] = set()
        names: list[str] = []
        for rel in rels:
            with _io("read", self.uri(rel)), self.fs.open(self._path(rel), "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            names = names or [meta.schema.column(i).name for i in range(meta.num_columns)]
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                for i in range(group.num_columns):
                    col = group.column(i)
                    stats = col.statistics
                    if stats is None or not stats.has_null_count or stats.null_count < group.num_rows:
                        filled.add(col.path_in_schema.split(".")[0])
        return [n for n in names if n not in filled] if rels else []

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) directly under `rel`; empty when it does not exist."""
        path = self._path(rel)
        try:
            with _io("list", self.uri(rel), missing_ok=True):
                entries = (self.fs.ls(path, detail=False, refresh=True) if self.remote
                           else self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def delete(self, rel: str) -> None:
        path = self._path(rel)
        with _io("delete", self.uri(rel)):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def rel_of(self, uri: str) -> str:
        """The path under the root of a URI (format-1 records held absolute URIs; see layout.relative_to_root)."""
        return layout.relative_to_root(uri, self.root)
