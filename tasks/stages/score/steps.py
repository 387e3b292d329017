"""The score stage as partitioned steps (tasks/runtime/plan.py): embeddings stay in their side shards, no step holds
every embedding.

  embed      map      the models on the shard: embeddings (side shards `score/embeddings/`), perplexity, nearest
                      benchmark item, novelty; a hash-chosen sample of embeddings  -> shuffle `fit-sample` (1 part)
  fit        combine  k-means centroids on the sample (at most `semdedup.sample` rows, as before); the quality
                      head trained on the reference set against sampled documents  -> global `centroids`, `head`
  assign     map      each shard's rows to their nearest centroid: prototypicality, quality; the rows of each
                      cluster                                                       -> shuffle `clusters` by cluster
  semdedup   reduce   per cluster partition: SemDeDup inside each cluster, then the survivors against the
                      published embeddings, one index part at a time                -> route `semantic`
  dynamics   combine  labeled rows' embeddings streamed shard by shard into a memory-mapped file (disk, not RAM),
                      the proxy classifier's training dynamics and label noise      -> route `dynamics`
  apply               the shard's rows with their scores and decisions
"""

from __future__ import annotations

import tempfile

import numpy as np
import polars as pl

from schemas.config import ScoreParams
from tasks.models import batching, classifiers, kmeans, loading, sampling
from tasks.runtime.plan import PART, SHARD, CombineStep, MapStep, Plan, ReduceStep, Shuffle, StepInputs, partition
from tasks.stages.score import classifier, semantic


def _emb(frame: pl.DataFrame) -> np.ndarray:
    return (frame["embedding"].to_numpy().reshape(frame.height, -1) if frame.height
            else np.zeros((0, 1), dtype=np.float16))


def embed(batch: pl.DataFrame, inputs: StepInputs, params: ScoreParams, loaded) -> dict:
    from tasks.stages.score import features

    feats = features(batch, params, loaded)
    cfg = params.score
    want = max(cfg.semdedup.sample, cfg.negatives)
    fraction = min(1.0, want / max(inputs.rows * cfg.sample, 1))
    chosen = feats.filter(sampling.chosen(pl.col("id"), fraction, "score.fit"))  # fits the centroids and the head
    return {"side:embeddings": feats,
            "fit-sample": chosen.select("id", "embedding").with_columns(pl.lit(0, pl.Int32).alias(PART))}


def fit(inputs: StepInputs, params: ScoreParams, loaded) -> dict:
    cfg = params.score
    frames = list(inputs.stream("fit-sample"))  # none when `score.sample` picked no row of any shard
    sample = pl.concat(frames, how="vertical") if frames else pl.DataFrame()
    if sample.height == 0:
        return {}
    sample = sample.sort("id")
    emb = _emb(sample)
    finite = np.isfinite(emb).all(axis=1)
    emb = emb[finite]
    out: dict = {}
    if emb.shape[0]:
        k = kmeans.cluster_count(max(1, round(inputs.rows * cfg.sample)), cfg.prototype_clusters
                                   or cfg.semdedup.clusters)
        k = min(k, emb.shape[0])
        centroids, _ = kmeans.fit(emb, k, cfg.semdedup.sample, device=getattr(loaded, "device", None))
        out["global:centroids"] = pl.DataFrame({"centroid": pl.Series(centroids.astype(np.float32),
                                                                      dtype=pl.Array(pl.Float32, emb.shape[1]))})
    if loaded is not None and cfg.quality_head and loaded.head is None and loaded.reference_vectors.shape[0] \
            and emb.shape[0] and finite.all():
        rng = np.random.default_rng(7)
        negatives = emb[rng.choice(emb.shape[0], min(cfg.negatives, emb.shape[0]), replace=False)]
        w, b = classifiers.train_head(loaded.reference_vectors, negatives.astype(np.float32))
        out["global:head"] = pl.DataFrame({"w": [w.astype(np.float64).tolist()], "b": [float(b)]})
        out["artifact:quality_head.safetensors"] = classifier.head_bytes(w, b)
    return out


