"""The generators: each turns prompts (or parents, for the word-level baseline) into texts, one per request, in
request order, and says who it is (`identity`: model id + weights sha256) for provenance and the cache.

- local: the shared causal LM (SmolLM2-135M-Instruct; tasks/models/generation.py), batched `generate` with the
  KV cache, seeded sampling;
- endpoint: an OpenAI-compatible server through the `openai` client (its retries with backoff on 429/5xx and its
  timeout), bounded concurrency, a token and cost cap;
- eda: word-level swap / delete / insert of in-slice words ("EDA", Wei and Zou 2019), no model: the baseline that
  shows what an LM adds.

Generations are cached on disk by (prompt, generator identity, sampling params, seed): a resumed or replayed run
reuses every finished one, and a killed run loses only the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.models.generation import Generated, LocalLM, clean

__all__ = ["Endpoint", "GenerationCache", "Generated", "LocalLM", "WordLevel", "cached_generate", "clean"]
log = logging.getLogger("sluice")


class GenerationCache:
    """One small JSON file per generation under `root`, named by the sha256 of everything that decides it."""

    def __init__(self, root: Path, identity: dict, params: dict):
        self.root, self.identity, self.params = root, identity, params

    def key(self, prompt: str, seed: int) -> str:
        blob = json.dumps({"identity": self.identity, "params": self.params, "seed": seed, "prompt": prompt},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            found = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) and isinstance(found.get("text"), str) else None

    def put(self, key: str, text: str, tokens: int) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"text": text, "tokens": tokens}), encoding="utf-8")
        tmp.replace(path)  # atomic: a killed run leaves a whole file or none


def cached_generate(cache: GenerationCache | None, prompts: list[str], seeds: list[int],
                    generate: Callable[[list[str], list[int]], Generated], batch_size: int) -> Generated:
    """`generate` only what the cache lacks, batch by batch, each batch cached as soon as it is done. A generator
    that plans its own batches (`batches(prompts, max_rows)`: the local LM groups prompts of one length) is asked
    for them; the others get `batch_size` requests in order."""
    texts: list[str | None] = [None] * len(prompts)
    keys = [cache.key(p, s) if cache else "" for p, s in zip(prompts, seeds, strict=True)]
    todo, out = [], Generated(texts=texts)
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache else None
        if hit is not None:
            texts[i] = hit["text"]
            out.cached += 1
        else:
            todo.append(i)
    plan = getattr(generate, "batches", None)
    planned = (plan([prompts[i] for i in todo], batch_size) if plan is not None
               else [range(start, min(start + batch_size, len(todo))) for start in range(0, len(todo), batch_size)])
    for rows in planned:
        part = [todo[int(r)] for r in rows]
        got = generate([prompts[i] for i in part], [seeds[i] for i in part])
        out.tokens += got.tokens
        out.cost += got.cost
        out.errors += got.errors
        for i, text in zip(part, got.texts, strict=True):
            texts[i] = text
            if text is not None and cache:
                cache.put(keys[i], text, 0)
        if got.stopped:
            out.stopped = got.stopped
            break
    return out


# --- OpenAI-compatible endpoint ----------------------------------------------------------------------------------

class Endpoint:
    """Chat completions from an OpenAI-compatible server, `concurrency` requests in flight. The client retries
    429/5xx/timeouts with exponential backoff (`max_retries`); a request that still fails is recorded as an error
    (its row is reported as not generated), never fatal for the run. Stops at the token or cost cap."""

    def __init__(self, cfg, api_key: str | None, max_new_tokens: int, temperature: float, top_p: float,
                 max_tokens: int):
        from openai import OpenAI

        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.base_url, api_key=api_key or "no-key", timeout=cfg.timeout_seconds,
                             max_retries=cfg.max_retries)
        self.identity = {"endpoint": cfg.base_url, "model": cfg.model}
        self.params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.budget, self.spent = max_tokens, 0.0
        self.lock = threading.Lock()

    def _one(self, prompt: str, seed: int) -> tuple[str | None, int, str | None]:
        with self.lock:
            if self.budget <= 0:
                return None, 0, "augment.max_tokens reached"
            if self.cfg.max_cost is not None and self.spent >= self.cfg.max_cost:
                return None, 0, "augment.endpoint.max_cost reached"
        try:
            reply = self.client.chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": prompt}],
                max_tokens=self.params["max_new_tokens"], temperature=self.params["temperature"],
                top_p=self.params["top_p"], seed=int(seed) % (2**31))
            text = reply.choices[0].message.content or ""
            used = int(reply.usage.total_tokens) if reply.usage else 0
        except Exception as exc:  # after the client's own retries; garbage JSON too: one row lost, not the run
            return None, 0, f"{self.cfg.base_url}: {type(exc).__name__}: {str(exc)[:200]}"
        with self.lock:
            self.budget -= used
            self.spent += used * self.cfg.price_per_million_tokens / 1e6
        return clean(text), used, None

    def __call__(self, prompts: list[str], seeds: list[int]) -> Generated:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            results = list(pool.map(self._one, prompts, seeds))
        out = Generated(texts=[r[0] for r in results], tokens=sum(r[1] for r in results), cost=0.0)
        caps = [r[2] for r in results if r[2] and r[2].endswith("reached")]
        out.stopped = caps[0] if caps else None
        out.errors = [r[2] for r in results if r[2] and not r[2].endswith("reached")]
        out.cost = self.spent
        return out


# --- word-level baseline -----------------------------------------------------------------------------------------

class WordLevel:
    """EDA's random swap, deletion and insertion (Wei and Zou 2019), with insertions drawn from the slice's own
    words; `alpha` of the words change. No model, so the gate's label and perplexity checks judge it as they
    judge an LM's rows."""

    identity = {"generator": "eda", "version": 1}

    def __init__(self, vocabulary: list[str], alpha: float = 0.15):
        self.vocabulary = vocabulary or ["the"]
        self.alpha = alpha
        self.params = {"alpha": alpha}

    def __call__(self, parents: list[str], seeds: list[int]) -> Generated:
        return Generated(texts=[self.one(p, s) for p, s in zip(parents, seeds, strict=True)])

    def one(self, text: str, seed: int) -> str:
        rng = random.Random(seed)
        words = text.split()
        if not words:
            return text
        n = max(1, round(self.alpha * len(words)))
        for _ in range(n):
            op = rng.choice(("swap", "delete", "insert"))
            if op == "swap" and len(words) > 1:
                i, j = rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
            elif op == "delete" and len(words) > 1:
                del words[rng.randrange(len(words))]
            else:
                words.insert(rng.randrange(len(words) + 1), rng.choice(self.vocabulary))
        return " ".join(words)
