"""k-center greedy (Sener and Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach"):
pick, one at a time, the row farthest (cosine distance) from everything picked so far, so the subset covers the
embedding space. Written here because no pip library ships it for plain arrays; O(budget x rows x dim), so it is
for budgets of thousands to tens of thousands, not millions."""

from __future__ import annotations

import numpy as np


def k_center_greedy(emb: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Indices of `budget` rows of unit vectors `emb`, in the order they were picked (the first one seeded)."""
    return k_center_cover(emb, budget, seed)[0]


def k_center_cover(emb: np.ndarray, budget: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(picked indices in pick order, every row's cosine distance to the nearest picked row: 0 for picked rows, the
    evidence of why an unpicked row was not needed — something picked is that close)."""
    n = emb.shape[0]
    budget = min(budget, n)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64), np.full(n, np.inf, dtype=np.float32)
    x = np.ascontiguousarray(emb, dtype=np.float32)
    picked = np.empty(budget, dtype=np.int64)
    picked[0] = np.random.default_rng(seed).integers(n)
    distance = 1.0 - x @ x[picked[0]]
    distance[picked[0]] = -np.inf
    for i in range(1, budget):
        picked[i] = int(np.argmax(distance))
        np.minimum(distance, 1.0 - x @ x[picked[i]], out=distance)
        distance[picked[i]] = -np.inf
    distance[picked] = 0.0
    return picked, np.maximum(distance, 0.0)
