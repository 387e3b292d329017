"""Perplexity under a causal LM: the token-mean negative log-likelihood of the first `max_tokens` tokens, and its
exp; also bits per character over the same span. The LM head runs on the real positions only (found on the host, so
the device is never asked how many there are), in chunks, so a batch never materializes (rows x length x
vocabulary) logits.

Why both: a token-mean depends on the tokenization. Random characters split into many short tokens, each only
moderately surprising, so their per-token NLL can be *lower* than that of shuffled words (measured: 5.6 vs 6.2
nats/token with SmolLM2); per character they are far less likely (about 4 vs 1.4 nats/char). Bits per character
orders fluent < shuffled < random; use it to compare texts of different kinds."""

from __future__ import annotations

import numpy as np

from schemas.config import LanguageModelConfig
from tasks.models import batching, tokenizing

HEAD_CHUNK = 2048  # positions per LM-head chunk


def nll(texts: list[str], model, tokenizer, cfg: LanguageModelConfig, dev, bf16: bool = False
        ) -> tuple[np.ndarray, np.ndarray]:
    """(token-mean NLL in nats, bits per character) per text, in input order, over its first `max_tokens` tokens.
    A beginning-of-text token is prepended, so even a one-token text is scored. Under bf16 autocast on CUDA, and on
    a CPU when `bf16` (the stage's checked choice). `batching.TEXTS_AT_ONCE` texts are tokenized at a time (the next
    ones while these are scored)."""
    import torch

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cuda = dev.type == "cuda"
    autocast = cuda or bf16
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if not texts:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)

    encode = tokenizing.encoder(tokenizer, cfg.max_tokens - 1, special_tokens=False, chars=True)

    def tokenize(part: list[str]) -> tuple[list[list[int]], np.ndarray]:
        enc = encode(part)
        return [[bos, *x] for x in enc["input_ids"]], np.array(enc["chars"], dtype=np.float64)

    def forward(item) -> torch.Tensor:
        tokens, mask, positions = item  # positions: flat (row * length + t) where token t+1 is real, from the host
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = decoder(input_ids=tokens, attention_mask=mask).last_hidden_state
            states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            targets = tokens.reshape(-1).index_select(0, positions + 1)
            losses = torch.cat([
                torch.nn.functional.cross_entropy(head(states[i:i + HEAD_CHUNK]).float(), targets[i:i + HEAD_CHUNK],
                                                  reduction="none")
                for i in range(0, positions.shape[0], HEAD_CHUNK)]) if positions.shape[0] else \
                torch.zeros(0, device=dev)
            rows = torch.div(positions, tokens.shape[1], rounding_mode="floor")
            total = torch.zeros(tokens.shape[0], device=dev, dtype=torch.float64).index_add_(0, rows, losses.double())
            count = mask[:, 1:].sum(1).clamp(min=1)
        return torch.stack([total / count, total], dim=1)

    def score(encoded: tuple[list[list[int]], np.ndarray]) -> np.ndarray:
        ids, chars = encoded
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        batches = batching.token_budget_batches(lengths, batching.budget(cfg.batch_tokens, "lm", dev))
        batching.count_tokens(lengths, batches)
        out = batching.run(batches, batching.collator(ids, pad_id, cuda, predicted=True), forward, len(ids), 2,
                           np.float64, dev)
        return np.stack([out[:, 0], out[:, 1] / np.log(2) / np.maximum(chars, 1.0)], axis=1)

    scored = np.concatenate(batching.tokenized_ahead(texts, tokenize, score))
    return scored[:, 0], scored[:, 1]
