"""Sentence embeddings, L2-normalized: the sentence-transformers model's own transformer and mean pooling, run on
Sluice's token-budget batches (tokenized once in Rust, collated in a background thread, bf16 autocast on CUDA)."""

from __future__ import annotations

import numpy as np

from schemas.config import EmbedderConfig
from tasks.models import batching


def embed(texts: list[str], model, cfg: EmbedderConfig, dev) -> np.ndarray:
    """(n, dim) float32 unit vectors, in the order of `texts`. Under bf16 autocast on CUDA; on a CPU, in the
    model's own dtype (the stage gives it bfloat16 weights where its check passed). `batching.TEXTS_AT_ONCE` texts
    are tokenized at a time, so memory follows that, not the shard."""
    if len(texts) > batching.TEXTS_AT_ONCE:
        parts = batching.chunks(texts, batching.TEXTS_AT_ONCE)
        return np.concatenate([_embed(part, model, cfg, dev) for part in parts])
    return _embed(texts, model, cfg, dev)


def _embed(texts: list[str], model, cfg: EmbedderConfig, dev) -> np.ndarray:
    import torch

    transformer = model[0]
    tokenizer, encoder = transformer.tokenizer, transformer.auto_model
    limit = min(cfg.max_tokens, getattr(transformer, "max_seq_length", cfg.max_tokens) or cfg.max_tokens)
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"] if texts else []
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    cuda = dev.type == "cuda"
    pad_id = tokenizer.pad_token_id or 0

    collate = batching.collator(ids, pad_id, cuda)

    def compute(item) -> np.ndarray:
        tokens, mask = (t.to(dev, non_blocking=True) for t in item)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            hidden = encoder(input_ids=tokens, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    dim = encoder.config.hidden_size
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    batches = batching.token_budget_batches(lengths, batching.budget(cfg.batch_tokens, "embedder", dev))
    return batching.run(batches, collate, compute, len(texts), dim)
