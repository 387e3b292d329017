"""The quality classifier: a logistic head on embeddings, trained on a reference set of good documents against a
random sample of the input (as DCLM and FineWeb-Edu do with their classifiers), saved as safetensors with the run
and reusable by path. Also the reference set itself, and novelty against it."""

from __future__ import annotations

import io
import re

import numpy as np

from tasks.models.batching import float32_chunks
from tasks.runtime.externals import ExternalInputs, Externals, gather
from tasks.runtime.stage import StageInputError

BUILTIN_REFERENCE = "builtin:python-docs"


def reference_texts(spec: str, min_words: int = 30, inputs: ExternalInputs | None = None) -> list[str]:
    """Good documents: `builtin:python-docs` (the paragraphs of the Python documentation topics that ship with
    CPython in `pydoc_data`, so it works offline), or a local/S3 JSONL or Parquet file with a `text` field, read by
    the runtime (`inputs`; read here when called directly)."""
    if spec == BUILTIN_REFERENCE:
        from pydoc_data.topics import topics

        paragraphs = [p.strip() for body in topics.values() for p in re.split(r"\n\s*\n", body)]
        return [" ".join(p.split()) for p in paragraphs if len(p.split()) >= min_words]
    import polars as pl

    inputs = inputs if inputs is not None else gather(Externals(files=(spec,)))
    try:
        data = inputs.read(spec)
    except FileNotFoundError:
        raise StageInputError(f"score.reference: the reference set {spec} does not exist") from None
    frame = pl.read_parquet(io.BytesIO(data)) if spec.endswith(".parquet") else pl.read_ndjson(io.BytesIO(data))
    if "text" not in frame.columns:
        raise StageInputError(f"reference set {spec} has no `text` field")
    return [t for t in frame["text"].drop_nulls().to_list() if t.strip()]


def head_bytes(w: np.ndarray, b: float) -> bytes:
    import safetensors.numpy

    return safetensors.numpy.save({"weight": w.astype(np.float32), "bias": np.array([b], dtype=np.float32)})


def load_head(path: str) -> tuple[np.ndarray, float]:
    """A head saved by a run (`runs/<id>/score/quality_head.safetensors`): safetensors, never pickle."""
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(path)
    return tensors["weight"], float(tensors["bias"][0])


def quality(emb: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    logits = np.concatenate([chunk @ w for _, chunk in float32_chunks(emb)]) if emb.shape[0] else np.zeros(0)
    return (1.0 / (1.0 + np.exp(-(logits + b)))).astype(np.float64)


def novelty(emb: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance to the k nearest reference documents: large = unlike anything in the reference."""
    import faiss

    if reference.shape[0] == 0 or emb.shape[0] == 0:
        return np.full(emb.shape[0], np.nan)
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(emb, dtype=np.float32), min(k, reference.shape[0]))
    return np.clip(1.0 - sims.mean(1), 0.0, 2.0).astype(np.float64)
