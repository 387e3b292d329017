"""What the embeddings decide, in numpy and faiss: k-means, semantic duplicates (SemDeDup), prototypicality, and
the nearest benchmark item of each document (semantic contamination)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl

BLOCK = 2048  # rows of a similarity block: memory stays (BLOCK x cluster size) floats


CHUNK = 65536  # rows converted to float32 at a time: the embeddings stay float16 (as the features hold them)


def float32_chunks(emb: np.ndarray):
    """(start, float32 rows) over `emb` (float16 or float32), CHUNK rows at a time, so no stage of the score stage's
    decide step needs a float32 copy of every embedding (1M x 384: 1.5 GB on top of the float16 768 MB)."""
    for i in range(0, emb.shape[0], CHUNK):
        yield i, np.ascontiguousarray(emb[i:i + CHUNK], dtype=np.float32)


def cluster_count(n: int, configured: int) -> int:
    return max(1, min(n, configured or int(round((n / 4) ** 0.5))))


def kmeans(emb: np.ndarray, k: int, sample: int, seed: int = 1234, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids, nearest centroid of every row): spherical k-means fit on a seeded sample; faiss on the
    CPU, torch on a CUDA device."""
    n, d = emb.shape
    if n == 0:
        return np.zeros((0, d), dtype=np.float32), np.zeros(0, dtype=np.int64)
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        return kmeans_torch(emb, k, sample, device, seed)
    import faiss

    rng = np.random.default_rng(seed)
    fit = emb if n <= sample else emb[np.sort(rng.choice(n, sample, replace=False))]
    km = faiss.Kmeans(d, k, niter=20, nredo=5, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)  # best of 5 restarts: random init gets stuck
    km.train(np.ascontiguousarray(fit, dtype=np.float32))
    centroids = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True).clip(min=1e-12)
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    nearest = np.concatenate([index.search(chunk, 1)[1][:, 0] for _, chunk in float32_chunks(emb)])
    return centroids.astype(np.float32), nearest.astype(np.int64)


