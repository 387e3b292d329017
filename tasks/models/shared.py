"""The embedder and the LM, loaded once per process whichever stage asks first, with their CPU precision chosen once.

Score and augment both use MiniLM and SmolLM2. Each loaded and calibrated its own copy, so augment paid the load,
the bfloat16 check and float32 speed again (the demo's augment: 45 s, of which generation in float32 21 s and the
proxy sample's embeddings in float32 15 s). Here a model is keyed by its config, device and `cpu_precision`; the
first caller loads it (others wait on the same key's lock), the rest get the same object. The models stay loaded
until `release_all` (the end of the process, or a test): the LM and embedder together are about 0.6 GB in float32,
kept through the stages between score and augment rather than loaded twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.config import EmbedderConfig, LanguageModelConfig
from tasks.models import embeddings, loading, perplexity
from tasks.runtime.once import OncePerKey


@dataclass(frozen=True)
class Embedder:
    """A sentence embedder on its device, in the precision its calibration check allowed."""

    model: Any
    cfg: EmbedderConfig
    device: Any
    precision: str  # float32, or bfloat16 (CPU: bfloat16 weights)

    def embed(self, texts: list[str]) -> np.ndarray:
        return embeddings.embed(texts, self.model, self.cfg, self.device)

    @property
    def dimension(self) -> int:
        return self.model.get_embedding_dimension()


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM and its tokenizer on their device; `bf16`: runs under bfloat16 autocast on a CPU."""

    model: Any
    tokenizer: Any
    cfg: LanguageModelConfig
    device: Any
    precision: str  # float32, or bfloat16 (CPU: autocast over float32 weights)

    @property
    def bf16(self) -> bool:
        return self.precision == "bfloat16"

    def nll(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return perplexity.nll(texts, self.model, self.tokenizer, self.cfg, self.device, self.bf16)


_loaded = OncePerKey()


def _key(kind: str, cfg, dev, cpu_precision: str) -> tuple:
    return kind, json.dumps(cfg.model_dump(mode="json"), sort_keys=True), str(dev), cpu_precision


def embedder(cfg: EmbedderConfig, dev, cpu_precision: str = "auto") -> Embedder:
    """MiniLM (or the configured embedder) on `dev`; on a CPU with bfloat16 where the calibration check passes
    (or `cpu_precision = "bfloat16"` forces it): bfloat16 weights, 2.5x float32 on an AVX512-BF16 CPU."""

    def load() -> Embedder:
        model = loading.load_embedder(cfg, dev)
        if loading.precision(cpu_precision, dev) != "bfloat16":
            return Embedder(model, cfg, dev, "float32")
        fast = loading.bfloat16_copy(model)
        chosen, _ = loading.checked_bfloat16(
            lambda t, bf16: embeddings.embed(t, fast if bf16 else model, cfg, dev), loading.embeddings_agree,
            "the embedder", cpu_precision == "bfloat16")
        return Embedder(fast if chosen == "bfloat16" else model, cfg, dev, chosen)

    return _loaded.get(_key("embedder", cfg, dev, cpu_precision), load)


def language_model(cfg: LanguageModelConfig, dev, cpu_precision: str = "auto") -> LanguageModel:
    """SmolLM2 (or the configured LM) on `dev`; on a CPU under bfloat16 autocast where its calibration check
    passes or `cpu_precision = "bfloat16"` forces it."""

    def load() -> LanguageModel:
        model, tokenizer = loading.load_lm(cfg, dev)
        chosen = "float32"
        if loading.precision(cpu_precision, dev) == "bfloat16":
            chosen, _ = loading.checked_bfloat16(
                lambda t, bf16: perplexity.nll(t, model, tokenizer, cfg, dev, bf16), loading.nll_agrees, "the LM",
                cpu_precision == "bfloat16")
        return LanguageModel(model, tokenizer, cfg, dev, chosen)

    return _loaded.get(_key("lm", cfg, dev, cpu_precision), load)


def release_all() -> int:
    """Forget every loaded model (they are freed when no stage holds them); returns how many there were."""
    gone = _loaded.pop_where(lambda key: False)
    devices = {getattr(getattr(m, "device", None), "type", "cpu") for _, m in gone}
    count = len(gone)
    if "cuda" in devices:
        import torch

        torch.cuda.empty_cache()
    return count
