"""Does augmentation help a scarce class, and what does the gate catch? One run, the same embeddings throughout.

    .venv/bin/python bench/augment.py [--docs 8000] [--variants 2] [--seeds 5]

Data: KJV passages of 2 verses labeled by the genre of their book (bench/selection.py), 20% a clean held-out test set
of real passages; in the training rows the apocalyptic class (Revelation) is cut down to 50 examples. The select
stage's proxy classifier (the score stage's MLP, default settings) is trained on:
  (a) the training rows as they are;
  (b) the 50 oversampled (repeated) to as many rows as the generators add;
  (c) the word-level baseline (EDA swap/delete/insert, the augment stage's `eda` generator), no gate;
  (d) SmolLM2-135M-Instruct paraphrases (the `local` generator, the stage's prompt) through the augment gate
      (novelty, duplicate, contamination, quality with the demo's short-text rules, perplexity, label);
  (e) the same LM paraphrases without the gate;
reporting test accuracy and the scarce class's F1, mean +- sd over training seeds, the gate's rejections by check,
local generation tokens/s, and an OpenAI-compatible endpoint's throughput (`transformers serve` on the same model,
127.0.0.1) with 1 vs 8 requests in flight. Writes bench/results/augment.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

SCARCE = "apocalyptic"


def f1(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    tp = int(((pred == c) & (truth == c)).sum())
    fp, fn = int(((pred == c) & (truth != c)).sum()), int(((pred != c) & (truth == c)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def evaluate(x, y, x_test, y_test, seeds: int, classes: int, scarce: int) -> tuple[str, str]:
    import torch

    from schemas.config import ScoreConfig
    from tasks.models import classifiers

    cfg = ScoreConfig().dynamics
    accs, f1s = [], []
    for seed in range(seeds):
        pred = classifiers.fit_proxy(x, y, classes, cfg, torch.device("cpu"), seed)(x_test).argmax(1)
        accs.append(float((pred == y_test).mean()))
        f1s.append(f1(pred, y_test, scarce))
    return f"{np.mean(accs):.4f} +- {np.std(accs):.4f}", f"{np.mean(f1s):.3f} +- {np.std(f1s):.3f}"


def endpoint_throughput(prompts: list[str], max_new_tokens: int) -> list[str]:
    """tokens/s of the endpoint generator against `transformers serve` on 127.0.0.1, 1 and 8 requests in flight."""
    import socket

    from schemas.config import EndpointConfig, SluiceConfig
    from tasks.models import loading
    from tasks.stages.augment import generators

    folder = loading.lm_folder(SluiceConfig().score.lm)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--dtype", "float32"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        lines = []
        for concurrency in (1, 8):
            cfg = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", model=str(folder), concurrency=concurrency)
            gen = generators.Endpoint(cfg, None, max_new_tokens, 0.8, 0.95, 10**9)
            started = time.perf_counter()
            out = gen(prompts, list(range(len(prompts))))
            seconds = time.perf_counter() - started
            lines.append(f"| endpoint, {concurrency} in flight | {len(prompts)} | {out.tokens:,} (prompt + "
                         f"completion) | {seconds:.1f} s | {len(prompts) / seconds:.2f} requests/s |")
        return lines
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8000)
    ap.add_argument("--variants", type=int, default=2, help="LM paraphrases per scarce example")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--endpoint-requests", type=int, default=16)
    args = ap.parse_args()
    import polars as pl
    import torch

    torch.set_num_threads(2)
    from selection import GENRES, embed, labeled_passages

    from schemas.config import AugmentParams, SluiceConfig
    from tasks.stages import augment
    from tasks.stages.augment import gate, generators, plan
    from tasks.stages.dedup import normalized

    texts, labels = labeled_passages(args.docs)
    emb = embed(texts)
    rng = np.random.default_rng(0)
    test = np.zeros(labels.size, dtype=bool)
    test[rng.choice(labels.size, labels.size // 5, replace=False)] = True
    scarce = GENRES.index(SCARCE)
    train_rows = np.flatnonzero(~test)
    scarce_rows = train_rows[labels[train_rows] == scarce]
    keep_scarce = np.sort(np.random.default_rng(1).choice(scarce_rows, 50, replace=False))
    train_rows = np.concatenate([train_rows[labels[train_rows] != scarce], keep_scarce])
    x, y = emb[train_rows], labels[train_rows]
    x_test, y_test = emb[test], labels[test]
    parents = [texts[i] for i in keep_scarce]
    n_new = 50 * args.variants

    quality = {"gopher_quality": {"min_doc_words": 8, "min_alpha_words_ratio": 0.6},
               "gopher_repetition": {"top_n_grams": [[2, 0.5], [3, 0.5], [4, 0.5]]}, "c4": {"min_num_sentences": 1}}
    cfg = SluiceConfig.model_validate({"score": {"device": "cpu"}, "quality": quality, "augment": {
        "generator": "local", "max_new_tokens": 96,
        "slices": [{"name": SCARCE, "column": "label", "value": SCARCE, "target": 50 + n_new}]}})
    params = AugmentParams(augment=cfg.augment, score=cfg.score, quality=cfg.quality, decontaminate=cfg.decontaminate)
    loaded = augment.load(params)

    # (c) word-level baseline
    words = sorted(set(" ".join(parents).split()))
    eda = generators.WordLevel(words)
    eda_texts = [eda.one(parents[i % 50], 1000 + i) for i in range(n_new)]
    # (d)/(e) LM paraphrases, the stage's prompt and generator, cached
    tmpl, _ = plan.template(cfg.augment)
    prompts = [plan.render(tmpl, parents[i % 50], SCARCE, []) for i in range(n_new)]
    seeds = [plan.request_seed(0, str(i % 50), i // 50) for i in range(n_new)]
    # a fresh cache: the bench measures generation, so it never reads a previous run's generations
    cache = generators.GenerationCache(Path(tempfile.mkdtemp(prefix="sluice-bench-gen-")), loaded.identity,
                                       loaded.generator.params)
    started = time.perf_counter()
    got = generators.cached_generate(cache, prompts, seeds, loaded.generator, 8)
    gen_seconds = time.perf_counter() - started
    lm_texts = [t.split("\n\n")[0].strip() if t else "" for t in got.texts]

    # the gate, as the stage runs it: real rows of the slice, hashes of every real row, the proxy on real rows
    rows = pl.DataFrame({"id": [f"syn{i}" for i in range(n_new)], "text": lm_texts,
                         "parent_text": [parents[i % 50] for i in range(n_new)], "slice": SCARCE, "label": SCARCE})
    real = pl.DataFrame({"id": [f"p{i}" for i in range(50)], "text": parents, "_slice": SCARCE})
    train_texts = [texts[i] for i in train_rows]
    hashes = pl.DataFrame({"t": train_texts}).select(normalized(pl.col("t")).hash(seed=0))["t"]
    feats = pl.DataFrame({"id": [f"r{i}" for i in range(len(train_rows))], "_slice": None, "label":
                          [GENRES[c] for c in y], "_synthetic": False, "_proxy": True, "text": train_texts},
                         schema_overrides={"_slice": pl.String})
    proxy = augment._proxy(feats.sample(fraction=0.25, seed=0), params, loaded)
    judged = gate.run(rows, real, hashes, loaded.models, params, proxy)
    passed = judged["reason"].is_null().to_numpy()
    by_check = dict(judged.group_by("reason").len().drop_nulls().iter_rows())

    def with_rows(new_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        new = embed(new_texts) if new_texts else np.zeros((0, x.shape[1]), dtype=np.float32)
        return np.concatenate([x, new]), np.concatenate([y, np.full(len(new_texts), scarce)])

    n_pass = int(passed.sum())
    settings = [("(a) no augmentation", x, y, 0),
                (f"(b) oversampling the 50 (+{n_new})", *with_rows([parents[i % 50] for i in range(n_new)]),
                 n_new),
                (f"(c) word-level (EDA), no gate (+{n_new})", *with_rows(eda_texts), n_new),
                (f"(d) LM paraphrases through the gate (+{n_pass})",
                 *with_rows([t for t, ok in zip(lm_texts, passed, strict=True) if ok]), n_pass),
                (f"(e) LM paraphrases, no gate (+{n_new})", *with_rows([t for t in lm_texts if t]), n_new)]
    lines = [f"Data: {args.docs:,} KJV passages (2 verses) by genre; {x.shape[0]:,} training rows with the "
             f"{SCARCE} class cut to 50; {x_test.shape[0]:,} real test rows ({int((y_test == scarce).sum())} "
             f"{SCARCE}). Proxy: the score stage's MLP, {args.seeds} training seeds. LM: SmolLM2-135M-Instruct, "
             f"{args.variants} paraphrases per example, 96 new tokens, temperature 0.8.", "",
             "| training data | added rows | test accuracy | F1 of the scarce class |", "|---|---:|---:|---:|"]
    for name, xs, ys, added in settings:
        acc, f = evaluate(xs, ys, x_test, y_test, args.seeds, len(GENRES), scarce)
        lines.append(f"| {name} | {added} | {acc} | {f} |")
    lines += ["", f"The gate on the {n_new} LM paraphrases: {n_pass} passed; rejected by check: "
              + (", ".join(f"{k.removeprefix('augment.gate.')} {v}" for k, v in sorted(by_check.items())) or "none")
              + ". The same gate on the word-level rows: "]
    eda_judged = gate.run(rows.with_columns(text=pl.Series(eda_texts)), real, hashes, loaded.models, params, proxy)
    eda_checks = dict(eda_judged.group_by("reason").len().drop_nulls().iter_rows())
    lines[-1] += (f"{int(eda_judged['reason'].is_null().sum())} of {n_new} pass ("
                  + ", ".join(f"{k.removeprefix('augment.gate.')} {v}" for k, v in sorted(eda_checks.items()))
                  + ").")
    fresh = n_new - got.cached
    lines += ["", "| generation | requests | tokens | seconds | rate |", "|---|---:|---:|---:|---:|",
              f"| local (transformers, batches of 8, KV cache), 2 cores | {fresh} new, {got.cached} cached | "
              f"{got.tokens:,} generated | {gen_seconds:.1f} s | "
              f"{(got.tokens / gen_seconds if gen_seconds and got.tokens else 0):.1f} tokens/s |"]
    lines += endpoint_throughput(prompts[:args.endpoint_requests], 32)
    table = "\n".join(lines)
    publish("augment.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
