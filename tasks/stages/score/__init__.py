"""Score: model scores on torch, as columns the select stage decides on, and what embeddings catch that n-grams miss.

A partitioned global stage (steps.py), `resources="gpu"`, models loaded once per worker by `setup`:
  features  per shard, on the device: L2-normalized embeddings (all-MiniLM-L6-v2, written as float16 side shards
            `runs/<id>/score/embeddings/part-*.parquet`), perplexity under SmolLM2-135M (token-mean NLL of the first
            `lm.max_tokens` tokens), and each document's benchmark candidates by embedding cosine (documents cut
            into windows, so a long page holding one item is still caught) given a second look with names and
            numbers abstracted (contamination.py);
  then, as partitioned steps (steps.py): spherical k-means fit on a sample, every shard's rows assigned to their
            nearest centroid (`score_prototypicality`: cosine distance to it), SemDeDup inside each cluster (cosine
            >= 1 - eps; survivor by rule) one cluster partition at a time, training dynamics over memory-mapped
            embeddings;
  apply     per shard: the score_* columns; `dedup.semantic` and (policy drop) `contamination.semantic` rejected
            with evidence (survivor or item, cosine, cluster).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from schemas.config import ScoreParams
from schemas.record import CANONICAL
from tasks.models import embeddings, loading, perplexity, sampling, shared
from tasks.runtime.externals import ExternalInputs, Externals, gather
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stage import Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.score import classifier, contamination, semantic, steps

ADDS = {
    "score_perplexity": pl.Float64(),
    "score_nll": pl.Float64(),
    "score_bits_per_char": pl.Float64(),
    "score_prototypicality": pl.Float64(),
    "score_semantic_cluster": pl.Int64(),
    "score_contam_item": pl.String(),
    "score_contam_cosine": pl.Float64(),
    "score_contam_abstract": pl.Float64(),
    "score_contam_question": pl.Float64(),
    "score_contam_overlap": pl.Float64(),
    "score_quality": pl.Float64(),
    "score_novelty": pl.Float64(),
    "score_scored": pl.Boolean(),
    "score_el2n": pl.Float64(),
    "score_grand": pl.Float64(),
    "score_forgetting": pl.Float64(),
    "score_aum": pl.Float64(),
    "score_epochs_to_learn": pl.Float64(),
    "score_label_quality": pl.Float64(),
    "score_label_pred": pl.String(),
    "label_issue": pl.Boolean(),
}
DYNAMICS = ["score_el2n", "score_grand", "score_forgetting", "score_aum", "score_epochs_to_learn",
            "score_label_quality", "score_label_pred", "label_issue"]
HEAD_FILE = "quality_head.safetensors"
log = logging.getLogger("sluice")


def embedder_identity(cfg) -> str:
    """Which embedder made an embedding: the model folder's pinned file hashes (the packaged MiniLM's by default);
    embeddings of different embedders are not compared."""
    import hashlib

    return hashlib.sha256(json.dumps(cfg.embedder.sha256, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ScoreModels:
    """What `setup` loads once per worker process."""

    device: object
    embedder: object
    lm: object | None
    tokenizer: object | None
    item_ids: list[str]  # "benchmark:item_id" per row of item_vectors
    item_vectors: np.ndarray
    item_abstract: np.ndarray  # the items with names and numbers abstracted (contamination's second look)
    item_question: np.ndarray  # their questions, abstracted
    item_words: list[frozenset[str]]  # their content words (contamination.overlap)
    item_code: np.ndarray  # whether each is code (a `def` line): its docstring asks no question
    reference_vectors: np.ndarray  # embeddings of the good reference documents (quality head, novelty)
    head: tuple[np.ndarray, float] | None  # a head reused by path
    precision: dict[str, str]  # model -> float32, or bfloat16 (CPU: embedder weights, LM autocast)

    @property
    def lm_bf16(self) -> bool:
        return self.precision["lm"] == "bfloat16"


def externals(params: ScoreParams) -> Externals:
    """What the setup reads besides the data (the benchmark files, a reference set given as a file) and the cache
    folder it writes (the LM's conversion, embedding vectors)."""
    from tasks.stages.decontaminate import benchmarks

    cfg = params.score
    files = benchmarks.files(params.decontaminate).files if cfg.contamination.enabled else ()
    if cfg.reference and cfg.reference != classifier.BUILTIN_REFERENCE:
        files = (*files, cfg.reference)
    return Externals(files=files, caches=(loading.cache_root(cfg.lm),))


def _benchmark_items(params: ScoreParams, inputs: ExternalInputs | None) -> pl.DataFrame:
    """One text per benchmark item and field (a GSM8K question and its answer are embedded apart, so a leaked
    question alone is as close as it can be), from the decontaminate stage's registry."""
    from tasks.stages.decontaminate.benchmarks import load_benchmark, resolved_benchmarks

    frames = [load_benchmark(b, inputs) for b in resolved_benchmarks(params.decontaminate)]
    if not frames:
        return pl.DataFrame(schema={"key": pl.String, "text": pl.String})
    return pl.concat(frames).select(key=pl.col("benchmark") + ":" + pl.col("item_id"), text="text")


def load_models(params: ScoreParams, inputs: ExternalInputs | None = None) -> ScoreModels:
    """The models (tasks/models/shared.py: loaded once per process, augment reuses them) and the benchmark and
    reference embeddings. The LM loads in a thread while the embedder embeds the benchmark items (~25 s on a
    machine's first run; both are cached for later runs). The loads themselves take turns (tasks/models/loading.py:
    transformers' loading is not thread-safe), so on a first run the embedder's load waits for the LM's GGUF
    conversion (~17 s on 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = params.score
    inputs = inputs if inputs is not None else gather(externals(params))
    dev = loading.device(cfg.device)
    with ThreadPoolExecutor(1, thread_name_prefix="load-lm") as pool:
        lm_loading = pool.submit(shared.language_model, cfg.lm, dev, cfg.cpu_precision) if cfg.perplexity else None
        embedder = shared.embedder(cfg.embedder, dev, cfg.cpu_precision)
        ids, vectors = [], np.zeros((0, embedder.dimension), dtype=np.float32)
        identity = {"embedder": cfg.embedder.model_dump(), "precision": embedder.precision, "device": dev.type}

        def embed_cached(texts: list[str]) -> np.ndarray:
            if not cfg.embedder.sha256:  # an unpinned model folder may change under the same path: never cached
                return embedder.embed(texts)
            return loading.cached_vectors(loading.cache_root(cfg.lm), identity, texts, embedder.embed)

        abstract = question = vectors
        words: list[frozenset[str]] = []
        code = np.zeros(0, dtype=bool)
        if cfg.contamination.enabled:
            items = _benchmark_items(params, inputs)
            ids = items["key"].to_list()
            texts = items["text"].to_list()
            vectors = embed_cached(texts)
            abstract = embed_cached([contamination.abstracted(t) for t in texts])
            question = contamination.item_questions(texts, embed_cached)
            words = [contamination.content_words(t) for t in texts]
            code = contamination.is_code(pl.Series(texts, dtype=pl.String)).to_numpy()
        reference = np.zeros((0, vectors.shape[1]), dtype=np.float32)
        if cfg.reference:
            reference = embed_cached(classifier.reference_texts(cfg.reference, inputs=inputs))
        lm = lm_loading.result() if lm_loading is not None else None
    head = classifier.load_head(cfg.head_path) if cfg.head_path else None
    chosen = {"embedder": embedder.precision, "lm": lm.precision if lm is not None else "float32"}
    return ScoreModels(dev, embedder.model, lm.model if lm else None, lm.tokenizer if lm else None, ids, vectors,
                       abstract, question, words, code, reference, head, chosen)


def release_models(loaded: ScoreModels) -> None:
    import torch

    loaded.embedder = loaded.lm = None
    if getattr(loaded.device, "type", "cpu") == "cuda":
        torch.cuda.empty_cache()


def _window_embeddings(texts: list[str], emb: np.ndarray, cfg, loaded: ScoreModels
                       ) -> tuple[semantic.Windows, np.ndarray, np.ndarray]:
    """The contamination windows, the rows of those that can be candidates and their embeddings: a short document's
    one window is the document (its embedding reused); a long one's sentence runs holding enough of one item's
    words, pooled from their sentences, each embedded once, so the cost follows the text, not the windows (up to 4
    per sentence)."""
    windows = semantic.chunk_texts(texts, cfg.contamination.chunk_words)
    runs = ~windows.whole
    if cfg.contamination.shared_words:
        runs &= contamination.sharing_windows(windows, loaded.item_words, cfg.contamination.shared_words,
                                              cfg.contamination.overlap)
    needed = np.flatnonzero(semantic.sentences_of(windows, runs))
    sentence_emb = embeddings.embed([windows.sentences[i] for i in needed], loaded.embedder, cfg.embedder,
                                    loaded.device) if needed.size else np.zeros((0, emb.shape[1]), np.float32)
    rows = np.flatnonzero(windows.whole | runs)
    whole = windows.whole[rows]
    out = np.empty((rows.size, emb.shape[1]), dtype=np.float32)
    out[whole] = emb[windows.owner[rows[whole]]]
    out[~whole] = semantic.pooled(windows, sentence_emb, rows[~whole], needed)
    return windows, rows, out


def _contamination(texts: list[str], emb: np.ndarray, cfg, loaded: ScoreModels) -> pl.DataFrame:
    """Per document (rows of `texts`): its best benchmark candidate, the signals of the second look on it, the
    window that matched and whether it is a hit (tasks/stages/score/contamination.py). A document with a hit shows
    its best hit; one without, its closest item."""
    contam = cfg.contamination

    def embed(batch: list[str]) -> np.ndarray:
        return embeddings.embed(batch, loaded.embedder, cfg.embedder, loaded.device)

    windows, rows, window_emb = _window_embeddings(texts, emb, cfg, loaded)
    doc, window, item, cosine = contamination.candidates(window_emb, windows.owner[rows], loaded.item_vectors,
                                                         contam.candidates, min(contam.candidate_cosine,
                                                                                contam.threshold),
                                                         device=loading.cuda_or_none(loaded.device))
    window = rows[window]
    # the few candidate windows that were pooled are embedded whole: their cosine is the window's own
    pooled_rows = np.flatnonzero(~windows.whole[window])
    if pooled_rows.size:
        exact = embed([windows.text(w) for w in window[pooled_rows]])
        cosine = cosine.copy()
        cosine[pooled_rows] = (exact * loaded.item_vectors[item[pooled_rows]]).sum(1)
    window_texts = [windows.text(w) for w in window]
    abstract, asked = contamination.second_look(window_texts, loaded.item_abstract[item], loaded.item_question[item],
                                                embed)
    shared = contamination.overlap(window_texts, [loaded.item_words[i] for i in item])
    found = pl.DataFrame({"doc": doc, "item": item, "cosine": cosine, "abstract": abstract, "question": asked,
                          "overlap": shared, "window": window_texts, "code": loaded.item_code[item]},
                         schema_overrides={"window": pl.String, "code": pl.Boolean})
    found = found.with_columns(code=pl.col("code") & contamination.is_code(pl.col("window")))
    # per (document, item): the closest window's cosine and text, the best of its windows on each second look
    found = found.sort("cosine", descending=True).group_by("doc", "item").agg(
        pl.col("cosine", "window").first(), pl.col("abstract", "question", "overlap").max(), pl.col("code").any())
    found = found.with_columns(hit=contamination.is_hit(pl.col("cosine"), pl.col("abstract"), pl.col("question"),
                                                         pl.col("overlap"), pl.col("code"), contam))
    best = found.sort(["doc", "hit", "cosine"], descending=[False, True, True]).unique("doc", keep="first")
    keys = pl.DataFrame({"item": np.arange(len(loaded.item_ids)), "key": loaded.item_ids},
                        schema_overrides={"key": pl.String})
    out = (pl.DataFrame({"doc": np.arange(len(texts))}).join(best, on="doc", how="left")
           .join(keys, on="item", how="left").sort("doc"))
    return out.select(score_contam_item="key", score_contam_cosine="cosine", score_contam_abstract="abstract",
                      score_contam_question="question", score_contam_overlap="overlap",
                      score_contam_hit=pl.col("hit").fill_null(False),
                      contam_window=pl.col("window").str.slice(0, 400))


def features(batch: pl.DataFrame, params: ScoreParams, loaded: ScoreModels | None = None) -> pl.DataFrame:
    """Per shard, on the device: embedding, perplexity and nearest benchmark item of every sampled document (the
    rows `score.sample` leaves out have no features, and no embedding in the side shards)."""
    loaded = loaded if loaded is not None else load_models(params)
    cfg = params.score
    scored = batch.filter(sampling.chosen(pl.col("id"), cfg.sample, "score")) if cfg.sample < 1 else batch
    texts = scored["text"].to_list()
    emb = embeddings.embed(texts, loaded.embedder, cfg.embedder, loaded.device)
    out = scored.select("id", "timestamp", length=pl.col("text").str.len_chars(),
                        label=pl.col("label") if "label" in scored.columns else pl.lit(None, pl.String)).with_columns(
        pl.Series("embedding", emb.astype(np.float16), dtype=pl.Array(pl.Float16, emb.shape[1])))
    if cfg.perplexity and loaded.lm is not None:
        nll, bpc = perplexity.nll(texts, loaded.lm, loaded.tokenizer, cfg.lm, loaded.device, loaded.lm_bf16)
        out = out.with_columns(score_nll=pl.Series(nll, dtype=pl.Float64),
                               score_bits_per_char=pl.Series(bpc, dtype=pl.Float64))
    else:
        out = out.with_columns(score_nll=pl.lit(None, pl.Float64), score_bits_per_char=pl.lit(None, pl.Float64))
    if cfg.contamination.enabled and loaded.item_ids:
        out = pl.concat([out, _contamination(texts, emb, cfg, loaded)], how="horizontal")
    else:
        out = out.with_columns(score_contam_item=pl.lit(None, pl.String), score_contam_cosine=pl.lit(None, pl.Float64),
                               score_contam_abstract=pl.lit(None, pl.Float64),
                               score_contam_question=pl.lit(None, pl.Float64),
                               score_contam_overlap=pl.lit(None, pl.Float64), score_contam_hit=pl.lit(False),
                               contam_window=pl.lit(None, pl.String))
    novelty = classifier.novelty(emb, loaded.reference_vectors, cfg.novelty_k)
    return out.with_columns(score_novelty=pl.Series(novelty, dtype=pl.Float64).fill_nan(None))


def apply(batch: pl.DataFrame, decisions: pl.DataFrame, params: ScoreParams) -> StageResult:
    joined = batch.join(decisions, on="id", how="left", maintain_order="left").with_columns(
        pl.col("score_scored", "contaminated").fill_null(False),  # rows score.sample left out
        score_perplexity=pl.col("score_nll").exp())
    policy = params.score.contamination.policy
    reason = (pl.when(pl.col("dup_survivor").is_not_null()).then(pl.lit("dedup.semantic"))
              .when(pl.col("dup_published_id").is_not_null()).then(pl.lit("dedup.semantic.published"))
              .when(pl.col("contaminated") & pl.lit(policy == "drop")).then(pl.lit("contamination.semantic")))
    judged = joined.with_columns(reason=reason)
    out_cols = [*batch.columns, *ADDS]
    evidence = (pl.when(pl.col("reason") == "dedup.semantic")
                .then(pl.struct(survivor_id=pl.col("dup_survivor"), cosine=pl.col("dup_cosine").round(4),
                                cluster=pl.col("score_semantic_cluster")).struct.json_encode())
                .when(pl.col("reason") == "dedup.semantic.published")
                .then(pl.struct(version=pl.col("dup_published_version"), published_id=pl.col("dup_published_id"),
                                cosine=pl.col("dup_cosine").round(4)).struct.json_encode())
                .otherwise(pl.struct(item=pl.col("score_contam_item"), cosine=pl.col("score_contam_cosine").round(4),
                                     abstract=pl.col("score_contam_abstract").round(4),
                                     question=pl.col("score_contam_question").round(4),
                                     overlap=pl.col("score_contam_overlap").round(4),
                                     window=pl.col("contam_window"),
                                     rule=pl.lit(contamination.rule(params.score.contamination))).struct.json_encode()))
    rejected = judged.filter(pl.col("reason").is_not_null()).with_columns(evidence=evidence)
    kept = judged.filter(pl.col("reason").is_null())
    broken = joined.filter(pl.col("score_scored") & pl.any_horizontal(
        [pl.col(c).is_nan() | pl.col(c).is_infinite() for c in ("score_nll", "score_bits_per_char",
                                                                 "score_prototypicality")]))
    stats = Stats(counts={"score.rows": joined.height, "score.scored": int(joined["score_scored"].sum() or 0),
                          "score.non_finite": broken.height,
                          "score.label_issues": int(joined["label_issue"].sum() or 0),
                          "score.contaminated": int(joined["contaminated"].sum() or 0),
                          "score.semantic_duplicates": int(joined["dup_survivor"].is_not_null().sum()),
                          "score.semantic_duplicates_of_published":
                              int(joined["dup_published_id"].is_not_null().sum())},
                  records={"contaminated": [{"id": r[0], "item": r[1], "cosine": round(r[2], 4)} for r in
                                            joined.filter("contaminated").select("id", "score_contam_item",
                                                                                 "score_contam_cosine").iter_rows()]})
    return StageResult(kept=kept.select(out_cols).cast(ADDS),
                       rejected=rejected.select(*out_cols, "reason", "evidence").cast(ADDS), stats=stats)


DECISIONS = {"id": pl.String, "score_nll": pl.Float64, "score_bits_per_char": pl.Float64,
             "score_contam_item": pl.String, "score_contam_cosine": pl.Float64, "score_contam_abstract": pl.Float64,
             "score_contam_question": pl.Float64, "score_contam_overlap": pl.Float64, "contam_window": pl.String,
             "score_novelty": pl.Float64,
             "score_quality": pl.Float64, "score_prototypicality": pl.Float64, "score_semantic_cluster": pl.Int64,
             "contaminated": pl.Boolean, "score_scored": pl.Boolean, "dup_survivor": pl.String,
             "dup_cosine": pl.Float64, "dup_published_id": pl.String, "dup_published_version": pl.Int32,
             **{c: ADDS[c] for c in DYNAMICS}}


def apply_routed(batch: pl.DataFrame, routed: dict[str, pl.DataFrame], params: ScoreParams) -> StageResult:
    """The shard's rows with what the steps routed to them: scores (`assigned`), semantic duplicates, dynamics."""
    decisions = routed.get("assigned")
    decisions = decisions if decisions is not None and decisions.width else pl.DataFrame(schema={"id": pl.String})
    for name in ("semantic", "dynamics"):
        extra = routed.get(name)
        if extra is not None and extra.width and extra.height:
            decisions = decisions.join(extra, on="id", how="left")
    decisions = decisions.select([(pl.col(c) if c in decisions.columns else pl.lit(None)).cast(t).alias(c)
                                  for c, t in DECISIONS.items()])
    return apply(batch, decisions, params)


PLAN = steps.plan(apply_routed)


def score_one_shard(batch: pl.DataFrame, params: ScoreParams, loaded: ScoreModels | None = None) -> StageResult:
    """The whole stage on one frame (every step in memory): what `stage.fn(df)` means for score."""
    (result,), _, _ = run_in_memory(PLAN, [batch], params, loaded if loaded is not None else load_models(params))
    return result


def rate_checks(stats: Stats, rows_in: int, params: ScoreParams) -> list[dict]:
    """A NaN or infinite score is a broken model (a damaged weight file, an overflow), never data: any fails the
    contract."""
    bad = stats.counts.get("score.non_finite", 0)
    return [{"name": "score.non_finite", "count": bad, "rate": bad / max(rows_in, 1), "warn": 0.0, "max": 0.0,
             "message": f"{bad:,} scored rows have a NaN or infinite perplexity, bits per char or prototypicality: "
                        "the model or its weights are broken, not the data (`sluice run --log-level debug` shows "
                        "the model files used)"}]


def summarize(stats: Stats, params: ScoreParams) -> dict:
    scored, sample = stats.counts.get("score.scored", 0), params.score.sample
    rows = stats.counts.get("score.rows", 0)
    note = (f"scored a sample: {scored:,} of {rows:,} rows (score.sample = {sample}); the others pass with null "
            "scores and score_scored = false" if sample < 1 else None)
    return {"scored": scored, "sample": sample, "note": note,
            "label_issues": stats.counts.get("score.label_issues", 0),
            "semantic_duplicates": stats.counts.get("score.semantic_duplicates", 0),
            "contaminated": stats.counts.get("score.contaminated", 0),
            "contamination_policy": params.score.contamination.policy,
            "contaminated_examples": stats.records.get("contaminated", [])[:20]}


STAGE = Stage(
    name="score",
    fn=score_one_shard,
    params=lambda cfg: ScoreParams(score=cfg.score, decontaminate=cfg.decontaminate),
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "timestamp": CANONICAL["timestamp"]},
    adds=ADDS,
    suite="score",
    resources="gpu",
    kind="global",
    plan=PLAN,
    setup=load_models,
    externals=externals,
    teardown=release_models,
    needs=("torch", "transformers", "sentence_transformers", "faiss"),
    summarize=summarize,
    rate_checks=rate_checks,
    description="perplexity, embeddings, semantic dedup, semantic contamination and prototypicality on torch",
)
