"""Spherical k-means with one seeding for every device, so a CPU run and a CUDA run form the same clusters.

Before, the CPU ran faiss from random seeds (best of 5 restarts) and a CUDA device ran torch from k-means++ seeds:
two runs of the same data could cluster differently by where they ran. Now the sample, the k-means++ seeds and the
number of Lloyd iterations are chosen here, on the CPU, from one numpy generator; the Lloyd iterations then run in
torch, the same code on the CPU and on a CUDA device: assign each row to the centroid of largest cosine, move each
centroid to the normalized mean of its rows. (faiss, used before on the CPU, splits the largest cluster when one
empties where torch keeps it, and faiss-gpu is not a pip package.) k-means++ seeds (Arthur and Vassilvitskii
2007) are drawn from a pool of at most `SEED_POOL` rows per cluster, so seeding costs k passes over that pool
rather than over the whole sample.
"""

from __future__ import annotations

import numpy as np

SEED_POOL = 64  # rows per cluster that k-means++ draws its seeds from
CHUNK = 65536  # rows assigned at a time: no float32 copy of every embedding


def cluster_count(n: int, configured: int) -> int:
    """`configured`, or about sqrt(n / 4) clusters when it is 0 (SemDeDup's and the prototypes' default)."""
    return max(1, min(n, configured or int(round((n / 4) ** 0.5))))


def fit(emb: np.ndarray, k: int, sample: int, seed: int = 1234, device=None, iterations: int = 20
        ) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids, nearest centroid of every row of `emb`): fit on a seeded sample of at most `sample` rows,
    every row assigned. `emb` may be float16 (as the score stage's features hold it)."""
    n, d = emb.shape
    if n == 0:
        return np.zeros((0, d), dtype=np.float32), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if n <= sample else np.sort(rng.choice(n, sample, replace=False))
    train = np.ascontiguousarray(emb[rows], dtype=np.float32)
    init = plus_plus(train, min(k, train.shape[0]), rng)
    centroids = lloyd(train, init, iterations, device if device is not None else "cpu")
    return centroids, assign(emb, centroids)


def plus_plus(train: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds under cosine distance: each next seed drawn with probability proportional to its squared
    distance to the nearest seed so far (random seeds merge clusters and leave others split)."""
    n = train.shape[0]
    pool = train if n <= SEED_POOL * k else train[np.sort(rng.choice(n, SEED_POOL * k, replace=False))]
    chosen = [int(rng.integers(pool.shape[0]))]
    nearest = 1.0 - pool @ pool[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(nearest, 0.0, None).astype(np.float64) ** 2
        total = weights.sum()
        pick = int(rng.choice(pool.shape[0], p=weights / total)) if total > 0 else int(rng.integers(pool.shape[0]))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - pool @ pool[pick])
    return pool[chosen].copy()


def lloyd(train: np.ndarray, init: np.ndarray, iterations: int, device) -> np.ndarray:
    """Lloyd's iterations in torch, the same code on a CPU and on a CUDA device (a cluster that empties keeps its
    centroid)."""
    import torch

    x = torch.from_numpy(train).to(device)
    centroids = torch.from_numpy(np.ascontiguousarray(init, dtype=np.float32)).to(device)
    k = centroids.shape[0]
    for _ in range(iterations):
        nearest = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, x)
        empty = torch.bincount(nearest, minlength=k) == 0
        centroids = torch.nn.functional.normalize(torch.where(empty[:, None], centroids, sums), dim=1)
    return _unit(centroids.cpu().numpy())


def assign(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (largest cosine) of every row, CHUNK rows at a time."""
    return np.concatenate([(np.asarray(emb[i:i + CHUNK], dtype=np.float32) @ centroids.T).argmax(1)
                           for i in range(0, emb.shape[0], CHUNK)]).astype(np.int64)


def _unit(centroids: np.ndarray) -> np.ndarray:
    return (centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)
