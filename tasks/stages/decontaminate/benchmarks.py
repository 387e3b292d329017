"""Benchmarks to decontaminate against: the built-ins (schemas/benchmarks.py) and the user's files, loaded into
one row per (item, field). A benchmark that cannot be used is an error naming its file, line and field."""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path

import orjson
import polars as pl

from schemas.benchmarks import BUILTINS
from schemas.config import BenchmarkConfig, DecontaminateConfig
from schemas.errors import BadInput
from tasks.runtime.externals import ExternalInputs, Externals, gather


class BenchmarkError(BadInput):
    """A benchmark that cannot be used; the message names the benchmark, file, line and field."""



def builtin_path(name: str) -> str:
    spec = BUILTINS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BenchmarkError(f"built-in benchmark {name} needs the package {spec.package.replace('_', '-')}, "
                             "which is not installed (it is in requirements.lock)")
    return str(Path(found.submodule_search_locations[0]) / spec.rel)


def resolved_benchmarks(cfg: DecontaminateConfig) -> list[BenchmarkConfig]:
    """Built-ins (with their defaults unless overridden by name) followed by the user's benchmarks."""
    overrides = {b.name: b for b in cfg.benchmarks}
    out = []
    for name in cfg.builtins:
        spec, o = BUILTINS[name], overrides.pop(name, None)
        out.append(BenchmarkConfig(
            name=name, path=(o.path if o else None) or builtin_path(name),
            fields=(o.fields if o and o.fields else list(spec.fields)),
            id_field=(o.id_field if o and o.id_field else spec.id_field),
            released_at=(o.released_at if o and o.released_at else spec.released_at),
            policy=o.policy if o else "drop"))
    for b in overrides.values():
        if b.path is None:
            b = b.model_copy(update={"path": builtin_path(b.name)})
        if not b.fields:
            if b.name not in BUILTINS:
                raise BenchmarkError(f"benchmark {b.name}: say which fields to index (fields = [...])")
            b = b.model_copy(update={"fields": list(BUILTINS[b.name].fields)})
        out.append(b)
    return out


def files(cfg: DecontaminateConfig) -> Externals:
    """The benchmark files a setup reads (the runtime reads them: tasks/runtime/externals.py)."""
    return Externals(files=tuple(b.path for b in resolved_benchmarks(cfg)))


def _read_items(b: BenchmarkConfig, inputs: ExternalInputs | None) -> list[tuple[int, dict]]:
    """(line, record) of a JSONL(.gz) or Parquet benchmark file; a bad line is an error naming file and line."""
    path = b.path
    inputs = inputs if inputs is not None else gather(Externals(files=(path,)))
    try:
        data = inputs.read(path)
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark {b.name}: file {path} does not exist") from None
    if path.endswith(".parquet"):
        try:
            frame = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path} is not a readable Parquet file ({exc})") from None
        return [(i + 1, r) for i, r in enumerate(frame.iter_rows(named=True))]
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path} is not valid gzip ({exc})") from None
    out = []
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path}:{i}: not valid JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise BenchmarkError(f"benchmark {b.name}: {path}:{i}: a record must be a JSON object")
        out.append((i, rec))
    return out


def load_benchmark(b: BenchmarkConfig, inputs: ExternalInputs | None = None) -> pl.DataFrame:
    """One row per (item, field): benchmark, item_id, line, field, text, from the file's bytes as the runtime read
    them (`inputs`; read here when called directly). Every problem names file:line:field."""
    rows = []
    for line, rec in _read_items(b, inputs):
        item_id = str(rec.get(b.id_field)) if b.id_field else f"{b.name}-{line}"
        if b.id_field and rec.get(b.id_field) is None:
            raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: id field {b.id_field!r} is missing")
        for f in b.fields:
            value = rec.get(f)
            if value is None:
                raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: field {f!r} is missing or null "
                                     f"(item {item_id})")
            if not isinstance(value, str):
                raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: field {f!r} is "
                                     f"{type(value).__name__}, not text (item {item_id})")
            rows.append({"benchmark": b.name, "item_id": item_id, "line": line, "field": f, "text": value})
    if not rows:
        raise BenchmarkError(f"benchmark {b.name}: {b.path} has no items")
    return pl.DataFrame(rows, schema={"benchmark": pl.String, "item_id": pl.String, "line": pl.Int64,
                                      "field": pl.String, "text": pl.String})


