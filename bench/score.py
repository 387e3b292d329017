"""Score stage on CPU: Sluice's embeddings and perplexity vs what a user would write instead, same documents, one run.

    .venv/bin/python bench/score.py [--docs 20000] [--ppl-docs 300] [--semdedup 100000]

Corpus: real text from packages (KJV passages of 1 to 12 verses, anime quotes, paragraphs of the Python
documentation that ships with CPython), seeded, so lengths vary as in a real crawl.

- Embeddings: `SentenceTransformer.encode(docs)` with its defaults (float32, batch 32, length-sorted) vs Sluice's
  `embeddings.embed` (token-budget batches, collation in a background thread) in float32 and with bf16 weights,
  with the stage's calibration check saying which of the two a run on this CPU uses. Quality: cosine of each
  Sluice vector to the float32 reference.
- Perplexity: a plain `transformers` loop (padded batches of 8 in input order, the full logits, float32) vs
  `perplexity.nll` (length-sorted token-budget batches, the LM head on real tokens only) in float32 and under bf16
  autocast, with the check's verdict, on the first `--ppl-docs` documents: at a few hundred tokens/s on 2 cores,
  20,000 documents would take hours per engine. Quality: relative NLL difference to the float32 loop.
- SemDeDup on `--semdedup` embeddings: the real embeddings, each repeated with small noise (near copies), through
  the stage's k-means, prototypicality and duplicate search.
Writes bench/results/score.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)


def corpus(n: int, seed: int = 20) -> list[str]:
    from tasks.ops.demo_corpus import kjv_records, quote_records
    from tasks.stages.score.classifier import BUILTIN_REFERENCE, reference_texts

    rng = random.Random(seed)
    verses = [r["text"] for r in kjv_records()]
    quotes = [r["text"] for r in quote_records()]
    docs_py = reference_texts(BUILTIN_REFERENCE, min_words=5)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45:
            start = rng.randrange(len(verses) - 12)
            out.append(" ".join(verses[start:start + rng.randint(1, 12)]))
        elif kind < 0.8:
            out.append(rng.choice(quotes))
        else:
            out.append(rng.choice(docs_py))
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_embeddings(docs: list[str]) -> tuple[list[str], np.ndarray]:
    import torch
    from sentence_transformers import SentenceTransformer

    from schemas.config import ScoreConfig
    from tasks.models import embeddings, loading

    cfg, dev = ScoreConfig().embedder, torch.device("cpu")
    folder = str(loading.embedder_folder(cfg))
    baseline = SentenceTransformer(folder, device="cpu", local_files_only=True)
    tokens = sum(len(x) for x in baseline.tokenizer(docs, truncation=True, max_length=baseline.max_seq_length)[
        "input_ids"])
    t = time.perf_counter()
    reference = baseline.encode(docs)
    t_base = time.perf_counter() - t
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)

    rows = [("`SentenceTransformer.encode` defaults (float32, batch 32)", t_base, 1.0, 1.0)]
    model = loading.load_embedder(cfg, dev)
    t = time.perf_counter()
    fast = loading.bfloat16_copy(model)
    chosen, measure = loading.checked_bfloat16(lambda x, bf16: embeddings.embed(x, fast if bf16 else model, cfg, dev),
                                              loading.embeddings_agree, "the embedder", False)
    check = time.perf_counter() - t
    for bf16 in (False, True):
        t = time.perf_counter()
        ours = embeddings.embed(docs, fast if bf16 else model, cfg, dev)
        wall = time.perf_counter() - t
        cos = (ours * reference).sum(1)
        used = (chosen == "bfloat16") == bf16
        if used:
            vectors = ours
        label = "Sluice, bf16 weights" if bf16 else "Sluice, float32"
        rows.append((f"{label}{' (what the stage uses here)' if used else ''}", wall, float(cos.min()),
                     float(np.percentile(cos, 1))))
    lines = [f"Embeddings, all-MiniLM-L6-v2, {len(docs):,} documents, {tokens:,} tokens (max 256 per document):", "",
             "| engine | seconds | docs/s | tokens/s | speed-up | min cosine to fp32 | 1st percentile |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, wall, cmin, cp1 in rows:
        lines.append(f"| {name} | {wall:.1f} | {len(docs) / wall:,.0f} | {tokens / wall:,.0f} | "
                     f"{t_base / wall:.2f}x | {cmin:.5f} | {cp1:.5f} |")
    lines += ["", f"The stage's calibration check ({len(loading.CALIBRATION)} texts, {check:.1f} s at setup): "
              f"min cosine of bf16 to float32 {measure:.5f} (floor {loading.COSINE_FLOOR}) -> {chosen}."]
    return lines, vectors


def baseline_nll(docs: list[str], model, tokenizer, max_tokens: int) -> np.ndarray:
    """What a user writes: batches of 8 in input order, padded, the model's full logits, mean NLL per document."""
    import torch

    out = []
    for i in range(0, len(docs), 8):
        batch = tokenizer([tokenizer.bos_token + d for d in docs[i:i + 8]], return_tensors="pt", padding=True,
                          truncation=True, max_length=max_tokens, add_special_tokens=False)
        with torch.inference_mode():
            logits = model(**batch).logits
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(),
                                                   batch["input_ids"][:, 1:], reduction="none")
        mask = batch["attention_mask"][:, 1:]
        out.extend(((losses * mask).sum(1) / mask.sum(1)).tolist())
    return np.array(out)