def kmeans_torch(emb: np.ndarray, k: int, sample: int, device, seed: int = 1234, iterations: int = 20,
                 restarts: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (Lloyd's from k-means++ seeds, best of `restarts` by total cosine) in torch, for a GPU:
    faiss-gpu is not a pip package. Same contract as `kmeans`; runs on any torch device (tested on the CPU)."""
    import torch

    n = emb.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(emb)).to(device)  # as held (float16 from the features)
    gen = torch.Generator().manual_seed(seed)
    fit = (x if n <= sample else x[torch.randperm(n, generator=gen)[:sample].sort().values.to(device)]).float()
    k = min(k, fit.shape[0])
    best_score, best = -np.inf, None
    for _ in range(restarts):
        centroids = _kmeans_plus_plus(fit, k, gen)
        for _ in range(iterations):
            assign = (fit @ centroids.T).argmax(1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, fit)
            empty = torch.bincount(assign, minlength=k) == 0
            centroids = torch.nn.functional.normalize(torch.where(empty[:, None], centroids, sums), dim=1)
        score = float((fit @ centroids.T).max(1).values.sum())
        if score > best_score:
            best_score, best = score, centroids
    nearest = torch.cat([(x[i:i + CHUNK].float() @ best.T).argmax(1) for i in range(0, n, CHUNK)])
    return best.cpu().numpy(), nearest.cpu().numpy().astype(np.int64)


def _kmeans_plus_plus(fit, k: int, gen):
    """k-means++ seeding (Arthur and Vassilvitskii 2007) under cosine distance: each next seed drawn with
    probability proportional to its squared distance to the nearest seed so far. Random seeds merge clusters."""
    import torch

    n = fit.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    nearest = 1.0 - fit @ fit[chosen[0]]
    for _ in range(1, k):
        weights = nearest.clamp(min=0).double() ** 2
        total = float(weights.sum())
        pick = (int(torch.multinomial((weights / total).cpu(), 1, generator=gen)) if total > 0
                else int(torch.randint(n, (1,), generator=gen)))
        chosen.append(pick)
        nearest = torch.minimum(nearest, 1.0 - fit @ fit[pick])
    return fit[torch.tensor(chosen, device=fit.device)].clone()


def prototypicality(emb: np.ndarray, centroids: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Cosine distance to the nearest centroid (Sorscher et al. 2022): small = prototypical, large = unusual."""
    out = np.zeros(emb.shape[0])
    for i, chunk in float32_chunks(emb):
        out[i:i + chunk.shape[0]] = 1.0 - (chunk * centroids[nearest[i:i + chunk.shape[0]]]).sum(1)
    return np.clip(out, 0.0, 2.0)


def duplicates(emb: np.ndarray, clusters: np.ndarray, priority: np.ndarray, eps: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup: inside each cluster, a document whose cosine to a document of higher priority (smaller
    `priority`) is >= 1 - eps is a duplicate of the most similar such document. Returns (survivor row or -1,
    cosine to it). Deterministic: ties in similarity go to the higher priority."""
    n = emb.shape[0]
    survivor = np.full(n, -1, dtype=np.int64)
    cosine = np.full(n, np.nan)
    order = np.argsort(clusters, kind="stable")
    _, starts = np.unique(clusters[order], return_index=True)
    for members in np.split(order, starts[1:]):
        if members.size < 2:
            continue
        members = members[np.argsort(priority[members], kind="stable")]
        vecs = np.asarray(emb[members], dtype=np.float32)
        for start in range(1, members.size, BLOCK):
            stop = min(members.size, start + BLOCK)
            sims = vecs[start:stop] @ vecs[:stop].T  # rows: later members; columns: every member up to them
            later = np.arange(start, stop)[:, None] <= np.arange(stop)[None, :]
            sims[later] = -np.inf  # only higher-priority members (earlier columns) count
            best = sims.argmax(1)
            top = sims[np.arange(stop - start), best]
            dup = top >= 1.0 - eps
            rows = members[start:stop][dup]
            survivor[rows] = members[best[dup]]
            cosine[rows] = top[dup]
    return survivor, cosine


def nearest_published(emb: np.ndarray, parts, eps: float) -> tuple[np.ndarray, np.ndarray, list, list]:
    """For each row of `emb`, the published row of highest cosine when it is >= 1 - eps: (cosine, found mask, its
    id, its version). `parts` yields index frames (id, version, embedding); rows without an embedding are skipped.
    Exact inner products in blocks, one index part at a time, so memory follows one part."""
    n = emb.shape[0]
    best = np.full(n, -np.inf)
    best_id = np.full(n, None, dtype=object)
    best_version = np.full(n, None, dtype=object)
    vecs = np.asarray(emb, dtype=np.float32)
    for part in parts:
        if "embedding" not in part.columns:
            continue
        part = part.filter(pl.col("embedding").is_not_null())
        if not part.height or not n:
            continue
        pub = part["embedding"].to_numpy().reshape(part.height, -1).astype(np.float32)
        ids = part["id"].to_numpy().astype(object)
        versions = part["version"].to_numpy().astype(object)
        for start in range(0, n, BLOCK):
            sims = vecs[start:start + BLOCK] @ pub.T
            arg = sims.argmax(1)
            top = sims[np.arange(sims.shape[0]), arg]
            better = np.flatnonzero(top > best[start:start + BLOCK])
            rows = start + better
            best[rows] = top[better]
            best_id[rows], best_version[rows] = ids[arg[better]], versions[arg[better]]
    found = best >= 1.0 - eps
    return np.where(found, best, np.nan), found, best_id.tolist(), best_version.tolist()


_SENTENCE = re.compile(r"(?<=[.?!])\s+")
GROUP = 4  # a window is 1 to 4 consecutive sentences: a benchmark item is a few sentences


def chunk_texts(texts: list[str], words: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The windows each text is compared in, the index of the text each came from, and whether the window is the
    whole text (its embedding is the document's own, not computed twice). A text of at most `words` words is one
    window; a longer one gives every run of 1 to 4 consecutive sentences (each at most `words` words), so an item
    quoted inside a long page meets a window that is about exactly the item."""
    out, owner, whole = [], [], []
    for i, text in enumerate(texts):
        if len(text.split()) <= words:
            out.append(text)
            owner.append(i)
            whole.append(len(out) - 1)
            continue
        sentences = [s for s in _SENTENCE.split(text) if s.strip()]
        sizes = [len(s.split()) for s in sentences]
        for start in range(len(sentences)):
            total = 0
            for k in range(GROUP):
                if start + k >= len(sentences):
                    break
                total += sizes[start + k]
                if total > words and k:
                    break
                out.append(" ".join(sentences[start:start + k + 1]))
                owner.append(i)
    is_whole = np.zeros(len(out), dtype=bool)
    is_whole[whole] = True
    return out, np.asarray(owner, dtype=np.int64), is_whole


def nearest_items(chunk_emb: np.ndarray, owner: np.ndarray, n_docs: int, items: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(nearest item row, cosine) per document: the best over its windows (faiss inner product on unit vectors)."""
    import faiss

    best_item = np.full(n_docs, -1, dtype=np.int64)
    best_cos = np.full(n_docs, -1.0)
    if items.shape[0] == 0 or chunk_emb.shape[0] == 0:
        return best_item, best_cos
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(chunk_emb, dtype=np.float32), 1)
    sims, idx = sims[:, 0].astype(np.float64), idx[:, 0]
    order = np.lexsort((-sims, owner))  # per document, its best window first
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    docs = owner[order][first]
    best_item[docs], best_cos[docs] = idx[order][first], sims[order][first]
    return best_item, best_cos