def _head(inputs: StepInputs, loaded) -> tuple[np.ndarray, float] | None:
    if loaded is not None and loaded.head is not None:
        return loaded.head
    head = inputs.globals.get("head")
    if head is None or head.height == 0:
        return None
    return np.asarray(head["w"][0].to_list(), dtype=np.float32), float(head["b"][0])


def assign(batch: pl.DataFrame, inputs: StepInputs, params: ScoreParams, loaded) -> dict:
    """Nearest centroid, prototypicality and quality of this shard's scored rows (from its side shard)."""
    cfg = params.score
    feats = inputs.own_side("embeddings")
    emb = _emb(feats)
    finite = np.isfinite(emb).all(axis=1) if feats.height else np.ones(0, dtype=bool)
    if not finite.all():  # a broken model: zeroed to be placed, its prototypicality NaN (the contract fails)
        emb = np.where(finite[:, None], emb, 0).astype(emb.dtype)
    cents = inputs.globals.get("centroids")
    if cents is not None and cents.height and feats.height:
        centroids = cents["centroid"].to_numpy().reshape(cents.height, -1).astype(np.float32)
        nearest = np.concatenate([(chunk @ centroids.T).argmax(1) for _, chunk in batching.float32_chunks(emb)])
        proto = np.where(finite, semantic.prototypicality(emb, centroids, nearest), np.nan)
    else:
        nearest, proto = np.zeros(feats.height, dtype=np.int64), np.full(feats.height, np.nan)
    head = _head(inputs, loaded) if finite.all() else None
    quality = classifier.quality(emb, *head) if head is not None else np.full(feats.height, np.nan)
    scores = feats.select("id", "score_nll", "score_bits_per_char", "score_contam_item", "score_contam_cosine",
                          "score_contam_abstract", "score_contam_question", "score_contam_overlap", "contam_window",
                          "score_novelty").with_columns(
        score_quality=pl.Series(quality, dtype=pl.Float64).fill_nan(None),
        score_prototypicality=pl.Series(proto, dtype=pl.Float64),
        score_semantic_cluster=pl.Series(nearest, dtype=pl.Int64),
        contaminated=feats["score_contam_hit"],
        score_scored=pl.lit(True), **{SHARD: pl.lit(inputs.unit)})
    out = {"assigned": scores}
    if cfg.semdedup.enabled and feats.height:
        out["clusters"] = feats.select("id", "timestamp", "length", "embedding").with_columns(
            cluster=pl.Series(nearest, dtype=pl.Int64)).with_columns(
            partition(pl.col("cluster"), inputs.count("clusters")))
    return out


def _priority(rows: pl.DataFrame, rule: str) -> np.ndarray:
    """Rank of every row under the survivor rule (0 = survives first); ties always broken by id."""
    keys = {"earliest": (["timestamp", "id"], [False, False]), "longest": (["length", "id"], [True, False]),
            "id": (["id"], [False])}[rule]
    ranked = rows.with_row_index("_r").sort(keys[0], descending=keys[1], nulls_last=True).with_row_index("_rank")
    return ranked.sort("_r")["_rank"].to_numpy()


def semdedup(rows: pl.DataFrame, inputs: StepInputs, params: ScoreParams) -> dict:
    """SemDeDup inside each cluster of this partition; the survivors against the published embeddings (appending)."""
    from tasks.stages.score import embedder_identity

    cfg = params.score
    rows = rows.sort("cluster", "id")
    emb = _emb(rows)
    survivor, cosine = semantic.duplicates(emb, rows["cluster"].to_numpy(), _priority(rows, cfg.semdedup.survivor),
                                           cfg.semdedup.eps,  # on CUDA the similarity blocks run there
                                           loading.cuda_or_none(getattr(inputs.loaded, "device", None)))
    pub_id = np.full(rows.height, None, dtype=object)
    pub_version = np.full(rows.height, None, dtype=object)
    published = inputs.published
    if published is not None and published.parts and (published.format or {}).get("embedder") == \
            embedder_identity(cfg):
        alive = np.flatnonzero(survivor < 0)
        pub_cos, found, ids, versions = semantic.nearest_published(emb[alive], published.read_parts(),
                                                                   cfg.semdedup.eps)
        hit = alive[found]
        cosine[hit] = pub_cos[found]
        pub_id[hit] = np.asarray(ids, dtype=object)[found]
        pub_version[hit] = np.asarray(versions, dtype=object)[found]
    ids = rows["id"]
    dup = survivor >= 0
    decided = dup | (pub_id != None)  # noqa: E711 (numpy elementwise)
    out = rows.select("id", SHARD).with_columns(
        dup_survivor=pl.when(pl.Series(dup)).then(ids.gather(np.maximum(survivor, 0))).otherwise(None),
        dup_cosine=pl.Series(cosine).fill_nan(None),
        dup_published_id=pl.Series(pub_id.tolist(), dtype=pl.String),
        dup_published_version=pl.Series(pub_version.tolist(), dtype=pl.Int32))
    return {"semantic": out.filter(pl.Series(decided))}


