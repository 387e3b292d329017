"""What the embeddings decide, in numpy and faiss: semantic duplicates (SemDeDup), prototypicality, and the windows
documents are compared with benchmark items in (semantic contamination: contamination.py). k-means is in
tasks/models/kmeans.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tasks.models.batching import float32_chunks

BLOCK = 2048  # rows of a similarity block: memory stays (BLOCK x cluster size) floats


def prototypicality(emb: np.ndarray, centroids: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Cosine distance to the nearest centroid (Sorscher et al. 2022): small = prototypical, large = unusual."""
    out = np.zeros(emb.shape[0])
    for i, chunk in float32_chunks(emb):
        out[i:i + chunk.shape[0]] = 1.0 - (chunk * centroids[nearest[i:i + chunk.shape[0]]]).sum(1)
    return np.clip(out, 0.0, 2.0)


def duplicates(emb: np.ndarray, clusters: np.ndarray, priority: np.ndarray, eps: float, device=None
               ) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup: inside each cluster, a document whose cosine to a document of higher priority (smaller
    `priority`) is >= 1 - eps is a duplicate of the most similar such document. Returns (survivor row or -1,
    cosine to it). Deterministic: ties in similarity go to the higher priority. The similarity blocks are numpy
    matrix products, or torch ones on `device` (a cluster's vectors moved there once)."""
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
        best_earlier = _on_device(vecs, device) if device is not None else _on_host(vecs)
        for start in range(1, members.size, BLOCK):
            stop = min(members.size, start + BLOCK)
            top, best = best_earlier(start, stop)
            dup = top >= 1.0 - eps
            rows = members[start:stop][dup]
            survivor[rows] = members[best[dup]]
            cosine[rows] = top[dup]
    return survivor, cosine


def _on_host(vecs: np.ndarray):
    """(start, stop) -> for members start..stop-1, the cosine to and the position of the most similar earlier
    member (higher priority)."""

    def best_earlier(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        sims = vecs[start:stop] @ vecs[:stop].T  # rows: later members; columns: every member up to them
        later = np.arange(start, stop)[:, None] <= np.arange(stop)[None, :]
        sims[later] = -np.inf  # only higher-priority members (earlier columns) count
        best = sims.argmax(1)
        return sims[np.arange(stop - start), best], best

    return best_earlier


def _on_device(vecs: np.ndarray, device):
    """`_on_host` in torch on `device`; only the block's best cosines and positions come back."""
    import torch

    x = torch.from_numpy(vecs).to(device)

    def best_earlier(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        sims = x[start:stop] @ x[:stop].T
        later = torch.arange(start, stop, device=device)[:, None] <= torch.arange(stop, device=device)[None, :]
        top, best = sims.masked_fill(later, -torch.inf).max(1)
        return top.double().cpu().numpy(), best.cpu().numpy()

    return best_earlier


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
        part = part.filter(part["embedding"].is_not_null())
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


@dataclass(frozen=True)
class Windows:
    """The windows documents are compared in: each window's text, the document it belongs to and whether it is the
    whole document (its embedding is the document's own); for the others, the run of sentences it is (`first`,
    `count` into `sentences`), so a window's embedding can be pooled from its sentences' embeddings."""

    documents: list[str]  # the texts chunked (not copied): a window's text is made when asked for
    owner: np.ndarray
    whole: np.ndarray
    first: np.ndarray
    count: np.ndarray
    sentences: list[str]
    sentence_words: np.ndarray
    sentence_owner: np.ndarray  # the document each sentence is of

    def __len__(self) -> int:
        return self.owner.size

    def text(self, window: int) -> str:
        """The window's text: its document, or its sentences joined (a 40,000-page shard has a million windows,
        and only the few candidates' texts are ever read)."""
        if self.whole[window]:
            return self.documents[self.owner[window]]
        return " ".join(self.sentences[self.first[window]:self.first[window] + self.count[window]])


def chunk_texts(texts: list[str], words: int) -> Windows:
    """A text of at most `words` words is one window; a longer one gives every run of 1 to 4 consecutive sentences
    (each at most `words` words), so an item quoted inside a long page meets a window that is about exactly the
    item."""
    owner, whole, first, count, sentences, sizes, sentence_owner = [], [], [], [], [], [], []
    for i, text in enumerate(texts):
        if len(text.split()) <= words:
            owner.append(i)
            whole.append(True)
            first.append(-1)
            count.append(0)
            continue
        mine = [s for s in _SENTENCE.split(text) if s.strip()]
        base = len(sentences)
        sentences += mine
        sentence_owner += [i] * len(mine)
        mine_sizes = [len(s.split()) for s in mine]
        sizes += mine_sizes
        for start in range(len(mine)):
            total = 0
            for k in range(GROUP):
                if start + k >= len(mine):
                    break
                total += mine_sizes[start + k]
                if total > words and k:
                    break
                owner.append(i)
                whole.append(False)
                first.append(base + start)
                count.append(k + 1)
    return Windows(texts, np.asarray(owner, dtype=np.int64), np.asarray(whole, dtype=bool),
                   np.asarray(first, dtype=np.int64), np.asarray(count, dtype=np.int64), sentences,
                   np.asarray(sizes, dtype=np.float32), np.asarray(sentence_owner, dtype=np.int64))


def sentences_of(windows: Windows, chosen: np.ndarray) -> np.ndarray:
    """Per sentence: whether it is in one of the chosen windows."""
    change = np.zeros(len(windows.sentences) + 1, dtype=np.int64)
    np.add.at(change, windows.first[chosen], 1)
    np.add.at(change, windows.first[chosen] + windows.count[chosen], -1)
    return np.cumsum(change[:-1]) > 0


def pooled(windows: Windows, sentence_emb: np.ndarray, runs: np.ndarray, embedded: np.ndarray | None = None
           ) -> np.ndarray:
    """The embeddings of the sentence-run windows `runs` (indices into `windows`), pooled from their sentences'
    embeddings: their mean weighted by words, normalized. Each sentence is embedded once, not once per window it is
    in, and only the windows asked for are pooled (a long page's others are never candidates). `sentence_emb` holds
    the sentences `embedded` (sorted indices; default: every sentence), which must cover every run asked for."""
    out = np.zeros((runs.size, sentence_emb.shape[1]), dtype=np.float32)
    if not runs.size:
        return out
    embedded = np.arange(len(windows.sentences)) if embedded is None else embedded
    weighted = sentence_emb.astype(np.float32) * windows.sentence_words[embedded][:, None]
    prefix = np.vstack([np.zeros((1, weighted.shape[1]), dtype=np.float32), np.cumsum(weighted, axis=0)])
    start = np.searchsorted(embedded, windows.first[runs])  # a run's sentences are consecutive among the embedded
    stop = start + windows.count[runs]
    out[:] = prefix[stop] - prefix[start]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
