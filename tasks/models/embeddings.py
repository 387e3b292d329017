"""Sentence embeddings, L2-normalized: the sentence-transformers model's own transformer and mean pooling, run on
Sluice's token-budget batches (the leading part of each text tokenized in Rust ahead of the model, collated in a
background thread, copied on a side stream, bf16 autocast on CUDA)."""

from __future__ import annotations

import numpy as np

from schemas.config import EmbedderConfig
from tasks.models import batching, tokenizing


def embed(texts: list[str], model, cfg: EmbedderConfig, dev) -> np.ndarray:
    """(n, dim) float32 unit vectors, in the order of `texts`. Under bf16 autocast on CUDA; on a CPU, in the
    model's own dtype (the stage gives it bfloat16 weights where its check passed). `batching.TEXTS_AT_ONCE` texts
    are tokenized at a time (the next ones while these are embedded), so memory follows that, not the shard."""
    import torch

    transformer = model[0]
    tokenizer, encoder = transformer.tokenizer, transformer.auto_model
    limit = min(cfg.max_tokens, getattr(transformer, "max_seq_length", cfg.max_tokens) or cfg.max_tokens)
    cuda = dev.type == "cuda"
    pad_id = tokenizer.pad_token_id or 0
    dim = encoder.config.hidden_size
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)

    encode = tokenizing.encoder(tokenizer, limit)

    def tokenize(part: list[str]) -> list[list[int]]:
        return encode(part)["input_ids"]

    def forward(item) -> torch.Tensor:
        tokens, mask = item
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            hidden = encoder(input_ids=tokens, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def score(ids: list[list[int]]) -> np.ndarray:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        batches = batching.token_budget_batches(lengths, batching.budget(cfg.batch_tokens, "embedder", dev))
        batching.count_tokens(lengths, batches)
        return batching.run(batches, batching.collator(ids, pad_id, cuda), forward, len(ids), dim, dev=dev)

    return np.concatenate(batching.tokenized_ahead(texts, tokenize, score))
