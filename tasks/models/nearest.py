"""Exact nearest neighbours of unit vectors by inner product: faiss on the CPU, torch matrix products and top-k on
a CUDA device (the same k best, in the same order, up to float rounding). Used for the nearest benchmark items of
the score stage's contamination check."""

from __future__ import annotations

import numpy as np

QUERY_BLOCK = 65_536  # queries per product on a device: 65,536 x 10,000 items is 2.6 GB of float32


def top_k(queries: np.ndarray, items: np.ndarray, k: int, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, item rows), k per query, best first: exact inner products of unit vectors, by faiss on the CPU or
    by torch matrix products and top-k on `device`, QUERY_BLOCK queries at a time."""
    queries, items = (np.ascontiguousarray(a, dtype=np.float32) for a in (queries, items))
    if device is None:
        import faiss

        index = faiss.IndexFlatIP(items.shape[1])
        index.add(items)
        return index.search(queries, k)
    import torch

    table = torch.from_numpy(items).to(device)
    sims, idx = [], []
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        block = torch.from_numpy(queries[start:start + QUERY_BLOCK]).to(device)
        top = torch.topk(block @ table.T, k, dim=1)
        sims.append(top.values.cpu().numpy())
        idx.append(top.indices.cpu().numpy())
    return np.concatenate(sims), np.concatenate(idx)
