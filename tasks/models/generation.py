"""Text generation with the shared causal LM (augment's `local` generator): what one batch of prompts returns, and
the cleaning of a small model's reply."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tasks.models import batching


@dataclass
class Generated:
    texts: list[str | None]  # None: not generated (a cap was reached); the request is reported, not lost
    tokens: int = 0
    cached: int = 0
    stopped: str | None = None  # why generation stopped early (token or cost cap)
    cost: float = 0.0
    errors: list[str] = field(default_factory=list)



def clean(text: str) -> str:
    """The first paragraph-ish answer, without a leading 'Text:'/'Rewritten text:' echo or wrapping quotes."""
    text = text.strip()
    for prefix in ("Rewritten text:", "Text:", "Instruction:", "New example:", "Example:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


class LocalLM:
    """Batched sampling from the shared LM (tasks/models/shared.py): chat template, left padding, the KV cache
    (`use_cache`), bfloat16 autocast where the LM runs in it, one torch generator seed per batch (the batch's first
    request seed), so a rerun of the same batch is identical. Batches hold prompts of about one length
    (tasks/models/batching.py): a short prompt padded to a long one's length is compute spent on padding at every
    generated token."""

    def __init__(self, lm, identity: dict, max_new_tokens: int, temperature: float, top_p: float, max_tokens: int):
        self.model, self.tokenizer, self.device, self.bf16 = lm.model, lm.tokenizer, lm.device, lm.bf16
        self.identity = identity
        self.params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.budget = max_tokens
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _chats(self, prompts: list[str]) -> list[str]:
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]

    def batches(self, prompts: list[str], max_rows: int) -> list[np.ndarray]:
        """Row indices of each batch, longest prompts first: at most `max_rows` prompts, and at most the LM's
        token budget of (prompt + new tokens) x rows."""
        if not prompts:  # every request was cached
            return []
        ids = self.tokenizer(self._chats(prompts), add_special_tokens=False)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        return batching.token_budget_batches(lengths + self.params["max_new_tokens"],
                                             batching.budget(None, "lm", self.device), max_rows)

    def __call__(self, prompts: list[str], seeds: list[int]) -> Generated:
        import torch

        if self.budget <= 0:
            return Generated(texts=[None] * len(prompts), stopped="augment.max_tokens reached")
        chats = self._chats(prompts)
        enc = self.tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(int(seeds[0]) % (2**63 - 1))
        sample = self.params["temperature"] > 0
        autocast = self.device.type == "cuda" or self.bf16
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.model.generate(**enc, max_new_tokens=self.params["max_new_tokens"], do_sample=sample,
                                      temperature=self.params["temperature"] if sample else None,
                                      top_p=self.params["top_p"] if sample else None, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens = int((new != self.tokenizer.pad_token_id).sum())
        self.budget -= tokens
        texts = [clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return Generated(texts=texts, tokens=tokens)
