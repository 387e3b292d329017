"""The quality classifier: a logistic head on embeddings, trained on a reference set of good documents against a
random sample of the input (as DCLM and FineWeb-Edu do with their classifiers), saved as safetensors with the run
and reusable by path. Also the reference set itself, and novelty against it."""

from __future__ import annotations

import io
import re

import numpy as np

from tasks.runtime.stage import StageInputError
from tasks.stages.score.semantic import float32_chunks

BUILTIN_REFERENCE = "builtin:python-docs"


def reference_texts(spec: str, min_words: int = 30) -> list[str]:
    """Good documents: `builtin:python-docs` (the paragraphs of the Python documentation topics that ship with
    CPython in `pydoc_data`, so it works offline), or a local/S3 JSONL or Parquet file with a `text` field."""
    if spec == BUILTIN_REFERENCE:
        from pydoc_data.topics import topics

        paragraphs = [p.strip() for body in topics.values() for p in re.split(r"\n\s*\n", body)]
        return [" ".join(p.split()) for p in paragraphs if len(p.split()) >= min_words]
    import fsspec
    import polars as pl

    with fsspec.open(spec, "rb") as fh:
        data = fh.read()
    frame = pl.read_parquet(io.BytesIO(data)) if spec.endswith(".parquet") else pl.read_ndjson(io.BytesIO(data))
    if "text" not in frame.columns:
        raise StageInputError(f"reference set {spec} has no `text` field")
    return [t for t in frame["text"].drop_nulls().to_list() if t.strip()]


def train_head(good: np.ndarray, other: np.ndarray, steps: int = 200, l2: float = 1e-3, seed: int = 0
               ) -> tuple[np.ndarray, float]:
    """Logistic regression, good = 1 vs other = 0, classes weighted equally, full-batch L-BFGS in torch."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.concatenate([good, other]).astype(np.float32))
    y = torch.cat([torch.ones(len(good)), torch.zeros(len(other))])
    weight = torch.where(y == 1, 0.5 / max(len(good), 1), 0.5 / max(len(other), 1))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight).sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float32), float(b.detach()[0])


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