def dynamics_step(inputs: StepInputs, params: ScoreParams, loaded) -> dict:
    """Training dynamics over the labeled rows: their embeddings are streamed, side shard by side shard, into a
    memory-mapped float16 file (disk, not RAM), which the proxy classifier reads in minibatches. Memory: a few
    numbers per labeled row (ids, labels, the statistics), never a matrix of the corpus."""
    cfg = params.score
    if not cfg.dynamics.enabled:
        return {}
    keys: list[pl.DataFrame] = []
    dim = 0
    for shard, feats in inputs.side("embeddings"):
        labeled = feats.filter(pl.col("label").is_not_null())
        if labeled.height:
            keys.append(labeled.select("id", "label", **{SHARD: pl.lit(shard)}))
            dim = labeled["embedding"].dtype.size
    if not keys:
        return {}
    rows = pl.concat(keys)
    names = sorted(rows["label"].unique().to_list())
    if len(names) < 2:
        return {}
    with tempfile.TemporaryDirectory(prefix="sluice-dynamics-") as tmp:
        emb = np.lib.format.open_memmap(f"{tmp}/embeddings.npy", mode="w+", dtype=np.float16,
                                        shape=(rows.height, dim))
        at = 0
        for _, feats in inputs.side("embeddings"):
            labeled = feats.filter(pl.col("label").is_not_null())
            emb[at:at + labeled.height] = _emb(labeled)
            at += labeled.height
        emb.flush()
        y = rows["label"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64)
        device = loaded.device if loaded is not None else None
        if device is None:
            device = loading.device("cpu")
        dyn = classifiers.training_dynamics(emb, y, len(names), cfg.dynamics, device)
        issue, quality, pred = classifiers.label_issues(y, dyn, cfg.dynamics.filter_by)
        del emb
    out = rows.select("id", SHARD).with_columns(
        score_el2n=pl.Series(dyn.el2n), score_grand=pl.Series(dyn.grand), score_forgetting=pl.Series(dyn.forgetting),
        score_aum=pl.Series(dyn.aum), score_epochs_to_learn=pl.Series(dyn.epochs_to_learn, dtype=pl.Float64),
        score_label_quality=pl.Series(quality, dtype=pl.Float64),
        score_label_pred=pl.Series(np.array(names, dtype=object)[pred].tolist(), dtype=pl.String),
        label_issue=pl.Series(issue, dtype=pl.Boolean))
    return {"dynamics": out}


def active(params: ScoreParams, published) -> set[str]:
    steps = {"embed", "fit", "assign", "dynamics"}
    if params.score.semdedup.enabled:
        steps.add("semdedup")
    return steps


def plan(apply) -> Plan:
    return Plan(
        steps=(MapStep("embed", embed, loads=True), CombineStep("fit", fit, loads=True),
               MapStep("assign", assign, loads=True), ReduceStep("semdedup", "clusters", semdedup),
               CombineStep("dynamics", dynamics_step, loads=True)),
        shuffles=(Shuffle("fit-sample", 400, "id", partitions=1), Shuffle("clusters", 900, "cluster")),
        apply=apply, apply_reads=("assigned", "semantic", "dynamics"), active=active, against_published=True)

