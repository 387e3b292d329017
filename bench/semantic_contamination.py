"""Semantic contamination on rewritten benchmark items (bench/rewrites.py): recall per rewrite kind, look-alike
problems and clean passages flagged, documents per second and peak memory; the stage's check as it runs
(`score.features`), on the dev split (thresholds are chosen there) and the test split (reported).

    .venv/bin/python bench/semantic_contamination.py [--split dev|test|both] [--signals]

`--signals` also writes, per case, the signals a second look could use on the best candidate (the item's cosine
over the stage's windows, the cosine of the texts with names and numbers abstracted, the cosine of the questions):
bench/results/contamination_signals.parquet, for choosing the verification by measurement.
Writes bench/results/semantic_contamination.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"


def stage_params():
    from schemas.config import SluiceConfig
    from tasks.runtime.registry import STAGES

    cfg = SluiceConfig.model_validate({"decontaminate": {"builtins": ["gsm8k", "humaneval"]},
                                       "score": {"perplexity": False, "reference": None, "device": "cpu"}})
    return STAGES["score"].params(cfg)


def run(split: str, params, loaded) -> tuple:
    """The stage's features on the split's cases: a frame of case, kind, item, found item, cosine, hit."""
    import polars as pl
    from rewrites import build

    from tasks.stages import score

    cases = build(split)
    batch = pl.DataFrame({"id": [c.id for c in cases], "text": [c.text for c in cases]}).with_columns(
        timestamp=pl.lit(None, pl.Datetime("us", "UTC")), label=pl.lit(None, pl.String))
    t = time.perf_counter()
    feats = score.features(batch, params, loaded)
    seconds = time.perf_counter() - t
    truth = pl.DataFrame({"id": [c.id for c in cases], "kind": [c.kind for c in cases],
                          "item": [c.item for c in cases]})
    out = truth.join(feats.drop("embedding"), on="id")
    return out, seconds


def signals(split: str, params, loaded, k: int = 3, floor: float = 0.6):
    """Per case, its k best candidate items (cosine >= floor over the stage's windows) and the second look's
    signals on each: the frame a verification rule is chosen from."""
    import numpy as np
    import polars as pl
    from rewrites import build

    from tasks.models import embeddings
    from tasks.stages.score import _benchmark_items, contamination, semantic

    cfg = params.score
    cases = build(split)
    texts = [c.text for c in cases]

    def embed(batch: list[str]) -> np.ndarray:
        return embeddings.embed(batch, loaded.embedder, cfg.embedder, loaded.device)

    items = _benchmark_items(params, None)
    assert items["key"].to_list() == loaded.item_ids
    item_texts = items["text"].to_list()
    item_abstract = embed([contamination.abstracted(t) for t in item_texts])
    item_question = contamination.item_questions(item_texts, embed)
    windows = semantic.chunk_texts(texts, cfg.contamination.chunk_words)
    window_emb = embed([windows.text(w) for w in range(len(windows))])
    doc, window, item, cosine = contamination.candidates(window_emb, windows.owner, loaded.item_vectors, k, floor)
    abstract, asked = contamination.second_look([windows.text(w) for w in window], item_abstract[item],
                                                item_question[item], embed)
    return pl.DataFrame({"id": [cases[d].id for d in doc], "kind": [cases[d].kind for d in doc],
                         "truth": [cases[d].item for d in doc], "item": [loaded.item_ids[i] for i in item],
                         "window": [windows.text(w) for w in window], "item_text": [item_texts[i] for i in item],
                         "cosine": cosine, "abstract": abstract, "question": asked}), pl.DataFrame(
        {"id": [c.id for c in cases], "kind": [c.kind for c in cases], "truth": [c.item for c in cases]})


def cost(n: int, params, loaded, check_only: bool = False) -> dict:
    """The stage's features on n pages of consecutive KJV verses of about 1,300 characters (the issue's 4,109
    documents of 5.1 MB), with the contamination check and without it, then the whole stage (every step of its
    plan) with it: seconds, and the share the check takes."""
    import polars as pl

    from tasks.ops.demo_corpus import kjv_records
    from tasks.stages import score

    verses = [r["text"] for r in kjv_records()]
    pages, i = [], 0
    while len(pages) < n:
        page = []
        while sum(len(v) + 1 for v in page) < 1300:
            page.append(verses[i % len(verses)])
            i += 1
        pages.append(" ".join(page))
    batch = pl.DataFrame({"id": [f"p{j}" for j in range(n)], "text": pages}).with_columns(
        timestamp=pl.lit(None, pl.Datetime("us", "UTC")), label=pl.lit(None, pl.String))
    t = time.perf_counter()
    score.features(batch, params, loaded)
    with_check = time.perf_counter() - t
    if check_only:
        return {"docs": n, "mb": sum(len(p) for p in pages) / 1e6, "with": with_check}
    off = params.model_copy(update={"score": params.score.model_copy(update={
        "contamination": params.score.contamination.model_copy(update={"enabled": False})})})
    t = time.perf_counter()
    score.features(batch, off, loaded)
    without = time.perf_counter() - t
    t = time.perf_counter()
    result = score.score_one_shard(batch, params, loaded)  # every step of the plan, in memory
    stage = time.perf_counter() - t
    return {"docs": n, "mb": sum(len(p) for p in pages) / 1e6, "with": with_check, "without": without,
            "stage": stage, "kept": result.kept.height}


def table(frame, split: str, seconds: float, hit) -> list[str]:
    import polars as pl

    judged = frame.with_columns(hit=hit, right=pl.col("score_contam_item") == pl.col("item"))
    lines = [f"**{split}**: {frame.height:,} documents in {seconds:.1f} s ({frame.height / seconds:.1f} docs/s)", "",
             "| kind | cases | flagged | flagged with the right item | rate |", "|---|---:|---:|---:|---:|"]
    for (kind,), part in sorted(judged.partition_by("kind", as_dict=True).items()):
        flagged = int(part["hit"].sum())
        right = int((part["hit"] & part["right"].fill_null(False)).sum())
        rate = right / part.height if part["item"].null_count() == 0 else flagged / part.height
        shown = right if kind not in ("hard", "hard_unseen", "clean", "code_clean") else ""
        lines.append(f"| {kind} | {part.height} | {flagged} | {shown} | {rate:.1%} |")
    return lines + [""]


def main() -> int:
    import polars as pl

    from tasks.stages import score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="both", choices=["dev", "test", "both"])
    ap.add_argument("--signals", action="store_true")
    ap.add_argument("--cost", type=int, default=0, help="only time the check on this many ~1.3 KB pages")
    ap.add_argument("--check-only", action="store_true", help="with --cost: the features with the check, nothing else "
                    "(the 10x run)")
    args = ap.parse_args()
    params = stage_params()
    loaded = score.load_models(params)
    lines = []
    if args.cost:
        c = cost(args.cost, params, loaded, args.check_only)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if args.check_only:
            print(f"{c['docs']:,} pages, {c['mb']:.1f} MB: features {c['with']:.1f} s with the check "
                  f"({c['with'] / c['docs'] * 1000:.1f} ms a page); peak RSS {peak:.2f} GiB")
            return 0
        print(f"{c['docs']:,} pages, {c['mb']:.1f} MB: features {c['with']:.1f} s with the check, {c['without']:.1f} s "
              f"without (the check {c['with'] - c['without']:.1f} s); the whole stage (score_one_shard, "
              f"{c['kept']:,} rows kept) {c['stage']:.1f} s; peak RSS {peak:.2f} GiB")
        return 0
    for split in (["dev", "test"] if args.split == "both" else [args.split]):
        if args.signals:
            found, cases = signals(split, params, loaded)
            RESULTS.mkdir(exist_ok=True)
            found.write_parquet(RESULTS / f"contamination_signals_{split}.parquet")
            cases.write_parquet(RESULTS / f"contamination_cases_{split}.parquet")
            continue
        frame, seconds = run(split, params, loaded)
        RESULTS.mkdir(exist_ok=True)
        frame.write_parquet(RESULTS / f"contamination_{split}.parquet")
        hit = pl.col("score_contam_hit") if "score_contam_hit" in frame.columns else (
            pl.col("score_contam_cosine").fill_null(-1) >= params.score.contamination.threshold)
        lines += table(frame, split, seconds, hit)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines.append(f"Peak RSS of the process: {peak:.2f} GiB.")
    (RESULTS / "semantic_contamination.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
