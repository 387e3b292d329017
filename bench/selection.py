"""Label noise and selection, measured: Sluice's dynamics + cleanlab vs cleanlab alone vs each dynamics score alone,
and selections vs random subsets of the same size, on real labeled text with the same embeddings throughout.

    .venv/bin/python bench/selection.py [--docs 8000] [--speed-rows 1000000]

Data: KJV passages of 2 verses labeled by the genre of their book (law, history, wisdom, prophets, gospels,
letters, apocalyptic), embedded once by the score stage's embedder (cached per machine). 20% is a clean held-out
test set. Noise: 10% and 30% of training labels flipped uniformly at random, and 20% flipped between confusable
genres (law <-> history, wisdom <-> prophets, gospels <-> letters).

- Finding flipped labels: precision, recall, F1 of Sluice's `label_issue`; of cleanlab alone, as a user would run
  it (scikit-learn LogisticRegression, 5-fold `cross_val_predict` probabilities, `find_label_issues`); and of each
  dynamics score alone, flagging as many rows as Sluice does, worst first.
- Does selection help? The proxy (the score stage's MLP, default settings; mean of 3 training seeds) trained on
  (a) all, (b) all minus Sluice's label issues (at 30% noise),
  (c) EL2N-pruned (the easiest 30% / 50% removed), (d) prototypicality keep-hard and keep-easy at 30% pruning,
  (e) k-center greedy at 70%, (f) random subsets of the same sizes (5 seeds, mean +- sd); accuracy on the clean
  test set.
- Speed: the dynamics and label noise on `--speed-rows` random 384-dim embeddings, 7 classes, 2 cores.
Writes bench/results/select.md. (Named selection.py: a script named select.py would shadow the standard library's
`select` module, which subprocess and torch import.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

from tasks.ops.demo_corpus import GENRES  # noqa: E402  (the demo corpus's labels, after the path above)

GENRES = list(GENRES)
CONFUSABLE = {"law": "history", "history": "law", "wisdom": "prophets", "prophets": "wisdom", "gospels": "letters",
              "letters": "gospels", "apocalyptic": "prophets"}


def labeled_passages(n: int, seed: int = 3) -> tuple[list[str], np.ndarray]:
    from tasks.ops.demo_corpus import genre, kjv_records

    verses = kjv_records()
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(verses) - 1, n, replace=False))
    texts, labels = [], []
    for s in starts:
        a, b = verses[s], verses[s + 1]
        book = int(a["id"].split("-")[1]) // 1_000_000
        if int(b["id"].split("-")[1]) // 1_000_000 != book:
            b = a
        texts.append(a["text"] if b is a else f"{a['text']} {b['text']}")
        labels.append(GENRES.index(genre(book)))
    return texts, np.array(labels)


def embed(texts: list[str]) -> np.ndarray:
    import torch

    from schemas.config import ScoreConfig
    from tasks.models import embeddings, loading

    cfg, dev = ScoreConfig(), torch.device("cpu")
    model = loading.load_embedder(cfg.embedder, dev)
    if loading.precision("auto", dev) == "bfloat16":
        model = loading.bfloat16_copy(model)
    identity = {"embedder": cfg.embedder.model_dump(), "precision": str(next(model.parameters()).dtype),
                "bench": "select"}
    return loading.cached_vectors(loading.cache_root(cfg.lm), identity, texts,
                                 lambda t: embeddings.embed(t, model, cfg.embedder, dev))


def prf(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = int((flagged & truth).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def cleanlab_alone(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=5, method="predict_proba")
    return find_label_issues(labels=y, pred_probs=probs)


def flip(y: np.ndarray, rate: float, confusable: bool, rng: np.random.Generator) -> np.ndarray:
    noisy = y.copy()
    rows = rng.choice(y.size, int(round(rate * y.size)), replace=False)
    for r in rows:
        if confusable:
            noisy[r] = GENRES.index(CONFUSABLE[GENRES[y[r]]])
        else:
            noisy[r] = rng.choice([c for c in range(len(GENRES)) if c != y[r]])
    return noisy


def accuracy(x: np.ndarray, y: np.ndarray, keep: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             seeds: tuple[int, ...] = (0, 1, 2)) -> float:
    """Clean test accuracy of the proxy (the score stage's MLP, its default settings) trained on the rows `keep`,
    mean over training seeds."""
    import torch

    from schemas.config import ScoreConfig
    from tasks.models import classifiers

    cfg = ScoreConfig().dynamics
    def one(seed: int) -> float:
        probabilities = classifiers.fit_proxy(x[keep], y[keep], len(GENRES), cfg, torch.device("cpu"), seed)
        return float((probabilities(x_test).argmax(1) == y_test).mean())

    return float(np.mean([one(seed) for seed in seeds]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8000)
    ap.add_argument("--speed-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    import torch

    from schemas.config import ScoreConfig
    from tasks.models import classifiers, kmeans
    from tasks.stages.score import semantic
    from tasks.stages.select.coreset import k_center_greedy

    cfg, dev = ScoreConfig().dynamics, torch.device("cpu")
    texts, labels = labeled_passages(args.docs)
    t = time.perf_counter()
    emb = embed(texts)
    t_embed = time.perf_counter() - t
    rng = np.random.default_rng(0)
    test = np.zeros(labels.size, dtype=bool)
    test[rng.choice(labels.size, labels.size // 5, replace=False)] = True
    x, y, x_test, y_test = emb[~test], labels[~test], emb[test], labels[test]
    counts = np.bincount(labels, minlength=len(GENRES))
    per_genre = ", ".join(f"{g} {c:,}" for g, c in zip(GENRES, counts, strict=True))
    lines = [f"Data: {args.docs:,} KJV passages (2 verses) by genre ({per_genre}); "
             f"{x.shape[0]:,} train, {x_test.shape[0]:,} clean test; all-MiniLM-L6-v2 embeddings ({t_embed:.0f} s). "
             f"Proxy: {cfg.hidden}-unit MLP, {cfg.epochs} epochs, {cfg.seeds} seeds x {cfg.folds} folds.", "",
             "Finding flipped labels (precision / recall / F1):", "",
             "| noise | flipped | Sluice label_issue | cleanlab alone | EL2N | GraNd | AUM | forgetting "
             "| epochs to learn |",
             "|---|---:|---|---|---|---|---|---|---|"]
    noisy30 = issue30 = None
    for name, rate, confusable in (("uniform 10%", 0.10, False), ("uniform 30%", 0.30, False),
                                   ("confusable 20%", 0.20, True)):
        noisy = flip(y, rate, confusable, np.random.default_rng(int(rate * 100) + confusable))
        truth = noisy != y
        t = time.perf_counter()
        dyn = classifiers.training_dynamics(x, noisy, len(GENRES), cfg, dev)
        issue, quality, _ = classifiers.label_issues(noisy, dyn, cfg.filter_by)
        t_dyn = time.perf_counter() - t
        alone = cleanlab_alone(x, noisy)
        budget = int(issue.sum())

        def worst(score: np.ndarray, budget: int = budget) -> np.ndarray:
            out = np.zeros(score.size, dtype=bool)
            out[np.argsort(-score, kind="stable")[:budget]] = True
            return out

        singles = [worst(dyn.el2n), worst(dyn.grand), worst(-dyn.aum), worst(dyn.forgetting + 1e-6 * dyn.el2n),
                   worst(dyn.epochs_to_learn + 1e-6 * dyn.el2n)]
        cells = [prf(issue, truth), prf(alone, truth), *(prf(s, truth) for s in singles)]
        lines.append(f"| {name} ({t_dyn:.0f} s) | {int(truth.sum()):,} | "
                     + " | ".join(f"{p:.2f} / {r:.2f} / **{f:.2f}**" for p, r, f in cells) + " |")
        if rate == 0.30:
            noisy30, issue30 = noisy, issue

    lines += ["", "Does selection help? Clean test accuracy of the proxy (the score stage's MLP, default settings) "
              "trained on each subset, mean of 3 training seeds (the random subsets: one per subset seed):", "",
              "| subset | rows | accuracy | random subset of the same size (5 seeds) |", "|---|---:|---:|---:|"]

    def random_baseline(size: int, labels_: np.ndarray) -> str:
        accs = []
        for seed in range(5):
            keep = np.zeros(labels_.size, dtype=bool)
            keep[np.random.default_rng(100 + seed).choice(labels_.size, size, replace=False)] = True
            accs.append(accuracy(x, labels_, keep, x_test, y_test, seeds=(seed,)))
        return f"{np.mean(accs):.4f} +- {np.std(accs):.4f}"

    all_rows = np.ones(y.size, dtype=bool)
    lines.append(f"| (a) all, 30% noise | {y.size:,} | {accuracy(x, noisy30, all_rows, x_test, y_test):.4f} | |")
    kept = ~issue30
    lines.append(f"| (b) all minus label issues, 30% noise | {int(kept.sum()):,} | "
                 f"{accuracy(x, noisy30, kept, x_test, y_test):.4f} | {random_baseline(int(kept.sum()), noisy30)} |")
    lines.append(f"| (a) all, clean labels | {y.size:,} | {accuracy(x, y, all_rows, x_test, y_test):.4f} | |")
    clean_dyn = classifiers.training_dynamics(x, y, len(GENRES), cfg, dev)
    k = kmeans.cluster_count(y.size, 0)
    centroids, nearest = kmeans.fit(x, k, 200_000)
    proto = semantic.prototypicality(x, centroids, nearest)
    for pruned in (0.3, 0.5):
        size = int(round((1 - pruned) * y.size))
        keep = np.zeros(y.size, dtype=bool)
        keep[np.argsort(-clean_dyn.el2n, kind="stable")[:size]] = True
        lines.append(f"| (c) EL2N, easiest {pruned:.0%} removed | {size:,} | "
                     f"{accuracy(x, y, keep, x_test, y_test):.4f} | {random_baseline(size, y)} |")
    size = int(round(0.7 * y.size))
    for label, order in (("(d) prototypicality keep-hard", -proto), ("(d) prototypicality keep-easy", proto)):
        keep = np.zeros(y.size, dtype=bool)
        keep[np.argsort(order, kind="stable")[:size]] = True
        lines.append(f"| {label}, 30% removed | {size:,} | {accuracy(x, y, keep, x_test, y_test):.4f} | "
                     f"{random_baseline(size, y)} |")
    t = time.perf_counter()
    chosen = k_center_greedy(x, size, seed=0)
    t_kc = time.perf_counter() - t
    keep = np.zeros(y.size, dtype=bool)
    keep[chosen] = True
    lines.append(f"| (e) k-center greedy, 70% kept ({t_kc:.1f} s) | {size:,} | "
                 f"{accuracy(x, y, keep, x_test, y_test):.4f} | {random_baseline(size, y)} |")

    if args.speed_rows:
        big = np.random.default_rng(1).normal(size=(args.speed_rows, 384)).astype(np.float32)
        big /= np.linalg.norm(big, axis=1, keepdims=True)
        yb = np.random.default_rng(2).integers(0, len(GENRES), args.speed_rows)
        t = time.perf_counter()
        dyn = classifiers.training_dynamics(big, yb, len(GENRES), cfg, dev)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        classifiers.label_issues(yb, dyn, cfg.filter_by)
        t_cl = time.perf_counter() - t
        lines += ["", f"Speed, {args.speed_rows:,} rows x 384 (random), {len(GENRES)} classes, 2 cores: training "
                  f"dynamics {t_train:.0f} s ({cfg.seeds} seeds x {cfg.folds} folds x {cfg.epochs} epochs: "
                  f"{t_train / (cfg.seeds * cfg.folds * cfg.epochs):.1f} s per epoch, minibatch steps plus one "
                  f"statistics pass), cleanlab + ranking {t_cl:.0f} s."]
    table = "\n".join(lines)
    publish("select.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