def bench_perplexity(docs: list[str]) -> list[str]:
    import torch

    from schemas.config import ScoreConfig
    from tasks.models import loading, perplexity

    cfg, dev = ScoreConfig().lm, torch.device("cpu")
    t = time.perf_counter()
    model, tokenizer = loading.load_lm(cfg, dev)
    load = time.perf_counter() - t
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokens = sum(min(len(x) + 1, cfg.max_tokens) for x in tokenizer(docs, add_special_tokens=False)["input_ids"])
    t = time.perf_counter()
    reference = baseline_nll(docs, model, tokenizer, cfg.max_tokens)
    t_base = time.perf_counter() - t
    rows = [("plain `transformers` loop, padded batches of 8, float32", t_base, 0.0, 0.0)]
    t = time.perf_counter()
    ours, _ = perplexity.nll(docs, model, tokenizer, cfg, dev)
    wall = time.perf_counter() - t
    rel = np.abs(ours - reference) / reference
    t = time.perf_counter()
    chosen, measure = loading.checked_bfloat16(lambda x, bf16: perplexity.nll(x, model, tokenizer, cfg, dev, bf16),
                                              loading.nll_agrees, "the LM", False)
    check = time.perf_counter() - t
    rows.append((f"Sluice, float32{' (what the stage uses here)' if chosen == 'float32' else ''}", wall,
                 float(rel.max()), float(np.mean(rel))))
    t = time.perf_counter()
    ours, _ = perplexity.nll(docs, model, tokenizer, cfg, dev, True)
    wall = time.perf_counter() - t
    rel = np.abs(ours - reference) / reference
    rows.append((f"Sluice, bf16 autocast{' (what the stage uses here)' if chosen == 'bfloat16' else ''}", wall,
                 float(rel.max()), float(np.mean(rel))))
    lines = [f"Perplexity, SmolLM2-135M-Instruct, first {len(docs):,} documents, {tokens:,} tokens (max "
             f"{cfg.max_tokens} per document); model load from the safetensors cache {load:.1f} s:", "",
             "| engine | seconds | tokens/s | speed-up | max NLL difference | mean |", "|---|---:|---:|---:|---:|---:|"]
    for name, wall, rmax, rmean in rows:
        lines.append(f"| {name} | {wall:.1f} | {tokens / wall:,.0f} | {t_base / wall:.2f}x | {rmax:.3%} | "
                     f"{rmean:.3%} |")
    lines += ["", f"The stage's calibration check ({len(loading.CALIBRATION)} texts, {check:.1f} s at setup): largest "
              f"relative NLL difference of bf16 to float32 {measure:.3%} (tolerance {loading.NLL_TOLERANCE:.0%}) -> "
              f"{chosen}."]
    return lines


def bench_semdedup(base: np.ndarray, n: int) -> list[str]:
    from schemas.config import ScoreConfig
    from tasks.models import kmeans
    from tasks.stages.score import semantic

    cfg = ScoreConfig()
    rng = np.random.default_rng(0)
    emb = base[rng.integers(0, base.shape[0], n)] + rng.normal(0, 0.01, (n, base.shape[1])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    priority = np.arange(n)
    t = time.perf_counter()
    k = kmeans.cluster_count(n, cfg.semdedup.clusters)
    centroids, nearest = kmeans.fit(emb, k, cfg.semdedup.sample)
    t_km = time.perf_counter() - t
    semantic.prototypicality(emb, centroids, nearest)
    survivor, _ = semantic.duplicates(emb, nearest, priority, cfg.semdedup.eps)
    wall = time.perf_counter() - t
    return [f"SemDeDup on {n:,} embeddings (384 dims; {base.shape[0]:,} real ones, each drawn again with noise "
            f"sigma 0.01): {k} clusters, k-means "
            f"(k-means++ seeding, torch Lloyd: `tasks/models/kmeans`) {t_km:.1f} s, prototypicality + duplicate "
            f"search {wall - t_km:.1f} s, **{wall:.1f} s in all** (goal under 30 s); {int((survivor >= 0).sum()):,} "
            "rows marked duplicates."]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--ppl-docs", type=int, default=300)
    ap.add_argument("--semdedup", type=int, default=100_000)
    args = ap.parse_args()
    import torch

    from tasks.models import loading

    docs = corpus(args.docs)
    header = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads; bf16 instructions: {'yes' if loading.cpu_has_bf16() else 'no'}.",
              ""]
    emb_lines, vectors = bench_embeddings(docs)
    lines = header + emb_lines + [""] + bench_perplexity(docs[:args.ppl_docs]) + [""]
    lines += bench_semdedup(vectors, args.semdedup)
    table = "\n".join(lines)
    publish("score.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
